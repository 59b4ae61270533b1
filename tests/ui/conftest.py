"""Fixtures of the web UI tests: a tiny collection indexed with the tiny SigLIP model, the real app under uvicorn on
127.0.0.1 (a free port, in a thread of this process, with the session's loaded encoder), and headless Chromium
driven by Playwright's Python package.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``, or ``IMG_SEARCH_CHROMIUM``), never a browser
downloaded by ``playwright install``. Without Playwright or Chromium the tests are skipped, saying which is missing
(``.ci/run`` installs both, so CI runs them).

Screenshots go to each test's tmp dir; with ``IMG_SEARCH_UI_SCREENSHOTS=docs/img`` also there (the README's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from helpers import pattern
from ui_support import DESKTOP, DUPLICATE_OF, FOLDERS, N_PHOTOS, PHOTO_SIZE, UiCollection, ui_settings

from img_search.catalog import ModelRow
from img_search.embedding import load_encoder
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.searcher import Searcher, open_searcher
from img_search.service.app import create_app
from img_search.service.embedding import LockedEncoder
from img_search.settings import Settings

STARTUP_TIMEOUT_S = 120
CHROMIUM = os.environ.get("IMG_SEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# the flags the machine notes give for a closed network: no background fetches, no first-run, no GPU
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def ui_collection(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> UiCollection:
    """36 photos in three folders, plus a byte-identical and a re-encoded copy of one, indexed with tiny SigLIP
    (the only collection, so every search has a calibrated probability). File times a day apart (date sort)."""
    siglip = tiny_models["siglip"]
    encoder = load_encoder(str(siglip), device="cpu")
    root = tmp_path_factory.mktemp("ui")
    photos = root / "photos"
    day = 86_400
    for i in range(N_PHOTOS):
        path = photos / FOLDERS[i % len(FOLDERS)] / f"photo{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pattern(i, PHOTO_SIZE).save(path, "JPEG", quality=90)
        os.utime(path, (1_700_000_000 + i * day, 1_700_000_000 + i * day))
    (photos / "copies").mkdir()
    original = photos / DUPLICATE_OF
    shutil.copyfile(original, photos / "copies" / "photo00-copy.jpg")
    pattern(0, PHOTO_SIZE).save(photos / "copies" / "photo00-reencoded.jpg", "JPEG", quality=60)
    index_dir = root / "index"
    index_folders([str(photos)], index_dir, IndexOptions(model=str(siglip), workers=0),
                  encoder_factory=lambda: encoder)
    settings = ui_settings(index_dir, tiny_models)
    pristine = root / "index-pristine"
    shutil.copytree(index_dir, pristine)
    locked = LockedEncoder(encoder)

    def opener(s: Settings, row: ModelRow) -> Searcher:
        return open_searcher(s, row.name, encoder=locked)

    return UiCollection(photos, index_dir, settings, opener, pristine, encoder, str(siglip))


@contextlib.contextmanager
def serve(settings: Settings, opener: Callable[[Settings, ModelRow], Searcher]) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1 (a free port, bound before uvicorn starts), in a thread; its base URL."""
    import uvicorn

    app = create_app(settings, opener=opener)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, name="ui-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not srv.started:
        if not thread.is_alive():
            pytest.fail("uvicorn exited before it started (see the log above)")
        if time.monotonic() > deadline:
            pytest.fail(f"uvicorn did not start in {STARTUP_TIMEOUT_S} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="session")
def server(ui_collection: UiCollection) -> Iterator[str]:
    """The app over the session's collection, started once; its map made before any test looks at it."""
    with serve(ui_collection.settings, ui_collection.opener) as url:
        yield url


@pytest.fixture(scope="session")
def mapped_server(server: str) -> str:
    """``server``, with the collection's map made (``POST /api/v1/map``, as the page's button asks)."""
    import httpx

    answer = httpx.post(server + "/api/v1/map", timeout=600)
    assert answer.status_code == 200, answer.text
    return server


@pytest.fixture()
def unmapped_index(ui_collection: UiCollection, tmp_path: Path) -> Path:
    """A copy of the collection's index as indexing left it: no map yet, the test's to change."""
    index_dir = tmp_path / "index"
    shutil.copytree(ui_collection.pristine, index_dir)
    return index_dir


@pytest.fixture()
def unmapped_server(ui_collection: UiCollection, tiny_models: dict[str, Path], unmapped_index: Path
                    ) -> Iterator[str]:
    """The app over ``unmapped_index``."""
    with serve(ui_settings(unmapped_index, tiny_models), ui_collection.opener) as url:
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through Playwright (skipped, saying why, when either is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright's Python package is not installed (pip install playwright: the dev extra); "
                    "the web UI tests need it")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does; or set "
                    "IMG_SEARCH_CHROMIUM); the web UI tests need it")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageWatch:
    """What a page did besides its job: uncaught script errors, console errors, requests to other origins, failed
    responses (5xx anywhere, 4xx outside the API: a missing page asset) and the API's 4xx answers (``refused``,
    which a test provoking a bad request looks at)."""

    origin: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert not self.errors, f"the page logged errors: {self.errors}"
        assert not self.foreign, f"the page fetched from another origin: {self.foreign}"


@pytest.fixture()
def open_page(browser: Any, server: str) -> Iterator[Callable[..., tuple[Any, PageWatch]]]:
    """``open_page(path, viewport=DESKTOP, base=server) -> (page, watch)``: a fresh browser context on
    ``base + path``; after the test, no script error and no request outside the server's origin may have happened."""
    contexts: list[Any] = []
    watches: list[PageWatch] = []

    def open_(path: str, viewport: dict[str, int] | None = None, base: str = server) -> tuple[Any, PageWatch]:
        origin = f"{urlsplit(base).scheme}://{urlsplit(base).netloc}"
        # bypass_csp: Playwright's waits evaluate strings, which the pages' policy (script-src 'self') forbids; the
        # policy's header is checked apart, and requests to other origins are caught here whatever the policy
        context = browser.new_context(viewport=viewport or DESKTOP, service_workers="block", bypass_csp=True)
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        watch = PageWatch(origin)
        watches.append(watch)
        page.on("pageerror", lambda exc: watch.errors.append(f"uncaught: {exc}"))
        # a failed response is also logged as "Failed to load resource": judged by its status below instead
        page.on("console", lambda msg: watch.errors.append(f"console: {msg.text}")
                if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)

        def on_response(response: Any) -> None:
            status, url = response.status, response.url
            if status >= 500 or (status >= 400 and not url.startswith(origin + "/api/")):
                watch.errors.append(f"HTTP {status}: {url}")
            elif status >= 400:
                watch.refused.append(f"HTTP {status}: {url}")

        page.on("response", on_response)

        def on_request(request: Any) -> None:
            url = request.url
            if not (url.startswith(origin + "/") or url.startswith(("blob:", "data:"))):
                watch.foreign.append(url)

        page.on("request", on_request)
        page.goto(base + path)
        return page, watch

    yield open_
    try:
        for watch in watches:
            watch.check()
    finally:
        for context in contexts:
            context.close()


@pytest.fixture()
def screenshot(tmp_path: Path) -> Callable[[Any, str], Path]:
    """``screenshot(page, name)``: a PNG in the test's tmp dir, and in ``$IMG_SEARCH_UI_SCREENSHOTS`` when set."""

    def shoot(page: Any, name: str, full_page: bool = False) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 1000
        out = os.environ.get("IMG_SEARCH_UI_SCREENSHOTS")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(out) / path.name)
        return path

    return shoot
