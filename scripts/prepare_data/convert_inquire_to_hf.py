"""Convert the raw INQUIRE release (clip-retrieval layout) into Hugging Face friendly Parquet shards.

    python scripts/prepare_data/convert_inquire_to_hf.py \\
        --metadata-dir data/inquire/data/metadata --embeddings-dir data/inquire/data/img_emb \\
        --output-dir outputs/inquire/hf --model-name google/siglip-so400m-patch14-384 --dataset-name inquire_siglip \\
        [--push-to-hub --hf-repo-id USER/REPO [--hf-token TOKEN]]

``metadata/metadata_N.parquet`` (column ``image_path``) is paired with ``img_emb/img_emb_N.npy`` by N; every pair
must exist on both sides with the same row count, or nothing is written. Each pair becomes one zstd shard
``train-NNNNN-of-MMMMM.parquet`` with columns ``id, model_name, dataset_name, embedding`` (fp16). The evaluation
harness reads them with ``image_dataset=inquire_local image_dataset.data_files='OUTPUT_DIR/*.parquet'``.
A thin wrapper over ``img_search.export``; errors end it with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from img_search.errors import ImgSearchError
from img_search.export import GALLERY_SPLIT, convert_inquire_release, push_to_hub
from img_search.wording import count

logger = logging.getLogger("convert_inquire_to_hf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata-dir", type=Path, required=True, help="Folder of metadata_N.parquet files.")
    parser.add_argument("--embeddings-dir", type=Path, required=True, help="Folder of img_emb_N.npy files.")
    parser.add_argument("--output-dir", type=Path, required=True, help="Where the shards are written.")
    parser.add_argument("--model-name", required=True,
                        help="The model_name column, e.g. google/siglip-so400m-patch14-384 (the release's model).")
    parser.add_argument("--dataset-name", required=True, help="The dataset_name column, e.g. inquire_siglip.")
    parser.add_argument("--overwrite", action="store_true", help="Replace Parquet files already in --output-dir.")
    parser.add_argument("--push-to-hub", action="store_true", help="Upload the shards to a Hub dataset repo.")
    parser.add_argument("--hf-repo-id", help="The Hub dataset repo, e.g. USER/inquire-siglip-so400m-14-384.")
    parser.add_argument("--hf-token", help="A Hub token with write access [default: HF_TOKEN or the cached login].")
    parser.add_argument("--hf-path-in-repo", default="data", help="Folder of the shards in the repo.")
    parser.add_argument("--hf-config-name", default="default", help="Configuration name declared in the repo card.")
    parser.add_argument("--hf-private", action="store_true", help="Create the repo as private.")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hf_repo_id:
        parser.error("--push-to-hub needs --hf-repo-id")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = convert_inquire_release(args.metadata_dir, args.embeddings_dir, args.output_dir,
                                          model_name=args.model_name, dataset_name=args.dataset_name,
                                          overwrite=args.overwrite)
        print(f"wrote {summary.rows} vectors of {summary.dim} dims in {count(len(summary.files), 'shard')} to "
              f"{args.output_dir}")
        if args.push_to_hub:
            url = push_to_hub(args.output_dir, args.hf_repo_id, token=args.hf_token, path_in_repo=args.hf_path_in_repo,
                              config_name=args.hf_config_name, splits={GALLERY_SPLIT: "*.parquet"},
                              private=args.hf_private or None)
            print(f"pushed to {url}")
    except ImgSearchError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
