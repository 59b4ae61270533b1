"""``GET /api/v1/images/{id}`` (catalog metadata) and ``GET /api/v1/images/{id}/thumbnail``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Path, Response

from img_search.errors import NotFoundError
from img_search.service.deps import RegistryDep, ThumbnailsDep
from img_search.service.schemas import MAX_IMAGE_ID, ImageInfo, error_responses

router = APIRouter(prefix="/api/v1/images", tags=["images"])

ImageId = Annotated[int, Path(ge=0, le=MAX_IMAGE_ID, description="Catalog image id.")]
THUMBNAIL_MAX_AGE_S = 86_400  # a thumbnail changes only with its file's content, which changes its ETag


@router.get("/{image_id}", response_model=ImageInfo, responses=error_responses(404, 422, 503),
            summary="A catalog image's metadata")
def image_info(image_id: ImageId, registry: RegistryDep) -> ImageInfo:
    """The catalog row of image ``image_id`` (any status: ok, error with its reason, deleted) and the collections
    that hold a vector of it."""
    catalog = registry.catalog()
    row = catalog.images_by_id([image_id]).get(image_id)
    if row is None:
        raise NotFoundError(f"no image has id {image_id} in the catalog")
    collections = []
    if row.content_hash is not None and row.status == "ok":
        collections = [s.name for s in registry.served()
                       if catalog.vector_for(s.model.id, row.content_hash) is not None]
    modified = (dt.datetime.fromtimestamp(row.mtime_ns / 1e9, dt.UTC).isoformat(timespec="seconds")
                if row.mtime_ns is not None else None)
    live = row.status == "ok"
    return ImageInfo(
        id=row.id, path=row.path, status=row.status, error=row.error, size_bytes=row.size, modified=modified,
        width=row.width, height=row.height, content_hash=row.content_hash.hex() if row.content_hash else None,
        collections=collections, thumbnail_url=f"/api/v1/images/{row.id}/thumbnail" if live else None,
        similar_url=f"/api/v1/images/{row.id}/similar" if live else None,
    )


@router.get("/{image_id}/thumbnail", response_class=Response, summary="A catalog image's thumbnail (JPEG)",
            responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "JPEG, longest side service.thumbnail_size pixels"},
                       **error_responses(404, 409, 422, 503)})
def thumbnail(image_id: ImageId, registry: RegistryDep, thumbnails: ThumbnailsDep) -> Response:
    """Made once from the catalog's file (only while its bytes are the ones indexed: 409 otherwise) and cached;
    deleted or failed images are 404."""
    row = registry.catalog().images_by_id([image_id]).get(image_id)
    thumb = thumbnails.get(row, image_id)
    return Response(thumb.data, media_type=thumb.media_type,
                    headers={"ETag": thumb.etag, "Cache-Control": f"public, max-age={THUMBNAIL_MAX_AGE_S}"})
