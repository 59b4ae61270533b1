"""``POST /api/v1/search`` (text), ``POST /api/v1/search/image`` (upload) and ``GET /api/v1/images/{id}/similar``.

The routes are ``async`` and hand only the search itself (catalog reads, the index, the model) to the thread pool:
one round trip per request, where plain ``def`` routes and dependencies cost one per dependency, one for the route
and one more for validating its response (bench/http_search.py; docs/PERFORMANCE.md)."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Path, Query, UploadFile
from fastapi.concurrency import run_in_threadpool

from img_search.search.collection import DEFAULT_LIMIT, Hit
from img_search.search.searcher import SearchOptions
from img_search.service.collections import Routed
from img_search.service.deps import RoutedDep, RouterDep
from img_search.service.queries import search_by_id, search_upload
from img_search.service.schemas import (
    DATE_PATTERN,
    MAX_IMAGE_ID,
    MAX_KEY_CHARS,
    MAX_LIMIT,
    NEAR_PATTERN,
    SIZE_PATTERN,
    UPLOAD_PATH,
    Routing,
    SearchHit,
    SearchRequest,
    SearchResponse,
    error_responses,
)

router = APIRouter(prefix="/api/v1", tags=["search"])

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"How many hits to return (1-{MAX_LIMIT}).")]
ThresholdQuery = Annotated[float | None, Query(allow_inf_nan=False, description="Drop hits below this cosine.")]
ImageId = Annotated[int, Path(ge=0, le=MAX_IMAGE_ID, description="Catalog image id.")]
_Text = Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS)]
_Texts = Annotated[list[str] | None, Query(max_length=32)]


async def image_query_options(
    after: Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS, pattern=DATE_PATTERN,
                                       description="Taken on or after (YYYY-MM-DD).")] = None,
    before: Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS, pattern=DATE_PATTERN,
                                        description="Taken before (YYYY-MM-DD).")] = None,
    near: Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS, pattern=NEAR_PATTERN,
                                      description="LAT,LON,RADIUS (km, m or mi).")] = None,
    camera: _Texts = None,
    folder: _Texts = None,
    tag: _Texts = None,
    has_text: bool | None = None,
    min_size: Annotated[str | None, Query(max_length=MAX_KEY_CHARS, pattern=SIZE_PATTERN,
                                          description="WIDTHxHEIGHT or N pixels at least.")] = None,
    sort: Literal["score", "date"] = "score",
) -> SearchOptions:
    """The filters and sort of an image query, from query parameters (lists repeat the parameter)."""
    from img_search.search.filters import build_filter

    # the library validates (InvalidInputError -> 422) and drops blank values (`?camera=`)
    flt = build_filter(after=after, before=before, near=near, cameras=camera or (), folders=folder or (),
                       tags=tag or (), has_text=has_text, min_size=min_size)
    return SearchOptions(filter=flt or None, sort=sort)


ImageOptions = Annotated[SearchOptions, Depends(image_query_options)]


def _response(routed: Routed, hits: list[Hit], started: float) -> SearchResponse:
    model, name = routed.served.model.name, routed.served.name
    d = routed.decision
    return SearchResponse(
        model=model, collection=name, hits=[SearchHit.of(h, model, name) for h in hits],
        routing=Routing(collection=d.collection, rule=d.rule, reason=d.reason, bucket=d.bucket, sticky_by=d.sticky_by,
                        percentage=d.percentage, forced=d.forced),
        took_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@router.post("/search", response_model=SearchResponse, responses=error_responses(404, 409, 413, 422, 503),
             summary="Text -> image search")
async def search(body: SearchRequest, router_: RouterDep) -> SearchResponse:
    """The indexed images that best match ``query``, with the calibrated probability where the model has one.
    The collection is the one named by ``model``, else the SigLIP rollout's pick (see ``routing``)."""
    started = time.perf_counter()
    routed = router_.route(body.model, user_id=body.user_id, session_key=body.session_key)
    hits = await run_in_threadpool(routed.searcher.search_text, body.query, limit=body.limit,
                                   threshold=body.threshold, options=body.options())
    return _response(routed, hits, started)


@router.post(UPLOAD_PATH.removeprefix("/api/v1"), response_model=SearchResponse,
             responses=error_responses(404, 409, 413, 422, 503), summary="Image -> image search (upload)")
async def search_image(
    file: Annotated[UploadFile, File(description="An image file (JPEG, PNG, WebP, HEIC, ...). The whole request "
                                                 "may not exceed service.max_upload_bytes (default 20 MiB).")],
    routed: RoutedDep,
    options: ImageOptions,
    limit: LimitQuery = DEFAULT_LIMIT,
    threshold: ThresholdQuery = None,
) -> SearchResponse:
    """Images similar to the uploaded one (cosine; no probability). A body over the size limit is refused from
    its Content-Length, or as soon as more bytes arrive than the limit, before it is read whole (413); a file
    that is not an image is a 422."""
    started = time.perf_counter()
    data = await file.read()  # bounded: the body limit stopped anything larger while it was being received
    hits = await run_in_threadpool(search_upload, routed.searcher, data, limit=limit, threshold=threshold,
                                   options=options)
    return _response(routed, hits, started)


@router.get("/images/{image_id}/similar", response_model=SearchResponse,
            responses=error_responses(404, 409, 422, 503), summary="Images similar to a catalog image")
async def similar(image_id: ImageId, routed: RoutedDep, options: ImageOptions, limit: LimitQuery = DEFAULT_LIMIT,
                  threshold: ThresholdQuery = None) -> SearchResponse:
    """Images similar to catalog image ``image_id`` by its stored vector (no model run), itself left out."""
    started = time.perf_counter()
    hits = await run_in_threadpool(search_by_id, routed.searcher, image_id, limit=limit, threshold=threshold,
                                   options=options)
    return _response(routed, hits, started)
