"""The FastAPI application: ``create_app(settings)``; nothing is opened or loaded until its lifespan starts.

The lifespan handler opens one warm ``Searcher`` per indexed model (``CollectionRegistry``; models loaded at start
unless ``service.preload_models`` is off), the rollout state from the settings, the router and the thumbnail
cache, and keeps them in ``app.state`` for the typed dependencies of ``service.deps``.

Errors: the library's typed errors are translated in ONE handler through ``errors.http_status`` (invalid input
422, not found 404, conflict 409, unavailable 503); request validation (a bad field, malformed JSON) is a 422, a
body over the size limit a 413, and every answer, 500 included, is an ``ErrorResponse`` JSON body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from img_search import __version__
from img_search.errors import (
    ConflictError,
    ImgSearchError,
    InvalidInputError,
    NotFoundError,
    UnavailableError,
    http_status,
)
from img_search.service.collections import CollectionRegistry, Router, SearcherOpener, default_opener
from img_search.service.rollout import Rollout
from img_search.service.schemas import MAX_JSON_BODY_BYTES, UPLOAD_PATH
from img_search.service.thumbnails import Thumbnails
from img_search.settings import Settings

logger = logging.getLogger("img_search.service")

API_DESCRIPTION = """Semantic image search over an img-search index directory.

One collection per indexed model; searches without `model` are routed by the SigLIP rollout (sticky per `user_id`
or `session_key`). Errors are JSON `ErrorResponse` bodies with a stable `error` kind. See docs/SERVICE.md."""

_KIND_NAMES: tuple[tuple[type[ImgSearchError], str], ...] = (
    (InvalidInputError, "invalid_input"),
    (NotFoundError, "not_found"),
    (ConflictError, "conflict"),
    (UnavailableError, "unavailable"),
)
_UNPARSABLE_BODY = "There was an error parsing the body"  # fastapi.routing's detail for a body it cannot parse
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_CLOSE = {"Connection": "close"}  # on a 413 whose body is still arriving: uvicorn then closes the connection
_HTTP_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_input"}


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped (``\\uXXXX``), as the CLI's ``--json`` prints it.

    A file name that is not UTF-8 reaches Python as a str with surrogate escapes (``os.fsdecode``); UTF-8 cannot
    encode those (pydantic's serializer and Starlette's default response both fail on them), while an ASCII-escaped
    ``"\\udcff"`` round-trips: ``os.fsencode(json.loads(body)["path"])`` is the name on disk.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_kind(exc: ImgSearchError) -> str:
    """The stable ``error`` name of a library error's kind ("internal" for an error of no kind)."""
    return next((name for kind, name in _KIND_NAMES if isinstance(exc, kind)), "internal")


def _error(status: int, kind: str, message: str, details: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": kind, "message": message}
    if details is not None:
        body["details"] = details
    return AsciiJSONResponse(body, status_code=status, headers=headers)


async def _library_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImgSearchError)
    status, kind = http_status(exc), error_kind(exc)
    if kind == "internal":
        logger.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
        return _error(status, kind, f"internal error ({type(exc).__name__}: {exc}); see the server log")
    if status >= 500:  # unavailable (Redis down, a read-only index dir, ...): the message says it, no traceback
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        logger.debug("%s %s: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return _error(status, kind, str(exc))
    logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return _error(status, error_kind(exc), str(exc))


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    kind = err.get("type")
    if kind == "json_invalid":
        ctx = err.get("ctx") or {}
        where = err.get("loc", ())[-1] if err.get("loc") else "?"
        return f"malformed JSON in the request body: {ctx.get('error', 'cannot be parsed')} (at character {where})"
    if kind == "string_pattern_mismatch" and loc.endswith("query"):
        return f"{loc}: the query text is empty (only white space)"
    if kind == "missing" and loc == "body":
        return "the request needs a JSON body"
    return f"{loc}: {err.get('msg', 'invalid value')}"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    details = [{"loc": [str(p) for p in e.get("loc", ())], "type": str(e.get("type")), "message": str(e.get("msg"))}
               for e in errors]
    message = "; ".join(_describe(e) for e in errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3
                                                               else "")
    return _error(422, "invalid_input", message or "invalid request", details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    kind = _HTTP_KINDS.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    message = str(exc.detail)
    if status == 400:
        # FastAPI's and Starlette's answer to a body their parsers gave up on (bytes that are not UTF-8, a broken
        # multipart stream): the same 422 as malformed JSON, saying what the route expected
        expected = "multipart/form-data" if "multipart" in request.headers.get("content-type", "") else "JSON"
        detail = "" if message == _UNPARSABLE_BODY else f" ({message})"
        return _error(422, "invalid_input", f"the request body cannot be parsed as {expected}{detail}")
    if status == 404 and message == "Not Found":
        message = f"no such route: {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    if status == 405:
        allowed = _allowed_methods(request)
        message = f"{request.method} is not allowed on {request.url.path} (allowed: {', '.join(allowed)})"
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return _error(status, kind, message, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this path (Starlette's 405 names only the first route that matched)."""
    routes = request.app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]


class BodyLimit:
    """Caps request bodies per route (``limits`` by path, else ``default`` bytes), with the API's JSON 413:

    * a declared Content-Length over the limit is refused before any of the body is read;
    * a body sent without one (chunked), or longer than declared, is cut off as soon as the bytes received pass the
      limit: ``receive`` raises ``HTTPException(413)``, which FastAPI's body parsing passes on to ``_http_error``.

    So an upload is never read whole, in memory or in a spool file, beyond ``service.max_upload_bytes``.

    Both 413s carry ``Connection: close``: the rest of the body is still on its way, and on a kept-alive connection
    uvicorn (httptools and h11 alike) would read and discard all of it (issue 12: 128 MB of a chunked upload were
    accepted after its 413). With the header uvicorn closes the connection once the 413 is written.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    def _message(self, path: str, limit: int, size: str) -> str:
        which = " (service.max_upload_bytes)" if path in self.limits else ""
        return f"the request body{size} is over this route's limit of {limit:,} bytes{which}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        limit = self.limits.get(path, self.default)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _error(413, "too_large", self._message(path, limit, f" ({int(declared):,} bytes)"),
                         headers=_CLOSE)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self._message(path, limit, ""), headers=_CLOSE)
            return message

        await self.app(scope, limited_receive, send)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal", f"internal error ({type(exc).__name__}); see the server log")


def create_app(settings: Settings, *, opener: SearcherOpener | None = None, watch: Sequence[str] = ()) -> FastAPI:
    """The service over ``settings.index_dir``. ``opener`` builds each collection's ``Searcher`` (default
    ``collections.default_opener``; tests inject searchers with ready encoders). ``watch``: folders to watch for
    new and changed images (``serve --watch``; ``service.jobs.ServiceJobs.watch``). Nothing is opened until the
    lifespan starts (``with TestClient(app)``, or uvicorn)."""
    from img_search.service.jobs import ServiceJobs
    from img_search.service.routes import admin, explore, health, images, jobs, search, ui

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from img_search.data.images import configure_pixel_limit

        configure_pixel_limit(settings.max_image_pixels)
        registry = CollectionRegistry(settings, opener=opener or default_opener)
        await run_in_threadpool(registry.open)  # loads models: seconds, off the event loop
        svc = settings.service
        rollout = Rollout.from_settings(svc.use_siglip, svc.siglip_rollout_percentage)
        app.state.settings = settings
        app.state.registry = registry
        app.state.rollout = rollout
        app.state.router = Router(registry, rollout)
        app.state.thumbnails = Thumbnails(settings.index_dir, svc.thumbnail_size)
        app.state.jobs = ServiceJobs(settings, registry)
        served = ", ".join(f"{s.name} ({s.model.name}, {s.points} points)" for s in registry.served()) or "none"
        logger.info("serving %s: collections %s; rollout: %s", settings.index_dir, served,
                    app.state.router.status()["reason"])
        try:
            if watch:
                await run_in_threadpool(app.state.jobs.watch, watch)
            yield
        finally:
            app.state.jobs.close()
            registry.close()

    app = FastAPI(
        title="img-search", version=__version__, description=API_DESCRIPTION, lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
        openapi_tags=[
            {"name": "search", "description": "Text and image queries; routed by the SigLIP rollout."},
            {"name": "images", "description": "Catalog images: metadata and thumbnails."},
            {"name": "explore", "description": "The collection's UMAP map and its near-duplicate groups."},
            {"name": "health", "description": "Status of the index, collections and rollout."},
            {"name": "admin", "description": "Run-time control; needs the X-API-Key header (404 when no key is "
                                             "configured)."},
        ],
    )
    app.add_middleware(BodyLimit, limits={UPLOAD_PATH: settings.service.max_upload_bytes},
                       default=MAX_JSON_BODY_BYTES)
    app.add_exception_handler(ImgSearchError, _library_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    for module in (search, images, explore, health, admin, jobs):
        app.include_router(module.router)
    ui.mount(app)  # the web UI: /, /map, /duplicates and /static/ (routes/ui.py)
    return app


def app_from_env() -> FastAPI:
    """``uvicorn --factory img_search.service.app:app_from_env``: settings from the environment (and the seed's
    variables), index directory from ``IMG_SEARCH_INDEX_DIR`` or the default."""
    from img_search.service.config import load_service_settings

    return create_app(load_service_settings())
