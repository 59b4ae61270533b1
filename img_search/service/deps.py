"""Typed FastAPI dependencies: what the lifespan handler opened, handed to routes (swap them in tests through
``app.dependency_overrides[get_router] = ...``). Nothing here builds a model or opens a catalog by itself.

The dependencies that only hand over ``app.state`` or decide in memory are ``async``: FastAPI runs every plain
``def`` dependency in its thread pool, one round trip per dependency and per request, which bench/http_search.py
measured as the bulk of the HTTP overhead of a search by id under concurrency (docs/PERFORMANCE.md, "Search service
over HTTP"). ``get_registry`` stays a plain ``def``: its catch-up with the catalog can take a while (off the event
loop)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import APIKeyHeader

from img_search.service.collections import CollectionRegistry, Routed, Router
from img_search.service.jobs import ServiceJobs
from img_search.service.rollout import Rollout
from img_search.service.schemas import MAX_KEY_CHARS
from img_search.service.thumbnails import Thumbnails
from img_search.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> CollectionRegistry:
    """The collections, caught up with what the catalog committed since the last request (one PRAGMA)."""
    registry: CollectionRegistry = request.app.state.registry
    registry.refresh()
    return registry


async def get_rollout(request: Request) -> Rollout:
    rollout: Rollout = request.app.state.rollout
    return rollout


async def get_router(request: Request, registry: Annotated[CollectionRegistry, Depends(get_registry)]) -> Router:
    """The router over the (refreshed) collections and the live rollout."""
    router: Router = request.app.state.router
    return router


async def get_thumbnails(request: Request) -> Thumbnails:
    thumbnails: Thumbnails = request.app.state.thumbnails
    return thumbnails


async def get_jobs(request: Request) -> ServiceJobs:
    jobs: ServiceJobs = request.app.state.jobs
    return jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[CollectionRegistry, Depends(get_registry)]
RolloutDep = Annotated[Rollout, Depends(get_rollout)]
RouterDep = Annotated[Router, Depends(get_router)]
ThumbnailsDep = Annotated[Thumbnails, Depends(get_thumbnails)]
JobsDep = Annotated[ServiceJobs, Depends(get_jobs)]


async def routed_from_query(
    router: RouterDep,
    model: Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS,
                                       description="Collection name or model; omitted: the rollout decides.")] = None,
    user_id: Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS,
                                         description="Sticky rollout bucket (hashed).")] = None,
    session_key: Annotated[str | None, Query(min_length=1, max_length=MAX_KEY_CHARS,
                                             description="Sticky bucket for anonymous callers.")] = None,
) -> Routed:
    """The collection for a request whose options are query parameters (upload, similar by id)."""
    return router.route(model, user_id=user_id, session_key=session_key)


RoutedDep = Annotated[Routed, Depends(routed_from_query)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="The service's admin key (service.api_key; IMG_SEARCH_SERVICE__API_KEY).")


def require_admin(settings: SettingsDep, key: Annotated[str | None, Depends(_api_key_header)]) -> None:
    """Admin routes: 404 when no key is configured (disabled), 401 without the header, 403 with a wrong key."""
    configured = settings.service.api_key
    if configured is None:
        raise HTTPException(404, "the admin routes are disabled: set service.api_key (IMG_SEARCH_SERVICE__API_KEY) "
                                 "to enable them")
    if not key:
        raise HTTPException(401, "this route needs the admin key in the X-API-Key header",
                            headers={"WWW-Authenticate": "X-API-Key"})
    if not secrets.compare_digest(key.encode("utf-8", "surrogateescape"),
                                  configured.get_secret_value().encode("utf-8", "surrogateescape")):
        raise HTTPException(403, "wrong admin key (X-API-Key)")
