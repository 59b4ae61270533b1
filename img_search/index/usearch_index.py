"""usearch backend: HNSW (``M`` = connectivity, ``expansion_add``, ``expansion``) over f32, f16 or i8 storage.

* ``cosine`` uses usearch's ``cos`` metric; ``ip`` its ``ip`` metric. Distances (``1 - similarity``) are turned back
  into similarities. ``dtype="i8"`` quantises each coordinate to [-127, 127] assuming values in [-1, 1]: right for
  unit vectors (cosine), lossy for un-normalised vectors under ``ip``.
* re-adding an existing key replaces its vector (remove, then add: usearch's high-level index refuses duplicates).
* ``load(mmap=True)`` opens the file with ``Index.restore(path, view=True)`` (memory-mapped, read-only); the first
  ``add`` / ``remove`` after that re-reads it into RAM (copy-on-write).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from usearch.index import Index, MetricKind

from img_search.index.base import (
    FloatArray,
    IdArray,
    Metric,
    as_ids,
    as_vectors,
    check_metric,
    check_search_params,
    empty_results,
    pad_results,
)

logger = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = ("f32", "f16", "i8")
_FILE = "index.usearch"


class UsearchIndex:
    name: ClassVar[str] = "usearch"
    supports_remove: ClassVar[bool] = True
    search_params: ClassVar[tuple[str, ...]] = ("expansion",)

    def __init__(
        self,
        *,
        dim: int,
        metric: str = "cosine",
        M: int = 16,
        expansion_add: int = 128,
        expansion: int = 64,
        dtype: str = "f32",
        threads: int = 0,
        connectivity: int | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown usearch dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
        self.dim = int(dim)
        self.metric: Metric = check_metric(metric)
        self.M = int(connectivity if connectivity is not None else M)
        self.expansion_add = int(expansion_add)
        self.expansion = int(expansion)
        self.dtype = dtype
        self.threads = int(threads)
        self._mmap_source: Path | None = None
        self._index: Any = Index(
            ndim=self.dim,
            metric=MetricKind.Cos if self.metric == "cosine" else MetricKind.IP,
            dtype=self.dtype,
            connectivity=self.M,
            expansion_add=self.expansion_add,
            expansion_search=self.expansion,
        )

    def __len__(self) -> int:
        return len(self._index)

    def _ensure_writable(self) -> None:
        if self._mmap_source is not None:
            logger.info("usearch: re-reading %s into memory before modifying it", self._mmap_source)
            self._index = Index.restore(str(self._mmap_source), view=False)
            self._mmap_source = None
            self._apply_params()

    def _apply_params(self) -> None:
        index: Any = self._index  # usearch's stubs declare these properties read-only; they have setters
        index.expansion_search = self.expansion
        index.expansion_add = self.expansion_add

    def add(self, ids: Any, vectors: Any) -> None:
        vecs = as_vectors(vectors, self.dim)
        keys = as_ids(ids, vecs.shape[0])
        if keys.size == 0:
            return
        self._ensure_writable()
        if len(self._index):
            present = np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)
            if present.any():
                self._index.remove(keys[present])
        self._index.add(keys.astype(np.uint64), vecs, threads=self.threads)

    def remove(self, ids: Any) -> None:
        keys = np.asarray(ids, dtype=np.int64).reshape(-1)
        if keys.size == 0:
            return
        self._ensure_writable()
        self._index.remove(keys.astype(np.uint64))

    def set_search_params(self, **params: Any) -> None:
        check_search_params(self.name, self.search_params, params)
        if "expansion" in params:
            self.expansion = int(params["expansion"])
            self._apply_params()

    def search(self, queries: Any, k: int) -> tuple[IdArray, FloatArray]:
        q = as_vectors(queries, self.dim)
        kk = min(k, len(self))
        if kk <= 0:
            return empty_results(q.shape[0], k)
        matches = self._index.search(q, kk, threads=self.threads)
        keys = np.asarray(matches.keys).reshape(q.shape[0], -1)
        distances = np.asarray(matches.distances).reshape(q.shape[0], -1)
        counts = np.asarray(matches.counts).reshape(-1) if hasattr(matches, "counts") else np.full(q.shape[0], kk)
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        ids = np.where(valid, keys.astype(np.int64), -1)
        scores = np.where(valid, 1.0 - np.where(valid, distances, 0.0), -np.inf).astype(np.float32, copy=False)
        return pad_results(ids, scores, k)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._index.save(str(path / _FILE))
        meta = {
            "backend": self.name, "dim": self.dim, "metric": self.metric, "M": self.M,
            "expansion_add": self.expansion_add, "expansion": self.expansion, "dtype": self.dtype,
            "threads": self.threads,
        }
        (path / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path, *, mmap: bool = True, **_: Any) -> UsearchIndex:
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        index = cls(**{k: v for k, v in meta.items() if k != "backend"})
        restored = Index.restore(str(path / _FILE), view=mmap)
        if restored is None:
            raise FileNotFoundError(f"usearch: cannot restore an index from {path / _FILE}")
        index._index = restored
        index._mmap_source = path / _FILE if mmap else None
        index._apply_params()
        return index

    def memory_bytes(self) -> int:
        """usearch's own figure (``memory_usage``: vectors, graph and its arenas)."""
        return int(self._index.memory_usage)

    @property
    def raw_index(self) -> Any:
        return self._index
