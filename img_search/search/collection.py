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
from img_search.index.base import (
    VectorIndex,
    empty_results,
    overfetch_filtered,
    overfetch_k,
    score_rows,
    unit_queries,
)
from img_search.search import compact as compact_mod
from img_search.search.filters import FilterIndex, SearchFilter
from img_search.search.store import VectorLookup, VectorStore
from img_search.settings import SearchSettings

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10

# ---------------------------------------------------------------------------------------------- filtered-search plan
# A search restricted to a filter's ids (``Collection._search_allowed``) is answered one of three ways, whichever the
# cost model below expects to be cheapest at the 99th percentile:
#   "exact"     score the allowed vectors exactly: the generation's memory-mapped vectors.npy read in ascending row
#               order, one query on one thread (``VectorLookup.top_k``), after a first pass over its int8 copy
#               (``search.compact``) where the generation has one and numkong is installed; else, for a generation
#               saved before vectors.npy was kept or an injected index, the catalog's blobs (~45 us per vector);
#   "filtered"  the backend's own filtered search, ``index.search(q, k, allowed=ids)``;
#   "overfetch" the unfiltered search for k * 1.5 / share + 16 hits, keeping the allowed ones, 4x wider per retry.
# Costs in microseconds, fitted to the 99th percentiles measured on the project's 2-core machine (load average 1.3-4.6)
# over 100,000 random 768-d vectors, 150 interleaved single queries per point (`bench/filtered_search.py --sweep`,
# docs/PERFORMANCE.md "Filtered search"):
#   exact from vectors.npy (``VectorLookup.top_k``): 0.4 ms at 100 ids, 1.3-3.5 ms at 1,000, 2.5 ms at 3,000, 3-5 ms at
#     5,000, 4.6-5.9 ms at 8,000, 7-9 ms at 12,000 -> EXACT_FIXED_US + EXACT_ROW_NS_PER_DIM * dim per id (~0.5 us per
#     768-d row: rows come from the page cache, memory bound);
#   exact with the int8 first pass (one query, >= 512 ids; ``search.compact``, load average 1.3-3.1): 0.75 ms at
#     1,000 ids, 1.2 ms at 3,000, 1.6 ms at 5,000, 1.9 ms at 8,000, 3.4 ms at 12,000, 4.9 ms at 20,000 ->
#     EXACT_FIXED_US + EXACT_COMPACT_ROW_NS_PER_DIM * dim per id (~0.23 us per 768-d row) + the float32 cost of the
#     candidate_count(k) rows re-scored;
#   over-fetch, per backend (OVERFETCH_COST: fixed + per hit asked, k' = 1.5 k / share + 16):
#     qdrant_edge (m 16, ef 128; re-scores 2x oversampled INT8 candidates): k' 46 -> 0.7-1.0 ms, 91 -> 1.4-4.1 ms,
#       141 -> 6-7 ms, 204 -> 6-9 ms, 316 -> 10-13 ms, 516 -> 19-22 ms, 1,516 -> 48-57 ms;
#     faiss HNSW (M 16, ef 128): 5.8-8 ms (the unfiltered p99 on that run: 5.5) from k' 46 to 516, nearly flat;
#   the backends' own filtered searches were never the cheapest: faiss's IDSelectorBitmap walk 4-11 ms (its bitmap
#     is built per query), Qdrant Edge's is itself an over-fetch or an exact scan (index/qdrant_edge_index.py),
#     hnswlib's filter calls Python for each node it visits (45 ms at 5 %: 9,400 calls a query, against 8 ms for
#     the over-fetch). FILTERED_COST holds the backends whose own filtered search the planner may choose: none yet.
# With qdrant_edge (the default) exact and over-fetch meet near 10 % of 100,000 ids (near 17 % with the int8 pass;
# measured a tie at 20 %); with faiss near 3 % (near 6 % with the int8 pass, by the model: not measured).
EXACT_FIXED_US = 300.0
EXACT_ROW_NS_PER_DIM = 0.65  # 0.5 us per 768-d float32 row
EXACT_COMPACT_ROW_NS_PER_DIM = 0.3  # 0.23 us per 768-d int8 row (gather + numkong's dot product)
CATALOG_ROW_US = 45.0  # a vector read back from SQLite (a 3 KB blob in a WITHOUT ROWID B-tree)
# backend -> (fixed us, us per hit asked) of an over-fetch; unmeasured backends get qdrant_edge's, the steepest
OVERFETCH_COST: dict[str, tuple[float, float]] = {"qdrant_edge": (1000.0, 30.0), "faiss": (1500.0, 1.0)}
DEFAULT_OVERFETCH_COST = OVERFETCH_COST["qdrant_edge"]
# exact scoring is never planned above this many ids (its memory is bounded by VectorLookup's blocks, its time grows
# linearly: 50,000 ids take ~25-35 ms); a test lowers it to force the other paths
EXACT_SUBSET_MAX = 65_536
# backend -> cost in us of its own filtered search for (n live, n allowed, k); measured and cheapest somewhere only
FILTERED_COST: dict[str, Callable[[int, int, int], float]] = {}
STRATEGIES = ("exact", "filtered", "overfetch")


def plan_filtered_search(n: int, n_allowed: int, k: int, dim: int, *, has_vectors: bool, backend: str,
                         compact: bool = False) -> str:
    """"exact", "filtered" or "overfetch": the cheapest expected way (cost model above, microseconds at p99) to find
    the top ``k`` of ``n_allowed`` ids among ``n`` live ``dim``-d vectors; ``has_vectors``: the view has the saved
    vectors in memory (else exact scoring reads the catalog); ``compact``: exact scoring starts with the int8 pass
    (``search.compact``); ``backend``: whose own filtered search to consider."""
    costs: dict[str, float] = {}
    if n_allowed <= EXACT_SUBSET_MAX:
        per_row = EXACT_ROW_NS_PER_DIM * dim / 1000 if has_vectors else CATALOG_ROW_US
        n_cand = compact_mod.candidate_count(k)
        if has_vectors and compact and compact_mod.worth_it(n_allowed, k):
            costs["exact"] = EXACT_FIXED_US + EXACT_COMPACT_ROW_NS_PER_DIM * dim / 1000 * n_allowed + per_row * n_cand
        else:
            costs["exact"] = EXACT_FIXED_US + per_row * n_allowed
    filtered_cost = FILTERED_COST.get(backend)
    if filtered_cost is not None:
        costs["filtered"] = filtered_cost(n, n_allowed, k)
    fixed, per_hit = OVERFETCH_COST.get(backend, DEFAULT_OVERFETCH_COST)
    costs["overfetch"] = fixed + per_hit * overfetch_k(k, n_allowed, n)
    return min(costs, key=costs.__getitem__)


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
        from img_search.catalog.lock import writer_active

        if writer_active(catalog.path.parent):
            raise CatalogNotFoundError(
                f"the catalog at {catalog.path.parent} has no vectors yet: an `img-search index` run is writing it "
                "(its first batch is not committed); search again in a moment")
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
    """``threshold`` as a float within [0, 1] (or None), or ``InvalidInputError``.

    It is compared with a calibrated probability (SigLIP text queries) or a cosine (CLIP, image queries): outside
    [0, 1] it would match everything or nothing, so it is refused rather than silently returning no results."""
    if threshold is None:
        return None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidInputError(f"threshold must be a number, got {threshold!r}") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"threshold must be a finite number, got {threshold!r}")
    if not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"threshold must be within [0, 1] (a probability or cosine), got {threshold!r}")
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

    # force one way of answering filtered searches ("exact", "filtered", "overfetch"; None: plan by cost)
    filter_strategy: str | None = None

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
        filter is scored exactly over its own vectors, a wide one searches the index for more than ``limit`` and keeps
        the matches, widening until enough are found (``plan_filtered``: by a measured cost model).
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

    def plan_filtered(self, n_allowed: int, k: int, view: _View | None = None, n_queries: int = 1) -> str:
        """Which way a search of ``n_queries`` queries for ``k`` hits among ``n_allowed`` ids is answered
        (``plan_filtered_search``); ``filter_strategy`` set on the collection overrides it (benchmarks, tests)."""
        if self.filter_strategy is not None:
            return self.filter_strategy
        view = view or self._view
        vectors = view.vectors
        # VectorLookup.top_k takes the int8 first pass for one query at a time only
        compact = (n_queries == 1 and vectors is not None and vectors.compact is not None and vectors.use_compact
                   and compact_mod.kernel() is not None)
        return plan_filtered_search(len(view.index), n_allowed, k, int(self.model.dim or 0),
                                    has_vectors=vectors is not None, backend=view.backend, compact=compact)

    def _search_allowed(self, view: _View, queries: NDArray[np.float32], k: int,
                        allowed: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Top-``k`` of each query among the ``allowed`` ids (int64, ascending): (ids, scores), (n_queries, k),
        padded with -1 / -inf, answered as ``plan_filtered`` chooses."""
        index = view.index
        n_q, n, n_allowed = queries.shape[0], len(index), len(allowed)
        k = min(k, n_allowed)
        if k == 0:
            return np.full((n_q, 0), -1, np.int64), np.empty((n_q, 0), np.float32)
        plan = self.plan_filtered(n_allowed, k, view, n_q)
        logger.debug("filtered search: %d of %d ids, k %d -> %s", n_allowed, n, k, plan)
        if plan == "exact":
            q = unit_queries(np.ascontiguousarray(queries, np.float32))
            if view.vectors is not None:
                return view.vectors.top_k(q, allowed, k)
            ids, vectors = self.catalog().live_vectors(self.model.id, self.model.dim or 0, allowed.tolist())
            if len(ids) == 0:
                return empty_results(n_q, k)
            return score_rows(q, np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64), k)
        if plan == "filtered":
            return index.search(queries, k, allowed=allowed)
        return overfetch_filtered(lambda qq, kk: index.search(qq, kk), queries, k, allowed, n)
