"""The web UI: three pages (``/`` search, ``/map``, ``/duplicates``) and their scripts and stylesheet under
``/static/``, plain HTML/JS/CSS shipped as package data in ``img_search/service/static/``.

Nothing is fetched from another origin at run time (users' machines may be offline): the pages' Content Security
Policy allows this origin only (plus ``blob:`` images, the preview of an image chosen for a search), so a page that
tried would be refused by the browser. The pages talk to the JSON API of ``/api/v1`` like any other client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PATH = "/static"
PAGES = {"/": "index.html", "/map": "map.html", "/duplicates": "duplicates.html"}
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
# pages are small and change with the package: revalidate each time (ETag / Last-Modified answer 304s)
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}

router = APIRouter(include_in_schema=False)


def _page(filename: str) -> Callable[[], FileResponse]:
    path = STATIC_DIR / filename

    def page() -> FileResponse:
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    page.__name__ = f"page_{path.stem}"
    return page


for _route, _file in PAGES.items():
    router.add_api_route(_route, _page(_file), methods=["GET"], response_class=FileResponse)


class _StaticFiles(StaticFiles):
    """``StaticFiles`` with revalidation (``no-cache``) and ``nosniff`` on every file."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def mount(app: FastAPI) -> None:
    """Add the pages and ``/static/`` to ``app``."""
    app.include_router(router)
    app.mount(STATIC_PATH, _StaticFiles(directory=STATIC_DIR, check_dir=True), name="static")
