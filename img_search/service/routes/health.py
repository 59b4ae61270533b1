"""``GET /api/v1/health``: what is served, from where, and how the rollout stands."""

from __future__ import annotations

import os

from fastapi import APIRouter

from img_search import __version__
from img_search.errors import CatalogNotFoundError
from img_search.service.deps import RegistryDep, RouterDep
from img_search.service.schemas import CollectionStatus, HealthResponse, RolloutStatus, error_responses

router = APIRouter(prefix="/api/v1", tags=["health"])


@router.get("/health", response_model=HealthResponse, responses=error_responses(503), summary="Service status")
def health(registry: RegistryDep, router_: RouterDep) -> HealthResponse:
    """``ok`` when something is searchable, ``empty`` before anything is indexed, ``degraded`` when a collection
    cannot be served (its ``problem`` says why). Always 200 while the process answers."""
    index_dir = registry.settings.index_dir
    try:
        catalog = registry.catalog()
        images, immutable = catalog.status_counts(), catalog.immutable
    except CatalogNotFoundError:
        images, immutable = {}, False
    served = registry.served()
    collections = [CollectionStatus(**s.status()) for s in served]
    status = ("empty" if not any(s.points for s in served) else
              "degraded" if any(c.problem for c in collections) else "ok")
    return HealthResponse(
        status=status, version=__version__, index_dir=str(index_dir),
        read_only=immutable or (index_dir.exists() and not os.access(index_dir, os.W_OK)), images=images,
        models=[s.model.name for s in served], collections=collections,
        rollout=RolloutStatus(**router_.status()), max_upload_bytes=registry.settings.service.max_upload_bytes,
    )
