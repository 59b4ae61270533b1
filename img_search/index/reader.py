"""A read-only saved index plus the changes committed since it was saved, searched as one ``VectorIndex``.

``open_reader(name, path)`` loads the saved index with ``readonly=True`` (nothing under ``path`` is ever written,
see ``base.py``) and wraps it in an ``IndexReader``:

* ``add(ids, vectors)`` puts the vectors in an in-memory ``ExactIndex`` (the *delta*) and masks those ids in the
  saved index, so a changed vector replaces the saved one;
* ``remove(ids)`` masks them in the saved index and drops them from the delta;
* ``search(q, k)`` asks the saved index for ``k + m`` hits, where ``m`` is the number of masked ids it holds (so at
  least k live ones remain: every backend returns ``min(k, len)`` distinct ids), drops the masked ones, merges the
  rest with the delta's top k by score and pads with id -1 / score -inf; ``search(q, k, allowed=ids)`` passes the
  saved index ``ids`` minus the masked ones (its own filtered search) and the delta ``ids``, and merges the two;
* ``save`` raises ``ReadOnlyIndexError``: readers never save (only `img-search index` writes the saved index).

With an empty delta and nothing masked (a search right after `index`), ``search`` is the saved index's own call.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from img_search.index.base import (
    BoolArray,
    FloatArray,
    IdArray,
    Metric,
    ReadOnlyIndexError,
    VectorIndex,
    as_ids,
    as_query,
    as_vectors,
    check_allowed,
    merge_topk,
    pad_results,
)
from img_search.index.exact import ExactIndex


class IndexReader:
    """``VectorIndex`` over (a read-only ``base`` index, an in-memory exact delta, a set of masked base ids).

    ``name`` and ``search_params`` are the base backend's (see ``reader_class``); ``set_search_params`` goes to
    the base. ``len`` counts live vectors: the base's minus its masked ids, plus the delta's.
    """

    name: ClassVar[str] = "reader"
    supports_remove: ClassVar[bool] = True
    search_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base: VectorIndex) -> None:
        self.base = base
        self.dim = base.dim
        self.metric: Metric = base.metric
        self._delta = ExactIndex(dim=self.dim, metric=self.metric)
        self._masked = np.empty(0, dtype=np.int64)  # sorted ids of the base that are removed or replaced
        self._base_len = len(base)

    # ------------------------------------------------------------------ changes (in memory only)
    def _mask(self, ids: IdArray) -> None:
        """Add the ids of ``ids`` that the base holds (and are not masked yet) to the mask."""
        fresh = np.setdiff1d(ids, self._masked)
        if fresh.size:
            in_base = fresh[self.base.contains(fresh)]
            if in_base.size:
                self._masked = np.union1d(self._masked, in_base)

    def add(self, ids: Any, vectors: Any) -> None:
        vecs = as_vectors(vectors, self.dim)
        new_ids = as_ids(ids, vecs.shape[0])
        if new_ids.size == 0:
            return
        if np.unique(new_ids).size != new_ids.size:
            raise ValueError("reader: duplicate ids within one add() call")
        self._mask(new_ids)
        self._delta.add(new_ids, vecs)

    def remove(self, ids: Any) -> None:
        drop = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if drop.size == 0:
            return
        self._mask(drop)
        if len(self._delta):
            self._delta.remove(drop)

    def contains(self, ids: Any) -> BoolArray:
        query = np.asarray(ids, dtype=np.int64).reshape(-1)
        in_base = self.base.contains(query) & ~np.isin(query, self._masked)
        return in_base | self._delta.contains(query)

    def __len__(self) -> int:
        return self._base_len - int(self._masked.size) + len(self._delta)

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int, *, allowed: Any = None) -> tuple[IdArray, FloatArray]:
        if allowed is not None:
            return self._search_allowed(queries, k, check_allowed(allowed))
        n_masked = int(self._masked.size)
        if not n_masked and not len(self._delta):  # nothing changed since the save: the base's own answer
            return self.base.search(queries, k)
        q = as_query(queries, self.dim)
        if k <= 0:
            return pad_results(np.empty((q.shape[0], 0), np.int64), np.empty((q.shape[0], 0), np.float32), k)
        parts = []
        n_base_live = self._base_len - n_masked
        if n_base_live > 0:
            ids, scores = self.base.search(q, min(k + n_masked, self._base_len))
            if n_masked:
                hidden = np.isin(ids, self._masked)
                if hidden.any():
                    ids = np.where(hidden, -1, ids)
                    scores = np.where(hidden, -np.inf, scores).astype(np.float32, copy=False)
            parts.append((ids, scores))
        if len(self._delta):
            parts.append(self._delta.search(q, k))
        if not parts:
            return pad_results(np.empty((q.shape[0], 0), np.int64), np.empty((q.shape[0], 0), np.float32), k)
        return merge_topk(parts, k)

    def _search_allowed(self, queries: Any, k: int, allowed: IdArray) -> tuple[IdArray, FloatArray]:
        """The saved index's filtered search over ``allowed`` minus the masked ids, merged with the delta's."""
        if not self._masked.size and not len(self._delta):
            return self.base.search(queries, k, allowed=allowed)
        q = as_query(queries, self.dim)
        base_allowed = allowed[~np.isin(allowed, self._masked)] if self._masked.size else allowed
        parts = [self.base.search(q, k, allowed=base_allowed)]
        if len(self._delta):
            parts.append(self._delta.search(q, k, allowed=allowed))
        return merge_topk(parts, k)

    def set_search_params(self, **params: Any) -> None:
        self.base.set_search_params(**params)

    # ------------------------------------------------------------------ persistence: never
    def save(self, path: Path) -> None:
        raise ReadOnlyIndexError(
            f"a reader never saves (asked to save to {path}): only `img-search index` writes the saved index"
        )

    @classmethod
    def load(cls, path: Path, *, readonly: bool = True, **kwargs: Any) -> VectorIndex:
        """``open_reader`` for the backend named in ``path / "meta.json"`` (readers are always read-only)."""
        if not readonly:
            raise ReadOnlyIndexError("an IndexReader is read-only by definition; load the backend to write")
        backend = json.loads((Path(path) / "meta.json").read_text())["backend"]
        return open_reader(backend, path, **kwargs)

    def memory_bytes(self) -> int:
        return self.base.memory_bytes() + self._delta.memory_bytes() + int(self._masked.nbytes)

    def close(self) -> None:
        """Release the base index's resources now (qdrant_edge: its read-only view) instead of at collection."""
        close = getattr(self.base, "close", None)
        if close is not None:
            close()

    @property
    def masked(self) -> IdArray:
        """Ids of the saved index hidden by later ``remove`` / ``add`` calls (sorted)."""
        return self._masked


@cache
def reader_class(base_cls: type[VectorIndex]) -> type[IndexReader]:
    """The ``IndexReader`` subclass for a backend: same ``name`` and ``search_params`` as the backend."""
    return type(f"{base_cls.__name__}Reader", (IndexReader,),
                {"name": base_cls.name, "search_params": base_cls.search_params, "__doc__": IndexReader.__doc__})


def open_reader(name: str, path: Path, **load_kwargs: Any) -> VectorIndex:
    """Open the saved ``name`` index at ``path`` read-only, as an ``IndexReader`` ready to take the later changes.

    Nothing under ``path`` is written, now or later (it may be on a read-only filesystem). Raises what the backend's
    ``load`` raises (``FileNotFoundError`` for a missing index; ``BackendUnavailableError`` / ``UnknownNameError``
    from the registry).
    """
    from img_search.index import resolve_backend

    backend = resolve_backend(name)
    base = backend.load(Path(path), readonly=True, **load_kwargs)
    return reader_class(backend)(base)
