"""A catalog of given vectors (no model, no images decoded): what the map and duplicate tests search."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog, ImageRecord

MODEL = "test/vectors"


def _hash(i: int, salt: str = "") -> bytes:
    return hashlib.blake2b(f"{salt}{i}".encode(), digest_size=16).digest()


def add_vectors(index_dir: Path, vectors: NDArray[np.float32], *, start: int = 0, salt: str = "") -> list[str]:
    """Record one fake image per row of ``vectors`` (paths ``/photos/img<N>.jpg``, N from ``start``); returns the
    paths in row order. Rows are stored as given (unit length expected)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    with Catalog.in_dir(index_dir) as catalog:
        model_id = catalog.ensure_model(MODEL, family="siglip", dim=vectors.shape[1], logit_scale=1.0,
                                        logit_bias=None)
        paths = [f"/photos/img{start + i:06d}.jpg" for i in range(len(vectors))]
        records = [ImageRecord(p, 100 + i, 1_000_000 + i, _hash(start + i, salt), 64, 48)
                   for i, p in enumerate(paths)]
        for s in range(0, len(records), 5000):
            catalog.record(records[s : s + 5000], model_id=model_id, vectors=vectors[s : s + 5000])
    return paths


def unit(x: NDArray[np.floating]) -> NDArray[np.float32]:
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
