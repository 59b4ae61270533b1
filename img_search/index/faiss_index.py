"""FAISS backends: ``flat``, ``ivf`` (IVF-Flat), ``hnsw`` (HNSW-Flat) and ``ivf_pq`` (optionally re-ranked exactly).

Choices this module makes (see also ``docs/PERFORMANCE.md``):

* **metric** -- both metrics run on faiss' inner product; ``cosine`` L2-normalises vectors on add and queries on search.
* **ids** -- ``flat`` is an ``IndexIDMap2`` over ``IndexFlatIP`` and ``ivf`` / ``ivf_pq`` store the ids in their
  inverted lists (``add_with_ids``): these remove for real (``remove_ids``). ``hnsw`` and ``ivf_pq`` with ``rerank``
  cannot: faiss cannot unlink a node from an HNSW graph and ``IndexRefineFlat`` needs sequential ids. Those two keep
  positions ``0..n-1`` inside faiss and a position -> id table here; ``remove`` (and re-adding an id, which replaces
  its vector) leaves a *tombstone*: the position is cleared in a bitmap handed to faiss as an ``IDSelectorBitmap`` at
  search time, so faiss skips it while searching and still returns k live results. Tombstoned vectors keep their
  memory until ``compact()``, which runs by itself once half of the stored vectors are tombstones.
* **training** (``ivf``, ``ivf_pq``) -- vectors are *buffered* until there are enough to train on:
  ``train_size`` vectors, by default ``nlist * 39`` (faiss' own minimum of 39 points per list). Until then the buffer
  is searched exactly, so a small collection is simply exact. On reaching the threshold the index trains on the whole
  buffer (faiss subsamples 256 points per list), moves the buffer in, and later adds go straight to the lists. When
  ``train_size`` is set below ``nlist``, ``nlist`` is clamped to the number of training vectors.
* **GPU** -- ``gpu=True`` moves ``flat`` / ``ivf`` / ``ivf_pq`` (without ``rerank``) to a GPU with
  ``index_cpu_to_gpu`` when ``faiss.get_num_gpus() > 0``; unverified on the project's CPU-only machines.
* **save / load** -- ``faiss.write_index`` plus the id table; ``load(mmap=True)`` maps the file (``IO_FLAG_MMAP_IFC``
  for flat / HNSW / refine storage, ``IO_FLAG_MMAP`` for IVF lists). A mapped index is read-only in faiss, so the
  first ``add`` / ``remove`` after such a load re-reads the file into memory first (copy-on-write).
  ``load(readonly=True)`` maps the same way and refuses changes: faiss opens the file read-only and maps it
  ``PROT_READ``, so nothing is written (checked by hashing the files, and from a read-only mount, in the tests).
* **large k** -- faiss HNSW widens its beam to ``max(efSearch, k)`` but its graph walk can still stop short of k
  (measured: 1,080 of 2,100 vectors for k = 2,100), and IVF only sees the probed lists. A k of at least
  ``EXACT_K_FRACTION`` of the collection is therefore scored exhaustively (the flat storage behind HNSW / re-ranked
  IVF-PQ, with the tombstone selector; every list for IVF), and any row an approximate search leaves short is
  re-searched that way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import faiss as _faiss
import numpy as np

from img_search.index.base import (
    EXACT_K_FRACTION,
    UNIT_TOL,
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
    empty_results,
    exact_is_cheaper,
    normalize,
    overfetch_filtered,
    pad_results,
    short_rows,
    unit_queries,
)
from img_search.index.exact import ExactIndex

logger = logging.getLogger(__name__)

_F32 = np.dtype(np.float32)
# faiss' bundled type stubs miss much of the SWIG API used here (SearchParametersHNSW, hnsw.neighbors, ...)
faiss: Any = _faiss

METHODS: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivf_pq")
# faiss warns below 39 training points per inverted list
_MIN_POINTS_PER_LIST = 39
_FILE = "index.faiss"


def _default_pq_m(dim: int) -> int:
    """Largest divisor of ``dim`` not above dim / 8 (8 dimensions per PQ sub-quantizer, e.g. 96 for 768)."""
    target = max(1, dim // 8)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


class FaissIndex:
    name: ClassVar[str] = "faiss"
    supports_remove: ClassVar[bool] = True
    # the union over methods; set_search_params rejects the ones the chosen method does not have
    search_params: ClassVar[tuple[str, ...]] = ("nprobe", "ef_search", "rerank")

    def __init__(
        self,
        *,
        dim: int,
        metric: str = "cosine",
        method: str = "hnsw",
        nlist: int = 1024,
        nprobe: int = 16,
        M: int = 16,
        ef_construction: int = 100,
        ef_search: int = 64,
        m: int | None = None,
        nbits: int = 8,
        rerank: int = 0,
        train_size: int | None = None,
        compact_ratio: float = 0.5,
        gpu: bool = False,
        gpu_device: int = 0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown faiss method {method!r}; valid methods: {', '.join(METHODS)}")
        self.dim = int(dim)
        self.metric: Metric = check_metric(metric)
        self.method = method
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.m = int(m) if m is not None else _default_pq_m(self.dim)
        self.nbits = int(nbits)
        self.rerank = int(rerank)
        self.compact_ratio = float(compact_ratio)
        self.gpu = bool(gpu)
        self.gpu_device = int(gpu_device)
        if method == "ivf_pq" and self.dim % self.m:
            raise ValueError(f"faiss ivf_pq: m={self.m} must divide dim={self.dim}")
        if self.rerank and method != "ivf_pq":
            raise ValueError("faiss: rerank (IndexRefineFlat) applies to method='ivf_pq' only")
        self.train_size = int(train_size) if train_size is not None else self.nlist * _MIN_POINTS_PER_LIST
        # "positions": faiss holds 0..n-1 and _labels maps them to ids (tombstones = -1); else faiss holds the ids
        self._positional = method == "hnsw" or (method == "ivf_pq" and self.rerank > 0)
        self._labels: IdArray = np.empty(0, dtype=np.int64)
        self._ids: IdArray = np.empty(0, dtype=np.int64)
        self._n_tombstones = 0
        self._selector: Any = None  # IDSelectorBitmap over live positions, rebuilt lazily when tombstones change
        self._selector_dirty = False
        self._params_cache: Any = None  # SearchParameters carrying the selector, rebuilt with it
        self._params_base: Any = None
        self._label_rows: IdRows | None = None  # id -> faiss position (positional methods), for filter bitmaps
        self._one_shape = (1, self.dim)
        self._readonly = False
        self._mmap_source: Path | None = None
        self._gpu_res: Any = None
        self._buffer: ExactIndex | None = None
        self._index: Any = None
        if self.gpu:
            self._check_gpu()
        if method in ("ivf", "ivf_pq"):
            self._buffer = ExactIndex(dim=self.dim, metric="ip")
        else:
            self._index = self._new_index(self.nlist)

    # ------------------------------------------------------------------ construction helpers
    def _check_gpu(self) -> None:
        from img_search.index import BackendUnavailableError

        if self.method == "hnsw" or self.rerank:
            raise ValueError("faiss gpu=True supports flat, ivf and ivf_pq without rerank")
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            raise BackendUnavailableError(
                "faiss gpu=True needs a GPU build of faiss (faiss-gpu) and a visible CUDA device; none found"
            )

    def _factory_string(self, nlist: int) -> str:
        if self.method == "flat":
            return "IDMap2,Flat"
        if self.method == "hnsw":
            return f"HNSW{self.M},Flat"
        if self.method == "ivf":
            return f"IVF{nlist},Flat"
        return f"IVF{nlist},PQ{self.m}x{self.nbits}" + (",RFlat" if self.rerank else "")

    def _new_index(self, nlist: int) -> Any:
        index = faiss.index_factory(self.dim, self._factory_string(nlist), faiss.METRIC_INNER_PRODUCT)
        if self.method == "hnsw":
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        if self.gpu:
            self._gpu_res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_res, self.gpu_device, index)
        return index

    def _apply_search_params(self) -> None:
        self._params_cache = None
        index = self._index
        if index is None:
            return
        if self.method == "hnsw":
            index.hnsw.efSearch = self.ef_search
        elif self.method in ("ivf", "ivf_pq"):
            if self.gpu:
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", self.nprobe)
            elif self.rerank:
                faiss.downcast_index(index.base_index).nprobe = self.nprobe
                index.k_factor = float(self.rerank)
            else:
                index.nprobe = self.nprobe

    # ------------------------------------------------------------------ mutation
    def __len__(self) -> int:
        if self._buffer is not None:
            return len(self._buffer)
        if self._positional:
            return int(self._labels.shape[0]) - self._n_tombstones
        return int(self._ids.shape[0])

    def _ensure_writable(self) -> None:
        """Copy-on-write after a memory-mapped load: faiss cannot modify mapped storage."""
        if self._mmap_source is not None:
            logger.info("faiss: re-reading %s into memory before modifying it", self._mmap_source)
            self._index = faiss.read_index(str(self._mmap_source))
            self._mmap_source = None
            self._apply_search_params()

    def add(self, ids: Any, vectors: Any) -> None:
        check_writable(self)
        vecs = as_vectors(vectors, self.dim)
        new_ids = as_ids(ids, vecs.shape[0])
        if new_ids.size == 0:
            return
        if np.unique(new_ids).size != new_ids.size:
            raise ValueError("faiss: duplicate ids within one add() call")
        if self.metric == "cosine":
            vecs = normalize(vecs)
        if self._buffer is not None:
            self._buffer.add(new_ids, vecs)
            if len(self._buffer) >= self.train_size:
                self._train_from_buffer()
            return
        self._ensure_writable()
        if self._positional:
            self._tombstone(new_ids)
            self._index.add(vecs)
            self._labels = np.concatenate([self._labels, new_ids])
            self._label_rows = None
            if self._n_tombstones:
                self._selector_dirty = True
        else:
            existing = new_ids[np.isin(new_ids, self._ids)]
            if existing.size:  # replace: drop the old vectors first
                self._index.remove_ids(existing)
                self._ids = self._ids[~np.isin(self._ids, existing)]
            self._index.add_with_ids(vecs, new_ids)
            self._ids = np.concatenate([self._ids, new_ids])

    def _train_from_buffer(self) -> None:
        assert self._buffer is not None
        buf_ids, buf_vecs = self._buffer.ids, np.ascontiguousarray(self._buffer.vectors)
        nlist = min(self.nlist, buf_vecs.shape[0])
        if nlist < self.nlist:
            logger.warning("faiss %s: only %d training vectors, nlist clamped %d -> %d",
                           self.method, buf_vecs.shape[0], self.nlist, nlist)
        if self.method == "ivf_pq" and buf_vecs.shape[0] < (1 << self.nbits):
            raise ValueError(f"faiss ivf_pq needs at least 2**nbits={1 << self.nbits} training vectors")
        index = self._new_index(nlist)
        logger.info("faiss %s: training %d lists on %d vectors", self.method, nlist, buf_vecs.shape[0])
        index.train(buf_vecs)
        self._index, self._buffer = index, None
        self._apply_search_params()
        if self._positional:
            self._index.add(buf_vecs)
            self._labels = buf_ids.copy()
            self._label_rows = None
        else:
            self._index.add_with_ids(buf_vecs, buf_ids)
            self._ids = buf_ids.copy()

    def _tombstone(self, ids: IdArray) -> None:
        hit = np.isin(self._labels, ids) & (self._labels >= 0)
        n_hit = int(hit.sum())
        if n_hit:
            self._labels[hit] = -1
            self._label_rows = None
            self._n_tombstones += n_hit
            self._selector_dirty = True

    def remove(self, ids: Any) -> None:
        check_writable(self)
        drop = np.asarray(ids, dtype=np.int64).reshape(-1)
        if drop.size == 0:
            return
        if self._buffer is not None:
            self._buffer.remove(drop)
            return
        self._ensure_writable()
        if self._positional:
            self._tombstone(drop)
            if self._labels.size and self._n_tombstones >= self.compact_ratio * self._labels.size:
                self.compact()
        else:
            present = drop[np.isin(drop, self._ids)]
            if present.size:
                self._index.remove_ids(present)
                self._ids = self._ids[~np.isin(self._ids, present)]

    def compact(self) -> None:
        """Rebuild a tombstoned (hnsw / refined ivf_pq) index from its live vectors, freeing removed ones."""
        check_writable(self)
        if not self._positional or self._n_tombstones == 0 or self._index is None:
            return
        self._ensure_writable()
        live = np.flatnonzero(self._labels >= 0)
        vectors = self._reconstruct(live)
        if self.method == "hnsw":
            index = self._new_index(self.nlist)
        else:  # keep the trained IVF-PQ quantizers, drop the codes
            index = faiss.clone_index(self._index)
            index.reset()
        logger.info("faiss %s: compacting %d -> %d vectors", self.method, self._labels.size, live.size)
        index.add(vectors)
        self._index = index
        self._labels = self._labels[live]
        self._label_rows = None
        self._n_tombstones = 0
        self._selector, self._selector_dirty = None, False
        self._apply_search_params()

    def _reconstruct(self, positions: np.ndarray) -> FloatArray:
        if self.method == "hnsw":
            storage = faiss.downcast_index(self._index.storage)
        else:
            storage = faiss.downcast_index(self._index.refine_index)
        return np.ascontiguousarray(storage.reconstruct_batch(positions.astype(np.int64)), dtype=np.float32)

    def contains(self, ids: Any) -> BoolArray:
        query = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._buffer is not None:
            return self._buffer.contains(query)
        stored = self._labels if self._positional else self._ids  # tombstones are -1, never a valid id
        return np.isin(query, stored)

    # ------------------------------------------------------------------ search
    def set_search_params(self, **params: Any) -> None:
        check_search_params(self.name, self.search_params, params)
        valid = {"flat": (), "hnsw": ("ef_search",), "ivf": ("nprobe",), "ivf_pq": ("nprobe", "rerank")}[self.method]
        check_search_params(f"faiss {self.method}", valid, params)
        if "rerank" in params and not self.rerank:
            raise ValueError("faiss ivf_pq: rerank can only be changed on an index built with rerank > 0")
        if "rerank" in params and int(params["rerank"]) < 1:
            raise ValueError("faiss ivf_pq: rerank (k_factor) must be >= 1 on a refined index")
        for key, value in params.items():
            setattr(self, key, int(value))
        self._apply_search_params()

    def _selector_now(self) -> Any:
        """IDSelectorBitmap over live positions (None when nothing is tombstoned), rebuilt after changes."""
        if not (self._positional and self._n_tombstones):
            return None
        if self._selector_dirty or self._selector is None:
            bitmap = np.packbits(self._labels >= 0, bitorder="little")
            self._selector = faiss.IDSelectorBitmap(bitmap)
            self._selector_dirty = False
            self._params_cache = None
        return self._selector

    def _search_params_object(self) -> Any:
        """faiss SearchParameters carrying the tombstone selector (None when nothing is tombstoned); cached."""
        selector = self._selector_now()
        if selector is None:
            return None
        if self._params_cache is None:
            if self.method == "hnsw":
                self._params_cache = faiss.SearchParametersHNSW(sel=selector, efSearch=self.ef_search)
            else:
                base = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
                self._params_base = base  # the refine parameters point at it: keep it alive as long as they are
                self._params_cache = faiss.IndexRefineSearchParameters(k_factor=float(self.rerank),
                                                                       base_index_params=base)
        return self._params_cache

    def search(self, queries: Any, k: int, *, allowed: Any = None) -> tuple[IdArray, FloatArray]:
        if allowed is None:
            one = self._search_one(queries, k)
            if one is not None:
                return one
        q = as_query(queries, self.dim)
        if self.metric == "cosine":
            q = unit_queries(q)
        if self._buffer is not None:
            return self._buffer.search(q, k, allowed=allowed)
        if allowed is not None:
            return self._search_allowed(q, k, check_allowed(allowed))
        # inlined len(self): this path runs once per query of a service
        n_live = (self._labels.shape[0] - self._n_tombstones) if self._positional else self._ids.shape[0]
        if n_live == 0 or k <= 0:
            return empty_results(q.shape[0], k)
        kk = k if k < n_live else n_live
        if self.method != "flat" and exact_is_cheaper(kk, n_live):
            found, scores = self._search_exhaustive(q, kk)
        else:
            if self._n_tombstones:
                scores, found = self._index.search(q, kk, params=self._search_params_object())
            else:
                scores, found = self._index.search(q, kk)
            rows = short_rows(found, kk)
            if rows is not None:  # the graph walk / the probed lists held fewer than kk live vectors
                found[rows], scores[rows] = self._search_exhaustive_positions(q[rows], kk)
            if self._positional:
                found = self._labels[found]
        return (found, scores) if kk == k else pad_results(found, scores, k)

    def _search_allowed(self, q: FloatArray, k: int, allowed: IdArray) -> tuple[IdArray, FloatArray]:
        """faiss' own filtered search: an ``IDSelectorBitmap`` over the positions of the allowed ids (hnsw, refined
        ivf_pq: faiss holds positions) or an ``IDSelectorBatch`` of the ids (flat, ivf: faiss holds the ids), passed
        as ``SearchParameters(sel=...)``. faiss skips non-selected vectors while scanning (flat, IVF lists) and keeps
        walking through them without returning them (HNSW); a row that comes back short is searched exhaustively
        with the same selector, as is a k of at least ``EXACT_K_FRACTION`` of the allowed vectors."""
        n_q = q.shape[0]
        if self.gpu:  # GPU indexes take no selector: over-fetch through the unfiltered search
            return overfetch_filtered(lambda qq, kk: self.search(qq, kk), q, k, allowed, len(self))
        if self._positional:
            if self._label_rows is None:
                self._label_rows = IdRows(self._labels)
            rows = self._label_rows.rows(allowed)
            n_allowed = int(rows.size)
            bitmap = np.zeros(self._labels.shape[0], dtype=bool)
            bitmap[rows] = True
            selector = faiss.IDSelectorBitmap(np.packbits(bitmap, bitorder="little"))
        else:
            present = allowed[np.isin(allowed, self._ids)]
            n_allowed = int(present.size)
            selector = faiss.IDSelectorBatch(present)
        if n_allowed == 0 or k <= 0:
            return empty_results(n_q, k)
        kk = min(k, n_allowed)
        if self.method != "flat" and exact_is_cheaper(kk, n_allowed):
            found, scores = self._exhaustive_selected(q, kk, selector)
        else:
            if self.method == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, kk))
            elif self.method == "flat":
                params = faiss.SearchParameters(sel=selector)
            elif self.rerank:
                base = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
                params = faiss.IndexRefineSearchParameters(k_factor=float(self.rerank), base_index_params=base)
            else:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
            scores, found = self._index.search(q, kk, params=params)
            rows_short = short_rows(found, kk)
            if rows_short is not None:  # the graph walk / probed lists held fewer than kk allowed vectors
                found[rows_short], scores[rows_short] = self._exhaustive_selected(q[rows_short], kk, selector)
        if self._positional:
            found = np.where(found >= 0, self._labels[found], -1)
        return (found, scores) if kk == k else pad_results(found, scores, k)

    def _exhaustive_selected(self, q: FloatArray, kk: int, selector: Any) -> tuple[IdArray, FloatArray]:
        """Every selected vector scored: the flat storage with the selector (positions, for hnsw / refined ivf_pq),
        the flat index itself, or every inverted list (ivf, ivf_pq: PQ codes unless re-ranked)."""
        index = self._index
        if self._positional:
            storage = faiss.downcast_index(index.storage if self.method == "hnsw" else index.refine_index)
            scores, found = storage.search(q, kk, params=faiss.SearchParameters(sel=selector))
        elif self.method == "flat":
            scores, found = index.search(q, kk, params=faiss.SearchParameters(sel=selector))
        else:
            nlist = int(faiss.extract_index_ivf(index).nlist)
            scores, found = index.search(q, kk, params=faiss.SearchParametersIVF(sel=selector, nprobe=nlist))
        return found, scores

    def _search_one(self, queries: Any, k: int) -> tuple[IdArray, FloatArray] | None:
        """The path of a service's typical call, kept to a few operations: one float32 (1, dim) query of unit length
        (or metric ip), a built CPU index without tombstones, k below the exhaustive threshold, a full answer.
        ``None`` when any of that does not hold (the general path then answers, with identical results)."""
        index = self._index
        if (type(queries) is not np.ndarray or queries.shape != self._one_shape or queries.dtype is not _F32
                or not queries.flags.c_contiguous or index is None or self._n_tombstones or self.gpu):
            return None
        if self.metric == "cosine":
            row = queries[0]
            if abs(float(row.dot(row)) - 1.0) > UNIT_TOL:
                return None
        n_live = self._labels.shape[0] if self._positional else self._ids.shape[0]
        if k <= 0 or k >= EXACT_K_FRACTION * n_live:
            return None
        # faiss' own search() minus the checks done above: fresh output arrays, then the C++ call
        scores = np.empty((1, k), dtype=np.float32)
        found = np.empty((1, k), dtype=np.int64)
        index.search_c(1, faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(found), None)
        if found[0, k - 1] < 0:  # short: the general path completes it
            return None
        return (self._labels[found] if self._positional else found), scores

    def _search_exhaustive(self, q: FloatArray, kk: int) -> tuple[IdArray, FloatArray]:
        """Every live vector scored (exactly, except IVF-PQ codes without re-ranking); ids, not positions."""
        found, scores = self._search_exhaustive_positions(q, kk)
        return (self._labels[found] if self._positional else found), scores

    def _search_exhaustive_positions(self, q: FloatArray, kk: int) -> tuple[IdArray, FloatArray]:
        """Like ``_search_exhaustive`` but returning what ``self._index.search`` returns (positions if positional)."""
        index = self._index
        if self._positional:  # hnsw and re-ranked ivf_pq keep every vector in a flat storage: brute force over it
            storage = faiss.downcast_index(index.storage if self.method == "hnsw" else index.refine_index)
            selector = self._selector_now()
            if selector is None:
                scores, found = storage.search(q, kk)
            else:
                scores, found = storage.search(q, kk, params=faiss.SearchParameters(sel=selector))
            return found, scores
        if self.method == "flat":
            scores, found = index.search(q, kk)
            return found, scores
        nlist = int(faiss.extract_index_ivf(index).nlist) if not self.gpu else int(index.nlist)
        if self.gpu:  # GPU indexes take no per-call parameters: probe every list, then restore nprobe
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nlist)
            try:
                scores, found = index.search(q, kk)
            finally:
                self._apply_search_params()
            return found, scores
        scores, found = index.search(q, kk, params=faiss.SearchParametersIVF(nprobe=nlist))
        return found, scores

    # ------------------------------------------------------------------ persistence
    def _cpu_index(self) -> Any:
        if self.gpu and self._index is not None:
            return faiss.index_gpu_to_cpu(self._index)
        return self._index

    def _config(self) -> dict[str, Any]:
        return {
            "backend": self.name, "dim": self.dim, "metric": self.metric, "method": self.method,
            "nlist": self.nlist, "nprobe": self.nprobe, "M": self.M, "ef_construction": self.ef_construction,
            "ef_search": self.ef_search, "m": self.m, "nbits": self.nbits, "rerank": self.rerank,
            "train_size": self.train_size, "compact_ratio": self.compact_ratio,
        }

    def save(self, path: Path) -> None:
        check_writable(self)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = self._config() | {"trained": self._buffer is None, "n_tombstones": self._n_tombstones}
        if self._buffer is not None:
            self._buffer.save(path / "buffer")
        else:
            faiss.write_index(self._cpu_index(), str(path / _FILE))
            np.save(path / "ids.npy", self._labels if self._positional else self._ids)
        (path / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path, *, mmap: bool = True, gpu: bool = False, readonly: bool = False,
             **_: Any) -> FaissIndex:
        """Read the index (memory-mapped unless ``mmap=False`` or ``gpu``); ``readonly`` also refuses changes."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        params = {k: v for k, v in meta.items() if k not in ("backend", "trained", "n_tombstones")}
        index = cls(**params, gpu=gpu)
        index._readonly = readonly
        if not meta["trained"]:
            index._buffer = ExactIndex.load(path / "buffer", mmap=False)
            return index
        flags = 0
        if mmap and not gpu:  # IVF lists map with IO_FLAG_MMAP; flat-code storage (flat, HNSW, refine) with _IFC
            ivf_lists = index.method in ("ivf", "ivf_pq") and not index.rerank
            flags = faiss.IO_FLAG_MMAP if ivf_lists else faiss.IO_FLAG_MMAP_IFC
        raw = faiss.read_index(str(path / _FILE), flags)
        index._mmap_source = path / _FILE if flags else None
        if gpu:
            index._gpu_res = faiss.StandardGpuResources()
            raw = faiss.index_cpu_to_gpu(index._gpu_res, index.gpu_device, raw)
        index._index, index._buffer = raw, None
        stored = np.load(path / "ids.npy")
        if index._positional:
            index._labels = stored
            index._label_rows = None
            index._n_tombstones = int(meta["n_tombstones"])
        else:
            index._ids = stored
        index._apply_search_params()
        return index

    # ------------------------------------------------------------------ memory
    def memory_bytes(self) -> int:
        """Bytes held by the faiss structures (from their sizes: faiss has no figure of its own) plus the id table."""
        total = int(self._labels.nbytes + self._ids.nbytes)
        if self._buffer is not None:
            return total + self._buffer.memory_bytes()
        return total + _faiss_bytes(self._cpu_index() if self.gpu else self._index)

    @property
    def raw_index(self) -> Any:
        """The underlying faiss index (for benchmarks comparing against the raw library call)."""
        return self._index


def _faiss_bytes(index: Any) -> int:
    index = faiss.downcast_index(index)
    n = int(index.ntotal)
    if isinstance(index, faiss.IndexIDMap2):
        # id_map (8 bytes) + rev_map (an unordered_map: ~32 bytes per entry)
        return _faiss_bytes(index.index) + n * (8 + 32)
    if isinstance(index, faiss.IndexIDMap):
        return _faiss_bytes(index.index) + n * 8
    if isinstance(index, faiss.IndexHNSW):
        hnsw = index.hnsw
        graph = hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
        return _faiss_bytes(index.storage) + int(graph)
    if isinstance(index, faiss.IndexRefine):
        return _faiss_bytes(index.base_index) + _faiss_bytes(index.refine_index)
    if isinstance(index, faiss.IndexIVF):
        lists = n * (int(index.code_size) + 8)
        extra = 0
        if isinstance(index, faiss.IndexIVFPQ):
            pq = index.pq
            extra = int(pq.M) * int(pq.ksub) * int(pq.dsub) * 4 + int(index.precomputed_table.size()) * 4
        return lists + _faiss_bytes(index.quantizer) + extra
    if isinstance(index, faiss.IndexFlatCodes):
        return n * int(index.code_size)
    return int(faiss.serialize_index(index).nbytes)
