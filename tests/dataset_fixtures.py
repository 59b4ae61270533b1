"""Fixtures of the dataset-pipeline tests: tables, folders and files in the layouts the adapters read.

A plain module with a unique name (not ``conftest``) so several test folders can import it."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from helpers import pattern

INQUIRE_COLUMNS = ("image", "query", "relevant", "clip_score", "inat24_image_id", "inat24_file_name",
                   "supercategory", "category", "iconic_group")


def jpeg_bytes(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    buf = io.BytesIO()
    pattern(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def inquire_file_name(seed: int) -> str:
    return f"train/{seed % 3:05d}_Animalia_Chordata_Aves/{seed:08x}-0000-4000-8000-000000000000.jpg"


def write_inquire_split(path: Path, seeds: list[int], *, query: str = "a bird on a branch",
                        corrupt: frozenset[int] = frozenset(), hf_features: bool = True) -> Path:
    """A Parquet file of the evendrow/INQUIRE-Rerank schema, one row per seed (a seed may repeat)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(seeds)
    images = [{"bytes": b"not a jpeg" if s in corrupt else jpeg_bytes(s), "path": inquire_file_name(s)} for s in seeds]
    columns = {
        "image": images,
        "query": [query] * n,
        "relevant": [s % 2 for s in seeds],
        "clip_score": [0.25 + s / 100 for s in seeds],
        "inat24_image_id": [1000 + s for s in seeds],
        "inat24_file_name": [inquire_file_name(s) for s in seeds],
        "supercategory": ["Appearance"] * n,
        "category": ["Health and disease"] * n,
        "iconic_group": ["Birds"] * n,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if hf_features:
        features = datasets.Features({
            "image": datasets.Image(), "query": datasets.Value("string"), "relevant": datasets.Value("int64"),
            "clip_score": datasets.Value("float64"), "inat24_image_id": datasets.Value("int64"),
            "inat24_file_name": datasets.Value("string"), "supercategory": datasets.Value("string"),
            "category": datasets.Value("string"), "iconic_group": datasets.Value("string"),
        })
        datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    else:
        pq.write_table(pa.table(columns), path)
    return path


def write_captions(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


FLICKR_ROWS: list[dict[str, object]] = [
    {"image": "1000092795.jpg", "caption": ["two young guys with shaggy hair", "a dog runs on the beach"]},
    {"image": "10002456.jpg", "caption": "a red car in the city"},
    {"image": "1000268201.jpg", "caption": ["a child in a pink dress", "a little girl climbing", "a girl"]},
]


class CountingFactory:
    """The real loader, counting loads (and optionally interrupting after some batches)."""

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.loads: list[str] = []
        self.interrupt_after = interrupt_after

    def __call__(self, spec: Any, ctx: Any) -> Any:
        from img_search.pipeline.embed import load_model

        self.loads.append(spec.name)
        encoder = load_model(spec, ctx)
        if self.interrupt_after is None:
            return encoder
        limit, inner = self.interrupt_after, encoder.encode_batch
        calls = [0]

        def encode_batch(batch: Any) -> Any:
            calls[0] += 1
            if calls[0] > limit:
                raise KeyboardInterrupt
            return inner(batch)

        encoder.encode_batch = encode_batch  # type: ignore[method-assign]
        return encoder
