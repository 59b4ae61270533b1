"""Embed texts with the text tower: caption datasets into Parquet, and INQUIRE queries into Hub-layout shards.

Entry point (Hydra; base config ``img_search/config/embed_text_config.yaml``)::

    python -m img_search.pipeline.embed_text models=siglip text_dataset=flickr30k \\
        text_dataset.path=data/flickr30k/captions.jsonl output_path=outputs/flickr30k/siglip-captions.parquet

Output columns: ``caption_id, image_id, caption, model_name, dataset_name, embedding``. Resume, several models
per file, distribution and exit statuses are those of ``pipeline.embed``.

Texts go through the same loop as images (``loop.run_loop``): ``TextEncoder`` presents an encoder's text tower
under the loop's encoder contract — its "preprocessor" passes the text through (tokenising happens in
``encode_texts``, which pads each family as it was trained) and ``encode_batch`` calls ``encode_texts``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from img_search.data import CaptionRecord, TextDataset, create_text_dataset
from img_search.data.inquire import InquireQuery
from img_search.embedding.base import Encoder, FeatureVector, PixelBatch
from img_search.pipeline.distributed import DistContext, LocalContext, run_sharded
from img_search.pipeline.embed import (
    CONFIG_DIR,
    EmbedJob,
    EmbedSummary,
    EmbedTask,
    EncoderFactory,
    load_model,
    run_entry,
    run_job,
)
from img_search.pipeline.parquet_writer import (
    CAPTIONS,
    DATASET_COLUMN,
    MODEL_COLUMN,
    QUERIES,
    OutputError,
    ParquetSink,
    ShardWriter,
)
from img_search.pipeline.progress import LogProgress, Progress
from img_search.pipeline.reader import Loaded
from img_search.wording import count

logger = logging.getLogger(__name__)

TEXT_CONFIG_NAME = "embed_text_config"
TEXT_KEY = "text"
QUERY_SHARD_PREFIX = "part"


@dataclass(frozen=True, slots=True)
class TextInput:
    """What the loader hands the reader for a text; it has no pixel size (the reader records width/height)."""

    text: str
    width: int | None = None
    height: int | None = None


class TextPassthrough:
    """Picklable preprocessor: the text, as a 0-d object array the collate step stacks into a list."""

    def __call__(self, image: Any) -> PixelBatch:  # the loop's preprocessor contract names its input `image`
        holder = np.empty((), dtype=object)
        holder[()] = image.text
        return {TEXT_KEY: holder}


class TextEncoder:
    """An encoder's text tower under the loop's encoder contract (``image_preprocessor`` / ``encode_batch``)."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.info = inner.info
        self.device = inner.device

    def image_preprocessor(self) -> TextPassthrough:
        return TextPassthrough()

    def encode_batch(self, batch: PixelBatch) -> FeatureVector:
        return self.inner.encode_texts([str(t) for t in batch[TEXT_KEY]])

    def encode_images(self, images: list[Any]) -> FeatureVector:
        return self.inner.encode_images(images)

    def encode_texts(self, texts: list[str]) -> FeatureVector:
        return self.inner.encode_texts(texts)


def load_caption(record: CaptionRecord) -> Loaded:
    return Loaded(TextInput(record.caption))


def caption_columns(records: list[CaptionRecord]) -> dict[str, list[Any]]:
    return {
        "caption_id": [r.caption_id for r in records],
        "image_id": [r.image_id for r in records],
        "caption": [r.caption for r in records],
    }


def _caption_id(record: CaptionRecord) -> str:
    return record.caption_id


def caption_task(dataset: TextDataset) -> EmbedTask[CaptionRecord]:
    dataset.build()
    # tokenising is cheap and happens in encode_texts: no decode workers to feed
    return EmbedTask(dataset_name=dataset.name, items=dataset.records(), key=_caption_id, load=load_caption,
                     layout=CAPTIONS, row_columns=caption_columns, workers=0, adapt=TextEncoder)


def run_embed_text(job: EmbedJob, *, ctx: DistContext | None = None, encoder_factory: EncoderFactory = load_model,
                   progress: Progress | None = None) -> list[EmbedSummary]:
    """Embed the captions of ``job.dataset`` (a ``text_dataset`` config) with every model of ``job``."""
    return run_job(job, lambda cfg: caption_task(create_text_dataset(cfg)), CAPTIONS, ctx=ctx,
                   encoder_factory=encoder_factory, progress=progress)


# ---------------------------------------------------------------------------------------------------------------
# INQUIRE queries -> query shards


def load_query(query: InquireQuery) -> Loaded:
    return Loaded(TextInput(query.query_text))


def query_columns(queries: list[InquireQuery]) -> dict[str, list[Any]]:
    return {
        "query_id": [q.query_id for q in queries],
        "query_text": [q.query_text for q in queries],
        "supercategory": [q.supercategory for q in queries],
        "category": [q.category for q in queries],
        "iconic_group": [q.iconic_group for q in queries],
        "image_id": [list(q.relevant) for q in queries],
    }


def prepare_query_dirs(output_dir: Path, splits: Sequence[str], *, overwrite: bool) -> None:
    """Refuse to mix a new run's shards with an old run's unless ``overwrite``, which removes the old ones."""
    for split in splits:
        folder = Path(output_dir) / split
        existing = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if existing and not overwrite:
            raise OutputError(
                f"{folder} already holds {count(len(existing), 'shard')}; pass --overwrite to replace them"
            )
        for path in existing:
            path.unlink()


def embed_queries(
    queries: Mapping[str, list[InquireQuery]],
    encoder: Encoder,
    output_dir: Path,
    *,
    model_name: str,
    dataset_name: str,
    batch_size: int,
    chunk_size: int,
    dtype: str = "float32",
    ctx: DistContext | None = None,
    progress: Progress | None = None,
) -> dict[str, list[Path]]:
    """Encode each split's query texts and write ``<output_dir>/<split>/part-NNNNN.parquet`` of ``chunk_size`` rows."""
    ctx = ctx or LocalContext()
    progress = progress or LogProgress()
    text_encoder = TextEncoder(encoder)
    written: dict[str, list[Path]] = {}
    for split, split_queries in queries.items():
        writer = ShardWriter(Path(output_dir) / split, prefix=QUERY_SHARD_PREFIX, schema=QUERIES.schema(dtype),
                             rows_per_shard=chunk_size)
        sinks: list[ParquetSink] = []

        def make_sink(writer: ShardWriter = writer, sinks: list[ParquetSink] = sinks) -> ParquetSink:
            constants = {MODEL_COLUMN: model_name, DATASET_COLUMN: dataset_name}
            sink = ParquetSink(writer, QUERIES, query_columns, constants=constants, dtype=dtype)
            sinks.append(sink)
            return sink

        run_sharded(split_queries, load_query, text_encoder, make_sink, ctx, batch_size=batch_size, workers=0,
                    progress=progress, description=f"{split} queries")
        written[split] = writer.paths
        logger.info("%s: %s in %s under %s", split, count(sum(s.written for s in sinks), "query", "queries"),
                    count(len(writer.paths), "shard"), Path(output_dir) / split)
    return written


# ---------------------------------------------------------------------------------------------------------------
# entry point


def _main(cfg: Any) -> None:
    run_entry(cfg, lambda container: run_embed_text(EmbedJob.from_config(container, dataset_key="text_dataset")))


def main() -> None:
    import hydra

    hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name=TEXT_CONFIG_NAME)(_main)()


if __name__ == "__main__":
    from img_search.pipeline.embed_text import main as _package_main

    _package_main()
