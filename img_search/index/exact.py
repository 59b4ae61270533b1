"""Exact (brute-force) search: a matrix product and argpartition. The ground truth for every ANN backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from img_search.index.base import (
    BoolArray,
    FloatArray,
    IdArray,
    IdRows,
    Metric,
    as_ids,
    as_query,
    as_vectors,
    check_allowed,
    check_metric,
    check_search_params,
    check_writable,
    normalize,
    pad_results,
    score_rows,
    topk,
    unit_queries,
)

# queries are scored in blocks so a large query batch never materialises an (n_queries, n) matrix at once
_QUERY_BLOCK = 256


class ExactIndex:
    name: ClassVar[str] = "exact"
    supports_remove: ClassVar[bool] = True
    search_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, dim: int, metric: str = "cosine") -> None:
        self.dim = dim
        self.metric: Metric = check_metric(metric)
        self._ids: IdArray = np.empty(0, dtype=np.int64)
        self._vectors: FloatArray = np.empty((0, dim), dtype=np.float32)
        self._readonly = False
        self._rows: IdRows | None = None  # id -> row positions for filtered searches, rebuilt after changes

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def add(self, ids: Any, vectors: Any) -> None:
        check_writable(self)
        vecs = as_vectors(vectors, self.dim)
        new_ids = as_ids(ids, vecs.shape[0])
        if self.metric == "cosine":
            vecs = normalize(vecs)
        if len(self) and new_ids.size:
            keep = ~np.isin(self._ids, new_ids)
            self._ids, self._vectors = self._ids[keep], self._vectors[keep]
        self._ids = np.concatenate([self._ids, new_ids])
        self._vectors = np.concatenate([self._vectors, vecs]) if len(self._vectors) else vecs.copy()
        self._rows = None

    def remove(self, ids: Any) -> None:
        check_writable(self)
        drop = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = ~np.isin(self._ids, drop)
        self._ids, self._vectors = self._ids[keep], self._vectors[keep]
        self._rows = None

    def contains(self, ids: Any) -> BoolArray:
        return np.isin(np.asarray(ids, dtype=np.int64).reshape(-1), self._ids)

    def search(self, queries: Any, k: int, *, allowed: Any = None) -> tuple[IdArray, FloatArray]:
        q = as_query(queries, self.dim)
        if self.metric == "cosine":
            q = unit_queries(q)
        if allowed is not None:
            rows = self.rows_of(check_allowed(allowed))
            # ascending rows: the gather reads a memory-mapped matrix front to back
            return score_rows(q, np.take(self._vectors, rows, axis=0), self._ids[rows], k)
        if q.shape[0] == 1:  # one query: no blocking, no concatenation
            cols, best = topk(q @ self._vectors.T, k)
            return pad_results(self._ids[cols], best, k)
        all_ids, all_scores = [], []
        for start in range(0, q.shape[0], _QUERY_BLOCK):
            scores = q[start : start + _QUERY_BLOCK] @ self._vectors.T
            cols, best = topk(scores, k)
            all_ids.append(self._ids[cols] if cols.size else np.empty(cols.shape, dtype=np.int64))
            all_scores.append(best.astype(np.float32, copy=False))
        if not all_ids:
            return pad_results(np.empty((0, 0), np.int64), np.empty((0, 0), np.float32), k)
        return pad_results(np.concatenate(all_ids), np.concatenate(all_scores), k)

    def save(self, path: Path) -> None:
        check_writable(self)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "ids.npy", self._ids)
        np.save(path / "vectors.npy", self._vectors)
        (path / "meta.json").write_text(json.dumps({"backend": self.name, "dim": self.dim, "metric": self.metric}))

    @classmethod
    def load(cls, path: Path, *, mmap: bool = True, readonly: bool = False, **_: Any) -> ExactIndex:
        """Read ``path``; the vectors are memory-mapped read-only (``mmap=True``), so loading never writes."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        index = cls(dim=int(meta["dim"]), metric=meta["metric"])
        index._ids = np.load(path / "ids.npy")
        index._vectors = np.load(path / "vectors.npy", mmap_mode="r" if mmap else None)
        index._readonly = readonly
        return index

    def memory_bytes(self) -> int:
        return int(self._ids.nbytes + self._vectors.nbytes)

    def set_search_params(self, **params: Any) -> None:
        """Exact search has nothing to tune; any parameter is an error."""
        check_search_params(self.name, self.search_params, params)

    def rows_of(self, allowed: IdArray) -> np.ndarray:
        """Ascending row numbers of the ids of ``allowed`` (sorted int64) that this index holds."""
        if self._rows is None:
            self._rows = IdRows(self._ids)
        return self._rows.rows(allowed)

    @property
    def vectors(self) -> FloatArray:
        return self._vectors

    @property
    def ids(self) -> IdArray:
        return self._ids
