"""usearch backend: HNSW (``M`` = connectivity, ``expansion_add``, ``expansion``) over f32, f16 or i8 storage.

* ``cosine`` uses usearch's ``cos`` metric; ``ip`` its ``ip`` metric. Distances (``1 - similarity``) are turned back
  into similarities. ``dtype="i8"`` quantises each coordinate to [-127, 127] assuming values in [-1, 1]: right for
  unit vectors (cosine), lossy for un-normalised vectors under ``ip``.
* re-adding an existing key replaces its vector (remove, then add: usearch's high-level index refuses duplicates).
* ``load(mmap=True)`` opens the file with ``Index.restore(path, view=True)`` (memory-mapped, read-only); the first
  ``add`` / ``remove`` after that re-reads it into RAM (copy-on-write). ``load(readonly=True)`` maps it the same way
  and refuses changes (usearch maps a view read-only: nothing is written).
* large k: a graph walk can miss nodes (measured: 2,093 of 2,100 for k = 2,100), so a k of at least
  ``EXACT_K_FRACTION`` of the collection, and any row that comes back short, is searched with usearch's own
  ``exact=True`` brute force.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from usearch.index import Index, MetricKind

from img_search.index.base import (
    EXACT_K_FRACTION,
    BoolArray,
    FloatArray,
    IdArray,
    Metric,
    as_ids,
    as_query,
    as_vectors,
    check_allowed,
    check_metric,
    check_search_params,
    check_writable,
    empty_results,
    exact_is_cheaper,
    normalize,
    overfetch_filtered,
    overfetch_k,
    pad_results,
    score_rows,
    short_rows,
    unit_queries,
)

logger = logging.getLogger(__name__)

DTYPES: tuple[str, ...] = ("f32", "f16", "i8")
_FILE = "index.usearch"
_F32 = np.dtype(np.float32)


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
        self._readonly = False
        self._one_shape = (1, self.dim)
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
        check_writable(self)
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
        check_writable(self)
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

    def contains(self, ids: Any) -> BoolArray:
        keys = np.asarray(ids, dtype=np.int64).reshape(-1)
        if keys.size == 0 or len(self._index) == 0:
            return np.zeros(keys.size, dtype=bool)
        return np.asarray(self._index.contains(keys.astype(np.uint64)), dtype=bool).reshape(-1)

    def _search_one(self, queries: Any, k: int) -> tuple[IdArray, FloatArray] | None:
        """A service's typical call in a few operations: one float32 (1, dim) query, k below the exhaustive
        threshold, a full answer. ``None`` otherwise (the general path answers, with identical results)."""
        if (type(queries) is not np.ndarray or queries.shape != self._one_shape or queries.dtype is not _F32
                or not queries.flags.c_contiguous):
            return None
        n_live = len(self._index)
        if k <= 0 or k >= EXACT_K_FRACTION * n_live:
            return None
        matches = self._index.search(queries, k, threads=self.threads)
        keys = matches.keys
        if keys.shape[0] != k:  # one query comes back trimmed to what was found: short
            return None
        return keys.view(np.int64)[None], (1.0 - matches.distances)[None]

    def search(self, queries: Any, k: int, *, allowed: Any = None) -> tuple[IdArray, FloatArray]:
        if allowed is not None:
            return self._search_allowed(as_query(queries, self.dim), k, check_allowed(allowed))
        one = self._search_one(queries, k)
        if one is not None:
            return one
        q = as_query(queries, self.dim)
        n_live = len(self._index)
        if k <= 0 or n_live <= 0:
            return empty_results(q.shape[0], k)
        kk = k if k < n_live else n_live
        exact = exact_is_cheaper(kk, n_live)
        ids, scores = self._matches(q, kk, exact)
        if not exact:
            rows = short_rows(ids, kk)
            if rows is not None:  # the graph walk reached fewer than kk vectors: brute force those rows
                ids[rows], scores[rows] = self._matches(q[rows], kk, True)
        return (ids, scores) if kk == k else pad_results(ids, scores, k)

    def _search_allowed(self, q: FloatArray, k: int, allowed: IdArray) -> tuple[IdArray, FloatArray]:
        """usearch's Python binding (2.x ``Index.search``) takes no filter (the C++ core's predicate search is not
        exposed), so: over-fetch through the unfiltered search and keep the allowed keys; when that over-fetch would
        reach the exhaustive threshold anyway, score the allowed vectors exactly instead (``Index.get``, as float32)."""
        n_live = len(self._index)
        if k <= 0 or n_live == 0 or allowed.size == 0:
            return empty_results(q.shape[0], k)
        if exact_is_cheaper(overfetch_k(k, int(allowed.size), n_live), n_live):
            present = allowed[self.contains(allowed)]
            vectors = np.asarray(self._index.get(present.astype(np.uint64), dtype=np.float32), dtype=np.float32)
            vectors = vectors.reshape(-1, self.dim)
            if self.metric == "cosine":
                q = unit_queries(q)
                vectors = normalize(vectors)
            return score_rows(q, vectors, present, k)
        return overfetch_filtered(lambda qq, kk: self.search(qq, kk), q, k, allowed, n_live)

    def _matches(self, q: FloatArray, kk: int, exact: bool) -> tuple[IdArray, FloatArray]:
        """usearch's answer as (n, kk) ids and similarities, padded where a row found fewer."""
        matches = self._index.search(q, kk, threads=self.threads, exact=exact)
        n = q.shape[0]
        if n == 1:  # one query comes back as Matches, trimmed to what was found
            keys, distances = matches.keys, matches.distances
            if keys.shape[0] == kk:
                return keys.astype(np.int64).reshape(1, kk), (1.0 - distances).reshape(1, kk)
            counts = np.asarray([keys.shape[0]])
            keys, distances = pad_results(keys.astype(np.int64).reshape(1, -1), distances.reshape(1, -1), kk)
        else:
            keys, distances = matches.keys.reshape(n, -1), matches.distances.reshape(n, -1)
            counts = np.asarray(matches.counts).reshape(-1)
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        ids = np.where(valid, keys.astype(np.int64), -1)
        scores = np.where(valid, 1.0 - np.where(valid, distances, 0.0), -np.inf).astype(np.float32, copy=False)
        return pad_results(ids, scores, kk)

    def save(self, path: Path) -> None:
        check_writable(self)
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
    def load(cls, path: Path, *, mmap: bool = True, readonly: bool = False, **_: Any) -> UsearchIndex:
        """Restore the index, memory-mapped (``view``) unless ``mmap=False``; ``readonly`` refuses changes."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        index = cls(**{k: v for k, v in meta.items() if k != "backend"})
        restored = Index.restore(str(path / _FILE), view=mmap)
        if restored is None:
            raise FileNotFoundError(f"usearch: cannot restore an index from {path / _FILE}")
        index._index = restored
        index._mmap_source = path / _FILE if mmap else None
        index._apply_params()
        index._readonly = readonly
        return index

    def memory_bytes(self) -> int:
        """usearch's own figure (``memory_usage``: vectors, graph and its arenas)."""
        return int(self._index.memory_usage)

    @property
    def raw_index(self) -> Any:
        return self._index
