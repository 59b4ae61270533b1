"""The one interface every vector-index backend implements (modelled on faiss / usearch).

Contract (checked by ``tests/index/test_conformance.py`` for every installed backend):

* keyword-only constructor: ``Backend(dim=..., metric="cosine", **params)``;
* ``add(ids, vectors)``: ``ids`` int64 of shape (n,), ``vectors`` float32 of shape (n, dim);
  re-adding an existing id replaces its vector where the library can, else raises;
* ``remove(ids)``: drops ids (unknown ids are ignored); backends whose library cannot delete
  raise ``NotImplementedError`` and set ``supports_remove = False``;
* ``search(queries, k)`` -> ``(ids, scores)``, both 2-D of shape (n_queries, k), best first,
  padded with id -1 (and score -inf) where fewer than k vectors exist;
  scores are similarities (higher is better): cosine or inner product;
* ``save(path)`` / ``load(path)`` (classmethod) round-trip the index (memory-mapped where supported);
* ``memory_bytes()`` estimates the index's resident size; ``len(index)`` counts stored vectors;
* ``search_params`` names the parameters ``set_search_params(**params)`` may change on a built index without
  rebuilding it (nprobe, ef, ...), so an evaluation can sweep them; unknown names raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

Metric = Literal["cosine", "ip"]
METRICS: tuple[Metric, ...] = ("cosine", "ip")

FloatArray = NDArray[np.float32]
IdArray = NDArray[np.int64]


@runtime_checkable
class VectorIndex(Protocol):
    name: ClassVar[str]
    supports_remove: ClassVar[bool]
    search_params: ClassVar[tuple[str, ...]]
    dim: int
    metric: Metric

    def add(self, ids: IdArray, vectors: FloatArray) -> None: ...

    def remove(self, ids: IdArray) -> None: ...

    def search(self, queries: FloatArray, k: int) -> tuple[IdArray, FloatArray]: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> VectorIndex: ...

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
        raise ValueError(f"{backend}: cannot set search parameter(s) {', '.join(unknown)}; valid: {valid}")


def as_vectors(vectors: Any, dim: int) -> FloatArray:
    """Validate and convert to a C-contiguous float32 (n, dim) array."""
    from img_search.errors import DimensionMismatchError

    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise DimensionMismatchError(f"expected vectors of shape (n, {dim}), got {tuple(arr.shape)}")
    return arr


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
