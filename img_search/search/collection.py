"""A collection: the live vectors of one model in one index directory, searchable from many threads at once.

A ``Collection`` holds a read-only view of the model's saved search index (``search.store.VectorStore.open_reader``:
the saved generation plus, in memory, what the catalog committed since) and resolves the ids it finds to catalog
rows through one read-only SQLite connection per thread, so it can be shared by a FastAPI thread pool.
``refresh()`` picks up what an `index` run committed, without touching the model. Scores are raw cosines;
``search.searcher.Searcher`` encodes queries and owns calibration.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog, ImageRow, ModelRow
from img_search.errors import (
    CatalogError,
    CatalogNotFoundError,
    DimensionMismatchError,
    EmptyCollectionError,
    InvalidInputError,
)
from img_search.index.base import VectorIndex, topk, unit_queries
from img_search.search.filters import FilterIndex, SearchFilter
from img_search.search.store import VectorLookup, VectorStore
from img_search.settings import SearchSettings

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
# a filter that leaves at most this many images is searched exactly over their vectors (read from the catalog: a few
# milliseconds); a wider one searches the index for more than `limit` and keeps the matches (bench/filtered_search.py)
EXACT_SUBSET_MAX = 4096
OVERFETCH = 1.5  # widen the index search by 1.5x the filter's expected miss rate, then 4x per retry


@dataclass(frozen=True)
class Hit:
    """One search result: the image, its raw cosine to the query and, for calibrated text queries, the model's
    probability that image and text match (``search.calibration``); ``None`` where there is none.

    Hybrid search adds: ``score`` (what the list is ordered by: the fused score, else the probability, else the
    cosine), ``text_score`` (BM25 of the text-index match, None without one) and ``matched`` ("embedding", "text" or
    "both"); a text-only match has no cosine and no probability. ``date`` (ISO local date-time) and ``date_source``
    ("taken": EXIF capture time, "modified": the file's mtime) are filled when results are sorted by date.
    """

    path: str
    cosine: float | None
    probability: float | None
    image_id: int
    width: int | None
    height: int | None
    score: float | None = None
    text_score: float | None = None
    matched: str = "embedding"
    date: str | None = None
    date_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        score = self.score
        if score is None:
            score = self.probability if self.probability is not None else self.cosine
        return {"path": self.path, "cosine": self.cosine, "probability": self.probability,
                "image_id": self.image_id, "width": self.width, "height": self.height, "score": score,
                "text_score": self.text_score, "matched": self.matched, "date": self.date,
                "date_source": self.date_source}


def resolve_model(catalog: Catalog, model: str | None) -> ModelRow:
    """The model to search with: the one asked for, else the one the catalog holds most images of.

    Raises ``CatalogNotFoundError`` when the catalog is empty or holds nothing for ``model``.
    """
    from img_search.embedding.hf import canonical_model_id

    models = catalog.models()
    if not models:
        raise CatalogNotFoundError(
            f"the catalog at {catalog.path.parent} is empty: run `img-search index FOLDER` first")
    if model is None:
        counts = catalog.embedding_counts()
        if len(models) > 1:
            logger.info("catalog holds %d models; using the one with most images (pass --model to choose)",
                        len(models))
        return max(models, key=lambda m: (counts.get(m.id, 0), m.id))
    name = canonical_model_id(model)
    row = catalog.get_model(name)
    if row is None:
        known = ", ".join(m.name for m in models)
        raise CatalogNotFoundError(f"nothing is indexed with model {name!r}; indexed models: {known}")
    return row


def check_limit(limit: Any) -> int:
    """``limit`` as a positive int, or ``InvalidInputError``. Any size is served: a search returns what exists."""
    if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
        raise InvalidInputError(f"limit must be a whole number >= 1, got {limit!r}")
    return int(limit)


def check_threshold(threshold: Any) -> float | None:
    """``threshold`` as a finite float (or None), or ``InvalidInputError``. Out-of-range values are served (a
    probability threshold above 1 simply matches nothing)."""
    if threshold is None:
        return None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidInputError(f"threshold must be a number, got {threshold!r}") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"threshold must be a finite number, got {threshold!r}")
    return value


@dataclass(frozen=True)
class _View:
    index: VectorIndex
    backend: str
    generation: str | None
    vectors: VectorLookup | None = None


class Collection:
    """The live vectors of one model, behind a read-only ``VectorIndex``; safe to share between threads.

    ``connect`` opens a read-only ``Catalog`` (called once per thread that resolves hits). Pass ``index`` to inject
    a ready ``VectorIndex`` instead of opening the saved one (tests, evaluations).
    """

    def __init__(self, connect: Callable[[], Catalog], model: ModelRow, search: SearchSettings | None = None, *,
                 index: VectorIndex | None = None) -> None:
        if model.dim is None:
            raise CatalogError(f"model {model.name!r} has no recorded dimension; re-run `img-search index`")
        self.model = model
        self.search_settings = search or SearchSettings()
        self._connect = connect
        self._local = threading.local()
        self._refresh_lock = threading.Lock()
        self._watch = connect()  # the connection whose data_version tells when the catalog moved on
        self._seen_version = self._watch.data_version()
        self._fixed = index is not None
        self._view = _View(index, index.name, None) if index is not None else self._open_view()
        self._filters: tuple[_View, FilterIndex] | None = None
        self._filters_lock = threading.Lock()
        self._own_text: tuple[_View, bool] | None = None

    @classmethod
    def open(cls, index_dir: Path, model: str | None = None, search: SearchSettings | None = None) -> Collection:
        """The collection of ``model`` (default: the catalog's main model) in ``index_dir``, opened read-only."""
        index_dir = Path(index_dir)

        def connect() -> Catalog:
            return Catalog.in_dir(index_dir, readonly=True)

        catalog = connect()
        try:
            row = resolve_model(catalog, model)
        finally:
            catalog.close()
        return cls(connect, row, search)

    # ------------------------------------------------------------------ state
    def _open_view(self) -> _View:
        store = VectorStore(self._watch.path.parent, self._watch, self.model, self.search_settings)
        view = store.open_view()
        return _View(view.index, view.backend, view.generation, view.vectors)

    @property
    def index(self) -> VectorIndex:
        return self._view.index

    @property
    def backend(self) -> str:
        return self._view.backend

    @property
    def generation(self) -> str | None:
        """The saved generation this view reads (None: built in memory, or injected)."""
        return self._view.generation

    def catalog(self) -> Catalog:
        """This thread's read-only catalog connection."""
        catalog: Catalog | None = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = self._connect()
        return catalog

    def refresh(self) -> bool:
        """Pick up what `index` committed since the view was opened; True when the view changed.

        Cheap when nothing changed (one ``PRAGMA data_version``). Searches running meanwhile finish on the view they
        started with; the swap is a single reference assignment.
        """
        if self._fixed:
            return False
        with self._refresh_lock:
            version = self._watch.data_version()
            if version == self._seen_version:
                return False
            # a newer img-search may have upgraded the catalog under us: refuse, keep serving the view we have
            self._watch.check_version()
            self._view = self._open_view()
            self._seen_version = version
            return True

    def __len__(self) -> int:
        return len(self._view.index)

    # ------------------------------------------------------------------ filters
    def filter_index(self) -> FilterIndex:
        """The filterable columns of the live images (``search.filters.FilterIndex``), built on first use and again
        after a ``refresh`` that changed the view."""
        view = self._view
        cached = self._filters
        if cached is not None and cached[0] is view:
            return cached[1]
        with self._filters_lock:
            cached = self._filters
            if cached is None or cached[0] is not view:
                cached = self._filters = (view, FilterIndex.from_rows(self.catalog().filter_rows()))
        return cached[1]

    def has_own_text(self) -> bool:
        """Whether the collection holds text of its own (``Catalog.has_own_text``), checked once per view."""
        view, cached = self._view, self._own_text
        if cached is None or cached[0] is not view:
            cached = self._own_text = (view, self.catalog().has_own_text())
        return cached[1]

    def allowed_ids(self, flt: SearchFilter | None) -> NDArray[np.int64] | None:
        """The ids (int64, ascending) of the live images that pass ``flt``; None when there is no filter."""
        if flt is None or not flt:
            return None
        tagged = self.catalog().image_ids_with_tags(flt.tags) if flt.tags else None
        return self.filter_index().allowed(flt, tagged)

    def close(self) -> None:
        """Release the index (a read-only view's private files) and this thread's catalog connection."""
        close = getattr(self._view.index, "close", None)
        if callable(close):
            close()
        catalog = getattr(self._local, "catalog", None)
        if catalog is not None:
            catalog.close()
            self._local.catalog = None
        self._watch.close()

    # ------------------------------------------------------------------ search
    def search(self, queries: NDArray[np.float32], *, limit: int = DEFAULT_LIMIT,
               exclude_ids: frozenset[int] = frozenset(), allowed: NDArray[np.int64] | None = None
               ) -> list[list[tuple[ImageRow, float]]]:
        """For each query row of ``queries`` (float32, (n, dim)), up to ``limit`` (row, cosine) pairs, best first.

        Asking for more hits than exist returns what exists (the search is sized by the collection, not by
        ``limit``). Deleted images never appear. ``allowed`` (int64 ids, ``allowed_ids``) restricts the search to
        those images inside the search, so ``limit`` matching hits come back whenever that many exist: a narrow
        filter (<= ``EXACT_SUBSET_MAX`` images) is scored exactly over its own vectors, a wide one searches the index
        for more than ``limit`` and keeps the matches, widening until enough are found.
        Raises ``EmptyCollectionError``, ``DimensionMismatchError``, ``InvalidInputError`` (limit).
        """
        limit = check_limit(limit)
        view = self._view
        n = len(view.index)
        if n == 0:
            raise EmptyCollectionError(f"no images are indexed with model {self.model.name!r}")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[-1] != self.model.dim:
            raise DimensionMismatchError(
                f"query vectors have shape {queries.shape} but the collection's model gives {self.model.dim} dims"
            )
        k = min(limit + len(exclude_ids), n)
        if allowed is not None:
            ids, scores = self._search_allowed(view, queries, k, allowed)
        else:
            ids, scores = view.index.search(queries, k)
        rows = self.catalog().images_by_id({int(i) for i in ids.reshape(-1) if i >= 0}, live_only=True)
        results: list[list[tuple[ImageRow, float]]] = []
        for qi in range(ids.shape[0]):
            hits: list[tuple[ImageRow, float]] = []
            for image_id, cos in zip(ids[qi].tolist(), scores[qi].tolist(), strict=True):
                row = rows.get(image_id)
                if row is None or image_id in exclude_ids:
                    continue
                hits.append((row, float(cos)))
                if len(hits) == limit:
                    break
            results.append(hits)
        return results

    def _search_allowed(self, view: _View, queries: NDArray[np.float32], k: int,
                        allowed: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Top-``k`` of each query among the ``allowed`` ids: (ids, scores), (n_queries, <= k), padded with -1."""
        index = view.index
        n_q, n, n_allowed = queries.shape[0], len(index), len(allowed)
        k = min(k, n_allowed)
        if k == 0:
            return np.full((n_q, 0), -1, np.int64), np.empty((n_q, 0), np.float32)
        if n_allowed <= EXACT_SUBSET_MAX:
            ids, vectors = self._vectors_of(allowed, view)
            if len(ids) == 0:
                return np.full((n_q, 0), -1, np.int64), np.empty((n_q, 0), np.float32)
            scores = unit_queries(queries) @ vectors.T
            cols, best = topk(scores, min(k, len(ids)))
            return ids[cols], best.astype(np.float32)
        kk = min(n, int(np.ceil(k * OVERFETCH * n / n_allowed)) + 16)
        # membership by table lookup (ids are SQLite rowids: small, dense) instead of np.isin's sort per search
        table = np.zeros(int(allowed[-1]) + 2, np.bool_)
        table[allowed] = True
        while True:
            found_ids, found_scores = index.search(queries, kk)
            keep = table[np.clip(found_ids, -1, len(table) - 1)] & (found_ids >= 0)
            if kk >= n or int(keep.sum(axis=1).min()) >= k:
                break
            kk = min(n, kk * 4)
        out_ids = np.full((n_q, k), -1, np.int64)
        out_scores = np.full((n_q, k), -np.inf, np.float32)
        for qi in range(n_q):
            row_ids, row_scores = found_ids[qi][keep[qi]][:k], found_scores[qi][keep[qi]][:k]
            out_ids[qi, : len(row_ids)], out_scores[qi, : len(row_ids)] = row_ids, row_scores
        return out_ids, out_scores

    def _vectors_of(self, ids: NDArray[np.int64], view: _View) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """The stored vectors of ``ids`` (those still live: an image removed meanwhile is left out): from the view's
        memory-mapped matrix, else (a generation saved before it was kept) from the catalog."""
        if view.vectors is not None:
            return view.vectors.get(ids)
        return self.catalog().live_vectors(self.model.id, self.model.dim or 0, ids.tolist())
