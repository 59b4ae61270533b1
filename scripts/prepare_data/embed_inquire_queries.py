"""Embed the INQUIRE text queries and write Hub-layout query shards with their relevance lists.

    python scripts/prepare_data/embed_inquire_queries.py --output-dir outputs/inquire/query_embeddings \\
        --dataset-name inquire_siglip --batch-size 128 --chunk-size 1024 --overwrite \\
        [--queries-dir DIR] [--splits test val] [--device cpu] [--model-name ID_OR_DIR] [--limit N] \\
        [--push-to-hub --hf-repo-id USER/REPO [--hf-token TOKEN]]

``--queries-dir`` holds the public release's ``inquire_queries_test.csv``, ``inquire_queries_val.csv`` and
``inquire_annotations.csv``; without it they are downloaded from the INQUIRE repository (which fails clearly
offline). Shards go to ``OUTPUT_DIR/<split>/part-NNNNN.parquet`` (``--chunk-size`` rows each) with columns
``query_id, query_text, supercategory, category, iconic_group, model_name, dataset_name, embedding, image_id``;
``image_id`` lists each query's relevant gallery ids (annotation ``image_path`` without its extension — the ``id``
``convert_inquire_to_hf.py`` writes). The default model is the gallery's, google/siglip-so400m-patch14-384. The
harness reads them with ``query_dataset=inquire_local query_dataset.data_files='OUTPUT_DIR/{split}/*.parquet'``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from img_search.errors import ImgSearchError

logger = logging.getLogger("embed_inquire_queries")

DEFAULT_MODEL = "google/siglip-so400m-patch14-384"
HUB_SPLIT_NAMES = {"test": "test", "val": "validation", "validation": "validation"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/inquire/query_embeddings"))
    parser.add_argument("--dataset-name", default="inquire_siglip", help="The dataset_name column.")
    parser.add_argument("--batch-size", type=int, default=128, help="Queries per model forward.")
    parser.add_argument("--chunk-size", type=int, default=1024, help="Rows per output shard.")
    parser.add_argument("--overwrite", action="store_true", help="Replace the shards of a previous run.")
    parser.add_argument("--splits", nargs="+", default=["test", "val"], choices=["test", "val", "validation"])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    parser.add_argument("--model-name", default=DEFAULT_MODEL, help="Hub id or local checkpoint directory.")
    parser.add_argument("--encoder", default="auto", help="ENCODERS registry name (auto detects the family).")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N queries of each split.")
    parser.add_argument("--queries-dir", type=Path, default=None,
                        help="Folder with the release's query and annotation CSVs [default: download them].")
    parser.add_argument("--push-to-hub", action="store_true", help="Upload the shards to a Hub dataset repo.")
    parser.add_argument("--hf-repo-id", help="The Hub dataset repo (the gallery's repo, to sit beside it).")
    parser.add_argument("--hf-token", help="A Hub token with write access [default: HF_TOKEN or the cached login].")
    parser.add_argument("--hf-path-in-repo", default="queries", help="Folder of the shards in the repo.")
    parser.add_argument("--hf-config-name", default="queries", help="Configuration name declared in the repo card.")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.chunk_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size, --chunk-size and --limit must be >= 1")
    if args.push_to_hub and not args.hf_repo_id:
        parser.error("--push-to-hub needs --hf-repo-id")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from img_search.data.inquire import download_query_files, read_queries
    from img_search.embedding import load_encoder
    from img_search.embedding.hf import canonical_model_id
    from img_search.export import push_to_hub
    from img_search.pipeline.embed_text import embed_queries, prepare_query_dirs
    from img_search.wording import count

    splits = list(dict.fromkeys(args.splits))
    try:
        queries_dir = args.queries_dir or download_query_files()
        queries = read_queries(queries_dir, splits, limit=args.limit)
        prepare_query_dirs(args.output_dir, splits, overwrite=args.overwrite)
        encoder = load_encoder(args.model_name, encoder=args.encoder, device=args.device, dtype=args.dtype)
        written = embed_queries(queries, encoder, args.output_dir, model_name=canonical_model_id(args.model_name),
                                dataset_name=args.dataset_name, batch_size=args.batch_size, chunk_size=args.chunk_size)
        for split, paths in written.items():
            print(f"{split}: {count(len(queries[split]), 'query', 'queries')} in {count(len(paths), 'shard')} "
                  f"under {args.output_dir / split}")
        if args.push_to_hub:
            hub_splits = {HUB_SPLIT_NAMES[s]: f"{s}/*.parquet" for s in splits}
            url = push_to_hub(args.output_dir, args.hf_repo_id, token=args.hf_token,
                              path_in_repo=args.hf_path_in_repo, config_name=args.hf_config_name, splits=hub_splits)
            print(f"pushed to {url}")
    except (ImgSearchError, ValueError) as exc:  # ValueError: e.g. --device cuda without CUDA
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
