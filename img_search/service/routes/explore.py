"""``GET /api/v1/map`` (the collection's stored UMAP layout), ``POST /api/v1/map`` (make or update it) and
``GET /api/v1/duplicates`` (groups of near-identical images): the explore commands' library functions
(``explore.umap_map``, ``explore.duplicates``) over HTTP, for the web UI's map and duplicates pages. The explore
modules are imported when a route runs (umap and numba load only for a fit).

Errors are the library's: ``EmptyCollectionError`` (nothing indexed) and unknown names 404, another process updating
the same map 409 (``ConflictError``), a read-only index directory 503, bad parameters and a collection too small to
map (``MapTooSmallError``, as ``img-search map`` says it) 422.

Both work on one collection: the one named by ``model`` (a collection name, or the model's Hub id / path), else the
collection with most points (``CollectionRegistry.main``), never a random pick of the rollout, so that a page
reloaded shows the same layout.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Annotated

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from img_search.errors import EmptyCollectionError, NotFoundError
from img_search.service.collections import CollectionRegistry, Served
from img_search.service.deps import RegistryDep
from img_search.service.schemas import MAX_KEY_CHARS, error_responses

if TYPE_CHECKING:
    from img_search.explore.umap_map import MapLayout

router = APIRouter(prefix="/api/v1", tags=["explore"])

MAX_DUPLICATE_K = 1000  # neighbours asked per vector, as settings.ExploreSettings.duplicate_neighbours allows
DEFAULT_GROUPS = 200
MAX_GROUPS = 10_000
COORD_DECIMALS = 5  # degrees: ~1 m on the globe, far below what a screen shows; keeps the JSON small

ModelQuery = Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS,
                                         description="Collection name or model; omitted: the collection with most "
                                                     "images.")]
_update_lock = threading.Lock()  # one layout update at a time in this process (a fit takes seconds to minutes)


class MapResponse(BaseModel):
    """A collection's UMAP layout on the globe: point ``i`` is image ``image_ids[i]`` at (``latitude[i]``,
    ``longitude[i]``), decimal degrees (UMAP with a haversine output metric; ``explore.umap_map``)."""

    model: str
    collection: str
    points: int = Field(description="Images on the map.")
    missing: int = Field(description="Live images of the collection not on the map yet (indexed since the layout "
                                     "was last updated: POST /api/v1/map places them).")
    image_ids: list[int]
    latitude: list[float] = Field(description="Degrees, -90..90.")
    longitude: list[float] = Field(description="Degrees, -180..180.")
    took_ms: float


class DuplicateGroupOut(BaseModel):
    """Near-identical images: every one is joined to another of the group by a cosine at least the threshold."""

    image_ids: list[int]
    paths: list[str]
    size: int
    min_cosine: float = Field(description="Lowest cosine between two members (single linkage: may be below the "
                                          "threshold when A ~ B ~ C).")
    max_cosine: float = Field(description="Highest cosine between two members.")
    exact_pairs: bool = Field(description="Whether min/max cover every pair of the group (groups of at most 1024), "
                                          "else only the pairs that linked it.")


class DuplicatesResponse(BaseModel):
    model: str
    collection: str
    threshold: float
    k: int
    total_groups: int = Field(description="Groups found; ``groups`` holds the first ``limit``, largest first.")
    groups: list[DuplicateGroupOut]
    took_ms: float


def _served(registry: CollectionRegistry, model: str | None) -> Served:
    if model is not None:
        return registry.get(model)
    main = registry.main()
    if main is None:
        raise EmptyCollectionError(f"nothing is indexed in {registry.settings.index_dir} that can be shown: run "
                                   "`img-search index FOLDER` first")
    return main


def _map_response(served: Served, layout: MapLayout, started: float) -> MapResponse:
    # images deleted since the layout was made are left out; live ones not on it yet are counted
    collection = served.usable().collection
    all_ids = np.asarray(layout.image_ids, dtype=np.int64)
    live = collection.index.contains(all_ids) if len(all_ids) else np.zeros(0, dtype=bool)
    ids = all_ids[live]
    return MapResponse(
        model=served.model.name, collection=served.name, points=len(ids),
        missing=max(0, len(collection) - len(ids)), image_ids=ids.tolist(),
        latitude=np.round(np.asarray(layout.latitude, dtype=np.float64)[live], COORD_DECIMALS).tolist(),
        longitude=np.round(np.asarray(layout.longitude, dtype=np.float64)[live], COORD_DECIMALS).tolist(),
        took_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@router.get("/map", response_model=MapResponse, responses=error_responses(404, 409, 422, 503),
            summary="The collection's UMAP layout (latitude / longitude)")
def map_layout(registry: RegistryDep, model: ModelQuery = None) -> MapResponse:
    """The stored layout of the collection, as ``img-search map`` or ``POST /api/v1/map`` last made it (404 while
    there is none). Nothing is computed: images indexed since are counted in ``missing``, deleted ones left out."""
    from img_search.explore.umap_map import load_map

    started = time.perf_counter()
    served = _served(registry, model)
    served.usable()
    layout = load_map(registry.settings.index_dir, served.model)
    if layout is None:
        raise NotFoundError(f"collection {served.name!r} has no map yet: run `img-search map`, or POST "
                            "/api/v1/map (the map page's \"Update the map\")")
    return _map_response(served, layout, started)


@router.post("/map", response_model=MapResponse, responses=error_responses(404, 409, 422, 503),
             summary="Make or update the collection's UMAP layout")
def update_map_layout(registry: RegistryDep, model: ModelQuery = None) -> MapResponse:
    """Brings the layout up to date, as ``img-search map`` does (``explore.umap_map.update_map``): fits UMAP when
    there is no map or the collection grew past ``explore.map_growth_factor`` (default 2x) the fitted points (seconds
    to minutes: the request waits), else places the images indexed since with the stored model's ``transform``
    (seconds), else changes nothing. One update at a time per process (others wait); another process updating
    the same map: 409. A collection of fewer than 8 images (UMAP's minimum, ``explore.sphere.MIN_FIT_POINTS``): 422,
    nothing written. A refit on demand is the CLI's (``img-search map --refit``)."""
    from img_search.explore.umap_map import check_mappable, update_map

    started = time.perf_counter()
    served = _served(registry, model)
    searcher = served.usable()
    check_mappable(searcher.collection)  # too few images for UMAP: 422, as `img-search map` refuses them (exit 2)
    with _update_lock:
        layout = update_map(registry.settings.index_dir, searcher.collection,
                            growth_factor=registry.settings.explore.map_growth_factor)
    return _map_response(served, layout, started)


@router.get("/duplicates", response_model=DuplicatesResponse, responses=error_responses(404, 409, 422, 503),
            summary="Groups of near-identical images")
def duplicates(
    registry: RegistryDep,
    threshold: Annotated[float | None, Query(ge=-1.0, le=1.0, allow_inf_nan=False,
                                             description="Cosine at least this joins two images (default "
                                                         "explore.duplicate_threshold: 0.95).")] = None,
    k: Annotated[int | None, Query(ge=1, le=MAX_DUPLICATE_K, description="Neighbours looked at per image (default "
                                                                          "explore.duplicate_neighbours: 10).")
                 ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_GROUPS, description="Groups to return, largest first.")
                     ] = DEFAULT_GROUPS,
    model: ModelQuery = None,
) -> DuplicatesResponse:
    """Each image's ``k`` nearest neighbours through the collection's index; pairs at or above ``threshold``
    joined into groups, largest first (``explore.duplicates.find_duplicates``)."""
    from img_search.explore.duplicates import find_duplicates

    started = time.perf_counter()
    settings = registry.settings.explore
    threshold = settings.duplicate_threshold if threshold is None else threshold
    k = settings.duplicate_neighbours if k is None else k
    served = _served(registry, model)
    groups = find_duplicates(served.usable().collection, threshold=threshold, k=k)
    out = [DuplicateGroupOut(image_ids=[int(i) for i in g.image_ids], paths=list(g.paths), size=len(g.image_ids),
                             min_cosine=float(g.min_cosine), max_cosine=float(g.max_cosine),
                             exact_pairs=bool(g.exact_pairs))
           for g in groups[:limit]]
    return DuplicatesResponse(model=served.model.name, collection=served.name, threshold=threshold, k=k,
                              total_groups=len(groups), groups=out,
                              took_ms=round((time.perf_counter() - started) * 1000, 3))
