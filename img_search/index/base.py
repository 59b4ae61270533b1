"""The one interface every vector-index backend implements (modelled on faiss / usearch).

Contract (checked by ``tests/index/test_conformance.py`` for every installed backend):

* keyword-only constructor: ``Backend(dim=..., metric="cosine", **params)``;
* ``add(ids, vectors)``: ``ids`` int64 of shape (n,), ``vectors`` float32 of shape (n, dim);
  re-adding an existing id replaces its vector where the library can, else raises;
* ``remove(ids)``: drops ids (unknown ids are ignored); backends whose library cannot delete
  raise ``NotImplementedError`` and set ``supports_remove = False``;
* ``contains(ids)`` -> bool array of shape (n,): which of ``ids`` are stored (live) now;
* ``search(queries, k)`` -> ``(ids, scores)``, both 2-D of shape (n_queries, k), best first,
  padded with id -1 (and score -inf) where fewer than k vectors exist;
  scores are similarities (higher is better): cosine or inner product;
  **every row holds ``min(k, len(index))`` distinct live ids**, whatever k: an approximate search that comes back
  short (an HNSW graph or IVF probes that do not reach k vectors) is completed by exact scoring, and a k of at least
  ``1 / EXACT_K_FRACTION`` of the collection is scored exactly from the start (see ``exact_is_cheaper``);
* ``search(queries, k, allowed=ids)`` is a *filtered* search: ``allowed`` is an int64 array of ids, ascending and
  without repeats (``check_allowed`` makes it so), and every row then holds ``min(k, |allowed & live|)`` distinct live
  ids taken from ``allowed`` only, best first, padded as above; ids of ``allowed`` that the index does not hold are
  ignored and an empty ``allowed`` gives all-padding rows. Each backend uses its library's own filtered search where
  it has one (faiss ``SearchParameters(sel=IDSelector...)``, hnswlib's ``filter`` callable, Qdrant's
  ``HasIdCondition``), completing short rows exactly like an unfiltered search; usearch and ScaNN, whose Python
  bindings take no filter, over-fetch and keep the allowed ids (``overfetch_filtered``), or score the allowed
  vectors exactly when the over-fetch would reach the exhaustive threshold anyway;
* ``save(path)`` / ``load(path)`` (classmethod) round-trip the index (memory-mapped where supported);
* ``memory_bytes()`` estimates the index's resident size; ``len(index)`` counts stored vectors;
* ``search_params`` names the parameters ``set_search_params(**params)`` may change on a built index without
  rebuilding it (nprobe, ef, ...), so an evaluation can sweep them; unknown names raise ``ValueError``.

**Readers** (one writer, any number of readers). Only the `index` command writes a saved index. Everything else
opens it with ``load(path, readonly=True)``, which guarantees that **nothing under ``path`` is ever written**:
no flush, optimize, lock or temporary file, WAL or in-place change, while loading, searching or closing, and that
it works when ``path`` is on a read-only filesystem. A read-only index refuses ``add`` / ``remove`` / ``save``
with ``ReadOnlyIndexError``. How each backend keeps that promise (checked by hashing every file before and after,
and by reading from a read-only bind mount, in the conformance suite):

* exact, faiss, usearch: memory-mapped read-only (``np.load(mmap_mode="r")``, ``IO_FLAG_MMAP[_IFC]``,
  ``Index.restore(view=True)``); hnswlib, ScaNN and the qdrant-client local mode read their files into memory;
* qdrant_edge: ``EdgeShard.load`` writes into the shard it opens (it rewrites ``edge_config.json``, opens the
  mutable files read-write and flushes them on close; qdrant-edge-py 0.9.0 has no read-only open), so a
  read-only load opens a private *view* instead: a temporary directory whose large immutable files (the optimized
  segments' vectors, quantized codes, HNSW graph and id mappings) are links to the saved ones and whose small mutable
  files are copied (see ``qdrant_edge_index``).

``img_search.index.open_reader(name, path)`` wraps such a read-only index in an ``IndexReader``
(``reader.py``): ``add`` / ``remove`` go to an in-memory exact *delta* and mask the saved ids they replace or
delete, ``search`` merges the saved index's hits (minus masked ids) with the delta's, and ``save`` raises. This is
how a search sees vectors committed after the index was saved without writing, or copying, the saved index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from img_search.errors import UnavailableError
from img_search.wording import noun

Metric = Literal["cosine", "ip"]
METRICS: tuple[Metric, ...] = ("cosine", "ip")

FloatArray = NDArray[np.float32]
IdArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

# A k of at least this fraction of the collection is scored exactly instead of through the ANN structure: an HNSW
# search then needs ef >= k and visits a large part of the graph (each visit expanding M neighbours), an IVF search
# most of its lists, so brute force costs about as much and is exact (measured in docs/PERFORMANCE.md, "Large k").
EXACT_K_FRACTION = 0.1
# A query whose squared norm is this close to 1 is already unit length to float32 precision: dividing it by its norm
# would change each coordinate by about an ulp, so cosine search passes it on as is (saves a copy per query).
UNIT_TOL = 1e-6
_F32 = np.dtype(np.float32)


class ReadOnlyIndexError(UnavailableError):
    """The index was opened read-only (``load(path, readonly=True)`` or a reader): it cannot add, remove or save."""


@runtime_checkable
class VectorIndex(Protocol):
    name: ClassVar[str]
    supports_remove: ClassVar[bool]
    search_params: ClassVar[tuple[str, ...]]
    dim: int
    metric: Metric

    def add(self, ids: IdArray, vectors: FloatArray) -> None: ...

    def remove(self, ids: IdArray) -> None: ...

    def contains(self, ids: IdArray) -> BoolArray: ...

    def search(self, queries: FloatArray, k: int, *, allowed: IdArray | None = None
               ) -> tuple[IdArray, FloatArray]: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path, *, readonly: bool = False, **kwargs: Any) -> VectorIndex: ...

    def memory_bytes(self) -> int: ...

    def set_search_params(self, **params: Any) -> None: ...

    def __len__(self) -> int: ...


def check_metric(metric: str) -> Metric:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return metric  # type: ignore[return-value]


def check_search_params(backend: str, allowed: tuple[str, ...], params: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the valid parameters when ``params`` holds one the backend cannot change."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise ValueError(
            f"{backend}: cannot set search {noun(len(unknown), 'parameter')} {', '.join(unknown)}; valid: {valid}"
        )


def as_vectors(vectors: Any, dim: int) -> FloatArray:
    """Validate and convert to a C-contiguous float32 (n, dim) array."""
    from img_search.errors import DimensionMismatchError

    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DimensionMismatchError(f"expected vectors of shape (n, {dim}), got {tuple(arr.shape)}")
    return arr


def as_query(queries: Any, dim: int) -> FloatArray:
    """``as_vectors`` with a fast path: a float32 C-contiguous (n, dim) ndarray is returned as is, unchecked further.

    A service searches one query per call; this keeps the wrapper's per-call cost to a few attribute reads
    (``docs/PERFORMANCE.md``, "Wrapper overhead"). Raises ``DimensionMismatchError`` like ``as_vectors``.
    """
    if (type(queries) is np.ndarray and queries.dtype is _F32 and queries.ndim == 2 and queries.shape[1] == dim
            and queries.flags.c_contiguous):
        return queries
    return as_vectors(queries, dim)


def unit_queries(q: FloatArray) -> FloatArray:
    """L2-normalised copy of (n, dim) float32 queries; a single query already of unit length is returned as is."""
    if q.shape[0] == 1:
        row = q[0]
        if abs(float(row.dot(row)) - 1.0) <= UNIT_TOL:  # ndarray.dot: the cheapest call for one row (0.3 us)
            return q
    return normalize(q)


def exact_is_cheaper(k: int, n: int) -> bool:
    """Whether a search for ``k`` of ``n`` vectors should score all of them exactly (k >= EXACT_K_FRACTION * n)."""
    return k >= EXACT_K_FRACTION * n


def short_rows(ids: IdArray, kk: int) -> NDArray[np.intp] | None:
    """Rows of (n, >= kk) results holding fewer than ``kk`` ids (padding -1 sits at the end), or None if none."""
    if ids.shape[0] == 1:  # the common single-query case: one scalar comparison
        return None if ids[0, kk - 1] >= 0 else np.zeros(1, dtype=np.intp)
    rows = np.flatnonzero(ids[:, kk - 1] < 0)
    return rows if rows.size else None


def check_writable(index: Any) -> None:
    """Raise ``ReadOnlyIndexError`` if ``index`` was loaded with ``readonly=True``."""
    if getattr(index, "_readonly", False):
        raise ReadOnlyIndexError(
            f"this {index.name} index was opened read-only (a reader never writes the saved index); "
            "only `img-search index` changes it"
        )


def as_ids(ids: Any, n: int) -> IdArray:
    arr = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} ids for {n} vectors")
    if arr.size and arr.min() < 0:
        raise ValueError("ids must be non-negative (-1 is the padding id)")
    return arr


def normalize(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)


# qdrant (client) and qdrant_edge share Qdrant's search-time knobs
QDRANT_SEARCH_PARAM_CASTS: dict[str, Callable[[Any], Any]] = {
    "hnsw_ef": int,
    "rescore": bool,
    "oversampling": lambda v: None if v is None else float(v),
    "exact": bool,
}


def empty_results(n_queries: int, k: int) -> tuple[IdArray, FloatArray]:
    """What an empty index returns: every row all padding (id -1, score -inf)."""
    return pad_results(np.empty((n_queries, 0), np.int64), np.empty((n_queries, 0), np.float32), k)


def apply_search_params(target: Any, allowed: tuple[str, ...], params: dict[str, Any],
                        casts: dict[str, Callable[[Any], Any]]) -> None:
    """Validate ``params`` against ``allowed`` (naming the valid ones) and set each, cast, on ``target``."""
    check_search_params(target.name, allowed, params)
    for key, value in params.items():
        setattr(target, key, casts.get(key, lambda v: v)(value))


def pad_results(ids: IdArray, scores: FloatArray, k: int) -> tuple[IdArray, FloatArray]:
    """Pad (n, m) results to (n, k) with id -1 and score -inf, like faiss."""
    n, m = ids.shape
    if m >= k:
        return ids[:, :k], scores[:, :k]
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids[:, :m] = ids
    out_scores[:, :m] = scores
    return out_ids, out_scores


def merge_topk(parts: list[tuple[IdArray, FloatArray]], k: int) -> tuple[IdArray, FloatArray]:
    """The best ``k`` of several result sets for the same queries: (n, m_i) ids / scores each, best first.

    Padding (id -1, score -inf) sorts last; equal scores keep the order of ``parts``. Returns (n, k) arrays, padded.
    """
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    cols, best = topk(scores, k)
    return pad_results(np.take_along_axis(ids, cols, axis=1), best.astype(np.float32, copy=False), k)


def topk(scores: FloatArray, k: int) -> tuple[NDArray[np.intp], FloatArray]:
    """Row-wise top-k of a (n, m) score matrix by argpartition, best first; ties keep column order."""
    n, m = scores.shape
    kk = min(k, m)
    if kk == 0:
        return np.empty((n, 0), dtype=np.intp), np.empty((n, 0), dtype=np.float32)
    if kk < m:  # noqa: SIM108  (an if-block reads better than a 120-column ternary)
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(m), (n, m)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    # stable sort on (-score, column) so equal scores come out in gallery order
    order = np.lexsort((part, -part_scores), axis=1)
    cols = np.take_along_axis(part, order, axis=1)
    return cols, np.take_along_axis(part_scores, order, axis=1)


# ---------------------------------------------------------------------------------------------- filtered search
# over-fetch of a filtered search through an unfiltered one: ask for k * OVERFETCH / share + OVERFETCH_PAD hits (share:
# the allowed fraction of the collection), 4x more per retry. 1.5 covers the spread of the number of allowed ids among
# the first hits of a random filter (bench/filtered_search.py: one retry in 200 queries at 5 %).
OVERFETCH = 1.5
OVERFETCH_PAD = 16
OVERFETCH_GROWTH = 4


def check_allowed(allowed: Any) -> IdArray:
    """``allowed`` as a 1-D int64 array, ascending and without repeats (``np.unique`` only when it is not already)."""
    arr = np.ascontiguousarray(allowed, dtype=np.int64).reshape(-1)
    if arr.size > 1 and not bool((arr[1:] > arr[:-1]).all()):
        arr = np.unique(arr)
    return arr


def overfetch_k(k: int, n_allowed: int, n_live: int) -> int:
    """How many unfiltered hits to ask for so that about ``k`` of them fall among ``n_allowed`` of ``n_live``."""
    share = max(n_allowed, 1) / max(n_live, 1)
    return min(n_live, int(np.ceil(k * OVERFETCH / min(share, 1.0))) + OVERFETCH_PAD)


class IdRows:
    """Row positions of ids in a fixed id array (``ids[row]``; -1 entries, tombstones, never match).

    ``rows(allowed)`` -> ascending row numbers of the ids of ``allowed`` (sorted int64) that ``ids`` holds: a
    ``searchsorted`` into a sorted copy, O(m log n), so a filtered search never scans the whole id array.
    """

    def __init__(self, ids: IdArray) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def rows(self, allowed: IdArray) -> NDArray[np.intp]:
        n = self.sorted.shape[0]
        if n == 0 or allowed.size == 0:
            return np.empty(0, dtype=np.intp)
        pos = np.searchsorted(self.sorted, allowed)
        found = pos < n
        found[found] = self.sorted[pos[found]] == allowed[found]
        return np.sort(self.order[pos[found]])


def score_rows(q: FloatArray, vectors: FloatArray, ids: IdArray, k: int) -> tuple[IdArray, FloatArray]:
    """Exact top-``k`` of (n_q, dim) queries over (m, dim) ``vectors`` labelled ``ids``: (n_q, k) padded results.

    One query is scored with ``np.einsum`` (one thread, no BLAS): OpenBLAS runs a large matrix-vector product on
    every core and, on a loaded machine, waits for them (measured at 5,072 x 768: p50 12 ms threaded vs 0.35 ms on one
    thread, docs/PERFORMANCE.md "Filtered search"). Several queries go through BLAS, where threads pay off.
    """
    if vectors.shape[0] == 0 or k <= 0:
        return empty_results(q.shape[0], k)
    scores = np.einsum("ij,j->i", vectors, q[0])[None, :] if q.shape[0] == 1 else q @ vectors.T
    cols, best = topk(scores, k)
    return pad_results(ids[cols], best.astype(np.float32, copy=False), k)


def overfetch_filtered(search: Callable[[FloatArray, int], tuple[IdArray, FloatArray]], q: FloatArray, k: int,
                       allowed: IdArray, n_live: int) -> tuple[IdArray, FloatArray]:
    """A filtered search through an unfiltered ``search(q, kk)`` that keeps the full-row contract: ask for
    ``overfetch_k`` hits, keep those in ``allowed``, and widen by ``OVERFETCH_GROWTH`` until every row holds ``k``
    allowed ids or the search returned every live vector (then it held every allowed one: ``search`` returns
    ``min(kk, n_live)`` ids per row). Returns (n_q, k) ids / scores, padded."""
    n_q = q.shape[0]
    if k <= 0 or n_live <= 0 or allowed.size == 0:
        return empty_results(n_q, k)
    kk = overfetch_k(k, int(allowed.size), n_live)
    while True:
        found, scores = search(q, kk)
        # membership by binary search in the sorted ids: 3 us for 46 hits in 50,000 ids, against 85 us for np.isin
        at = np.minimum(np.searchsorted(allowed, found), allowed.size - 1)
        keep = (allowed[at] == found) & (found >= 0)
        if kk >= n_live or int(keep.sum(axis=1).min()) >= k:
            break
        kk = min(n_live, kk * OVERFETCH_GROWTH)
    out_ids = np.full((n_q, k), -1, np.int64)
    out_scores = np.full((n_q, k), -np.inf, np.float32)
    for row in range(n_q):
        ids_row, scores_row = found[row][keep[row]][:k], scores[row][keep[row]][:k]
        out_ids[row, : ids_row.size], out_scores[row, : ids_row.size] = ids_row, scores_row
    return out_ids, out_scores
