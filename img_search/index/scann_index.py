"""ScaNN backend: a k-means tree (``leaves``) over anisotropic-quantised (AH) codes, searched in
``leaves_to_search`` leaves and re-ranked exactly over the ``reorder`` best candidates.

ScaNN builds its searcher from the whole dataset at once, and this backend does not use ScaNN's mutable-searcher
path (``upsert`` / ``delete`` over Python-side docids). So this wrapper keeps the vectors itself (a float32 copy,
counted in ``memory_bytes``), ``add`` / ``remove`` only update that copy and mark the searcher stale, and the next
``search`` rebuilds it (k-means and AH training included) -- cheap to call often, expensive to search right after
every small change. Small sets (below ``min_tree_size`` vectors) get a brute-force ScaNN searcher, and ``leaves``
is clamped to ``n // 20`` so every leaf trains on at least ~20 points.

Large k: a tree search only sees the vectors of ``leaves_to_search`` leaves (measured: about 1,000 of 2,100 for
k = 1,500), so a k of at least ``EXACT_K_FRACTION`` of the collection, and any row that comes back short, is scored
exactly over the stored float copy. ``load(readonly=True)`` reads the searcher into memory and maps the vectors
read-only: nothing is written, and changes are refused.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scann import scann_ops_pybind

from img_search.index.base import (
    EXACT_K_FRACTION,
    UNIT_TOL,
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
    short_rows,
    unit_queries,
)
from img_search.index.exact import ExactIndex

logger = logging.getLogger(__name__)

# search_batched_parallel splits the batch across ScaNN's thread pool; below this a single batch call is cheaper
_PARALLEL_MIN_QUERIES = 256
_F32 = np.dtype(np.float32)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class ScannIndex:
    name: ClassVar[str] = "scann"
    supports_remove: ClassVar[bool] = True
    search_params: ClassVar[tuple[str, ...]] = ("leaves_to_search", "reorder")

    def __init__(
        self,
        *,
        dim: int,
        metric: str = "cosine",
        leaves: int = 1000,
        leaves_to_search: int = 50,
        reorder: int = 100,
        dims_per_block: int = 2,
        anisotropic_quantization_threshold: float = 0.2,
        training_sample_size: int = 100_000,
        min_tree_size: int = 2_000,
        training_threads: int = 0,
    ) -> None:
        self.dim = int(dim)
        self.metric: Metric = check_metric(metric)
        self.leaves = int(leaves)
        self.leaves_to_search = int(leaves_to_search)
        self.reorder = int(reorder)
        self.dims_per_block = int(dims_per_block)
        self.anisotropic_quantization_threshold = float(anisotropic_quantization_threshold)
        self.training_sample_size = int(training_sample_size)
        self.min_tree_size = int(min_tree_size)
        self.training_threads = int(training_threads)
        self._store = ExactIndex(dim=self.dim, metric="ip")  # vectors already normalised for cosine
        self._searcher: Any = None
        self._searcher_ids: IdArray = np.empty(0, dtype=np.int64)
        self._built_leaves = 0
        self._dirty = False
        self._memory_cache: int | None = None
        self._kwargs_cache: dict[int, dict[str, Any]] = {}
        self._args_cache: dict[int, tuple[int, int, int]] = {}
        self._readonly = False
        self._one_shape = (1, self.dim)

    def __len__(self) -> int:
        return len(self._store)

    def add(self, ids: Any, vectors: Any) -> None:
        check_writable(self)
        vecs = as_vectors(vectors, self.dim)
        new_ids = as_ids(ids, vecs.shape[0])
        if new_ids.size == 0:
            return
        self._store.add(new_ids, normalize(vecs) if self.metric == "cosine" else vecs)
        self._dirty = True

    def remove(self, ids: Any) -> None:
        check_writable(self)
        before = len(self._store)
        self._store.remove(ids)
        self._dirty = self._dirty or len(self._store) != before

    def build(self) -> None:
        """(Re)build the ScaNN searcher from the stored vectors; ``search`` calls this when they changed."""
        n = len(self._store)
        self._dirty, self._memory_cache = False, None
        if n == 0:
            self._searcher, self._searcher_ids = None, np.empty(0, dtype=np.int64)
            return
        db = np.ascontiguousarray(self._store.vectors, dtype=np.float32)
        builder = scann_ops_pybind.builder(db, 10, "dot_product")
        if self.training_threads:
            builder = builder.set_n_training_threads(self.training_threads)
        if n < self.min_tree_size:
            self._built_leaves = 0
            builder = builder.score_brute_force()
        else:
            leaves = max(1, min(self.leaves, n // 20))
            if leaves < self.leaves:
                logger.info("scann: %d vectors, leaves clamped %d -> %d", n, self.leaves, leaves)
            self._built_leaves = leaves
            builder = builder.tree(
                num_leaves=leaves,
                num_leaves_to_search=min(self.leaves_to_search, leaves),
                training_sample_size=min(n, self.training_sample_size),
            ).score_ah(self.dims_per_block, anisotropic_quantization_threshold=self.anisotropic_quantization_threshold)
            if self.reorder > 0:
                builder = builder.reorder(self.reorder)
        self._kwargs_cache.clear()
        self._args_cache.clear()
        logger.info("scann: building a searcher over %d vectors", n)
        self._searcher = builder.build()
        self._searcher_ids = self._store.ids.copy()

    def set_search_params(self, **params: Any) -> None:
        check_search_params(self.name, self.search_params, params)
        for key, value in params.items():
            setattr(self, key, int(value))
        self._kwargs_cache.clear()
        self._args_cache.clear()

    def _search_kwargs(self, kk: int) -> dict[str, Any]:
        """ScaNN's search arguments for ``kk`` neighbours at the current settings (cached per kk)."""
        kwargs = self._kwargs_cache.get(kk)
        if kwargs is None:
            kwargs = {"final_num_neighbors": kk}
            if self._built_leaves:
                kwargs["leaves_to_search"] = min(self.leaves_to_search, self._built_leaves)
                if self.reorder > 0:
                    kwargs["pre_reorder_num_neighbors"] = max(self.reorder, kk)
            if len(self._kwargs_cache) > 64:  # many distinct k: keep the caches small
                self._kwargs_cache.clear()
                self._args_cache.clear()
            self._kwargs_cache[kk] = kwargs
        return kwargs

    def _raw_search(self, q: FloatArray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """The ScaNN call itself (what a benchmark times as the raw library)."""
        kwargs = self._search_kwargs(kk)
        if q.shape[0] == 1:  # ScaNN's own single-query call: no batch set-up
            return self._searcher.search(q[0], **kwargs)  # type: ignore[no-any-return]
        if q.shape[0] >= _PARALLEL_MIN_QUERIES:
            return self._searcher.search_batched_parallel(q, **kwargs)  # type: ignore[no-any-return]
        return self._searcher.search_batched(q, **kwargs)  # type: ignore[no-any-return]

    def contains(self, ids: Any) -> BoolArray:
        return self._store.contains(ids)

    def _search_one(self, queries: Any, k: int) -> tuple[IdArray, FloatArray] | None:
        """A service's typical call in a few operations: one float32 (1, dim) query of unit length (or metric ip),
        a built searcher, k below the exhaustive threshold, a full answer. ``None`` otherwise (the general path
        answers, with identical results)."""
        if (type(queries) is not np.ndarray or queries.shape != self._one_shape or queries.dtype is not _F32
                or not queries.flags.c_contiguous or self._dirty or self._searcher is None):
            return None
        row = queries[0]
        if self.metric == "cosine" and abs(float(row.dot(row)) - 1.0) > UNIT_TOL:
            return None
        n_live = self._searcher_ids.shape[0]
        if k <= 0 or k >= EXACT_K_FRACTION * n_live:
            return None
        args = self._args_cache.get(k)
        if args is None:  # ScaNN's search(q, final_num_neighbors, pre_reorder_num_neighbors, leaves_to_search)
            kw = self._search_kwargs(k)
            args = self._args_cache[k] = (k, kw.get("pre_reorder_num_neighbors", -1), kw.get("leaves_to_search", -1))
        # the pybind searcher itself: ScaNN's Python search() only adds a docid mapping, unused here
        inner = self._searcher.searcher if self._searcher.docids is None else self._searcher
        rows, scores = inner.search(row, *args)
        if rows.shape[0] != k or scores[-1] != scores[-1]:  # trimmed (short) or NaN-padded
            return None
        return self._searcher_ids.take(rows)[None], scores[None]

    def search(self, queries: Any, k: int, *, allowed: Any = None) -> tuple[IdArray, FloatArray]:
        if allowed is not None:
            return self._search_allowed(queries, k, check_allowed(allowed))
        one = self._search_one(queries, k)
        if one is not None:
            return one
        q = as_query(queries, self.dim)
        if self.metric == "cosine":
            q = unit_queries(q)
        if self._dirty:
            self.build()
        n_live = len(self._store)
        if k <= 0 or n_live == 0 or self._searcher is None:
            return empty_results(q.shape[0], k)
        kk = k if k < n_live else n_live
        if exact_is_cheaper(kk, n_live):
            return self._store.search(q, k)
        if q.shape[0] == 1:  # the common case, inlined: ScaNN's single-query call, which trims what it did not find
            rows, scores = self._searcher.search(q[0], **self._search_kwargs(kk))
            if rows.shape[0] == kk and scores[-1] == scores[-1]:  # full and not NaN
                ids = self._searcher_ids.take(rows)[None]
                return (ids, scores[None]) if kk == k else pad_results(ids, scores[None], k)
            rows, scores = rows[None], scores[None]
        else:
            rows, scores = self._raw_search(q, kk)
        if scores.shape == (q.shape[0], kk) and not np.isnan(scores[:, -1]).any():  # full rows: no masking needed
            ids = self._searcher_ids[rows]
        else:
            rows = np.asarray(rows, dtype=np.int64).reshape(q.shape[0], -1)
            scores = np.asarray(scores, dtype=np.float32).reshape(q.shape[0], -1)
            valid = ~np.isnan(scores)
            ids, scores = pad_results(np.where(valid, self._searcher_ids[rows], -1),
                                      np.where(valid, scores, -np.inf).astype(np.float32, copy=False), kk)
            short = short_rows(ids, kk)
            if short is not None:  # the searched leaves held fewer than kk vectors: score those rows exactly
                ids[short], scores[short] = self._store.search(q[short], kk)
        return (ids, scores) if kk == k else pad_results(ids, scores, k)

    def _search_allowed(self, queries: Any, k: int, allowed: IdArray) -> tuple[IdArray, FloatArray]:
        """ScaNN's Python searcher takes no filter (its C++ restricts are not in the pybind API), so: over-fetch
        through the unfiltered search and keep the allowed ids, or, when that over-fetch would reach the exhaustive
        threshold anyway, score the allowed vectors exactly from the stored float copy."""
        q = as_query(queries, self.dim)
        if self._dirty:
            self.build()
        n_live = len(self._store)
        if exact_is_cheaper(overfetch_k(k, int(allowed.size), max(n_live, 1)), n_live):
            return self._store.search(unit_queries(q) if self.metric == "cosine" else q, k, allowed=allowed)
        return overfetch_filtered(lambda qq, kk: self.search(qq, kk), q, k, allowed, n_live)

    def _config(self) -> dict[str, Any]:
        return {
            "backend": self.name, "dim": self.dim, "metric": self.metric, "leaves": self.leaves,
            "leaves_to_search": self.leaves_to_search, "reorder": self.reorder,
            "dims_per_block": self.dims_per_block,
            "anisotropic_quantization_threshold": self.anisotropic_quantization_threshold,
            "training_sample_size": self.training_sample_size, "min_tree_size": self.min_tree_size,
            "training_threads": self.training_threads,
        }

    def save(self, path: Path) -> None:
        check_writable(self)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._dirty:
            self.build()
        self._store.save(path / "store")
        built = self._searcher is not None
        if built:
            (path / "scann").mkdir(exist_ok=True)
            self._searcher.serialize(str(path / "scann"), relative_path=True)
        meta = self._config() | {"built": built, "built_leaves": self._built_leaves}
        (path / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path, *, mmap: bool = True, readonly: bool = False, **_: Any) -> ScannIndex:
        """Load the ScaNN searcher (ScaNN reads it into RAM) and the stored vectors (memory-mapped by default);
        ``readonly`` refuses later changes."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        index = cls(**{k: v for k, v in meta.items() if k not in ("backend", "built", "built_leaves")})
        index._store = ExactIndex.load(path / "store", mmap=mmap)
        if meta["built"]:
            index._searcher = scann_ops_pybind.load_searcher(str(path / "scann"))
            index._searcher_ids = index._store.ids.copy()
            index._built_leaves = int(meta["built_leaves"])
        index._readonly = readonly
        return index

    def memory_bytes(self) -> int:
        """Our float32 copy plus the searcher's serialized size (ScaNN reports no figure of its own)."""
        if self._dirty:
            self.build()
        if self._memory_cache is None:
            searcher = 0
            if self._searcher is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    self._searcher.serialize(tmp, relative_path=True)
                    searcher = _dir_bytes(Path(tmp))
            self._memory_cache = searcher + int(self._searcher_ids.nbytes)
        return self._store.memory_bytes() + self._memory_cache

    @property
    def raw_index(self) -> Any:
        return self._searcher
