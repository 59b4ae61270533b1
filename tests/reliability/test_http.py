"""The HTTP service under hostile requests, load and a SIGKILL (issue 12, HTTP and Load parts), over real sockets.

The service runs as users run it: ``img_search.service.run`` (uvicorn) in a separate process on 127.0.0.1 with a
free port, over a tiny folder indexed with the tiny CLIP and SigLIP models, settings from the environment. Its RSS
is read with psutil from this process, so memory figures are the server's only.

Extends, does not repeat, tests/service: schemathesis (test_openapi.py), the admin key, bad ids and bodies, the
early 413 at the ASGI level and from a declared Content-Length (test_api.py, test_server.py), allowed roots of the
index route (test_jobs.py). Here: traversal attempts sent byte for byte (http.client does not normalise targets),
a chunked upload that never ends, malformed multipart, image bombs, 2 x 20,000 searches by id at 16 concurrent
with a leak check, and the server SIGKILLed while serving.

Figures of the load test are printed, and written to ``bench/results/http_reliability_load.json`` when
``IMG_SEARCH_WRITE_RESULTS=1``
(docs/RELIABILITY.md cites them); the test asserts no timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from helpers import make_jpeg
from PIL import Image
from reliability_support import integrity

from img_search.catalog import Catalog
from img_search.pipeline.runner import IndexOptions, index_folders

API_KEY = "reliability-admin-key"
N_PHOTOS = 12
MAX_UPLOAD = 256 * 1024
STARTUP_TIMEOUT_S = 180
LOAD_REQUESTS = 20_000  # per round (issue 12)
LOAD_CONCURRENCY = 16
LEAK_LIMIT_MB = 50
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "http_reliability_load.json"
SECRET = b"reliability-secret-7f3a9c"  # the content of a file outside the index that must never be served


# -- the server ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One uvicorn process of the service; ``start`` again after a kill serves the same index dir."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def start(self) -> None:
        code = ("from img_search.service import run; from img_search.service.config import load_service_settings; "
                f"run(load_service_settings(), '127.0.0.1', {self.port}, log_level='warning')")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", code], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer in {STARTUP_TIMEOUT_S} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Site:
    root: Path  # holds photos/, index/, allowed/ and secret.txt
    index_dir: Path
    ids: list[int]  # catalog ids of the indexed photos


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Site:
    from img_search.embedding import load_encoder

    root = tmp_path_factory.mktemp("http")
    photos = root / "photos"
    for i in range(N_PHOTOS):
        make_jpeg(photos / ("a" if i % 2 else "b") / f"img{i:02d}.jpg", seed=i)
    (root / "allowed").mkdir()
    (root / "secret.txt").write_bytes(SECRET)
    index_dir = root / "index"
    for fam in ("clip", "siglip"):
        encoder = load_encoder(str(tiny_models[fam]), device="cpu")
        index_folders([str(photos)], index_dir, IndexOptions(model=str(tiny_models[fam]), workers=0),
                      encoder_factory=lambda encoder=encoder: encoder)  # type: ignore[misc]
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        ids = [int(r[0]) for r in cat.db.execute("SELECT id FROM images WHERE status = 'ok' ORDER BY id")]
    assert len(ids) == N_PHOTOS
    return Site(root, index_dir, ids)


def _env(site: Site, tiny_models: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMG_SEARCH_") and k != "REDIS_URL"}
    env.update({
        "IMG_SEARCH_INDEX_DIR": str(site.index_dir), "IMG_SEARCH_DEVICE": "cpu", "IMG_SEARCH_PRECISION": "fp32",
        "IMG_SEARCH_SERVICE__CLIP_MODEL": str(tiny_models["clip"]), "IMG_SEARCH_SERVICE__CLIP_DIM": "32",
        "IMG_SEARCH_SERVICE__SIGLIP_MODEL": str(tiny_models["siglip"]), "IMG_SEARCH_SERVICE__SIGLIP_DIM": "32",
        "IMG_SEARCH_SERVICE__API_KEY": API_KEY, "IMG_SEARCH_SERVICE__MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "IMG_SEARCH_SERVICE__ALLOWED_ROOTS": json.dumps([str(site.root / "allowed")]),
    })
    return env


@pytest.fixture(scope="module")
def server(site: Site, tiny_models: dict[str, Path]) -> Iterator[Server]:
    srv = Server(_env(site, tiny_models), site.root / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _raw(server: Server, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """One request with ``target`` sent as given (no normalisation, no re-encoding): (status, content type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read()
    finally:
        conn.close()


# -- 1. path traversal -----------------------------------------------------------------------------------------------
TRAVERSAL_IDS = ["../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%252f..%252f",
                 "..", "%2e%2e", "1%00", "%00", "1%00.jpg", "..%00", "1;../../secret.txt", "1%2f..%2f..%2fsecret.txt",
                 str(2**64), "9" * 400, "-1", "-9223372036854775809", "0x10", "1e3", "%ff%fe", "1%0d%0aX-Evil:%201",
                 "~root", "%5c..%5c..%5csecret.txt", "....//....//etc/passwd"]
ID_ROUTES = ["/api/v1/images/{}", "/api/v1/images/{}/thumbnail", "/api/v1/images/{}/similar",
             "/api/v1/admin/jobs/{}"]
STATIC_TARGETS = ["/static/../../../../../../etc/passwd", "/static/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
                  "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/....//....//etc/passwd",
                  "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt", "/static//etc/passwd",
                  "/static/common.js%00.html", "/static/..\\..\\..\\etc\\passwd", "/../../../../etc/passwd",
                  "/%2e%2e/%2e%2e/%2e%2e/etc/passwd"]
FOLDER_FILTERS = ["..", "../..", "/../../etc", "/etc/../../", "%2e%2e%2f%2e%2e", "{root}/../../etc",
                  "{root}/photos/../secret.txt", "%00", "/tmp%00/x", "~/../../root"]
MODEL_PARAMS = ["../../etc/passwd", "/etc/passwd", "{root}/secret.txt", "..%2f..%2fsecret.txt", "%00"]


def _check_harmless(status: int, body: bytes, what: str) -> None:
    assert status < 500, (what, status, body[:300])
    assert SECRET not in body and b"root:x:0:0" not in body, (what, body[:300])


def test_path_traversal_on_every_route_with_an_id_or_a_path(server: Server, site: Site) -> None:
    counts: dict[str, int] = {}

    def send(kind: str, method: str, target: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        status, ctype, data = _raw(server, method, target, body, {"X-API-Key": API_KEY, **(headers or {})})
        _check_harmless(status, data, target)
        if target.startswith("/api/") and status != 400:  # 400: uvicorn refused the request line itself
            assert ctype.startswith("application/json"), (target, status, data[:200])
            assert status < 400 or "error" in json.loads(data), (target, status, data[:200])
        counts[kind] = counts.get(kind, 0) + 1
        return status, ctype, data

    for route in ID_ROUTES:
        for bad in TRAVERSAL_IDS:
            status, _, _ = send("id", "GET", route.format(bad))
            assert 400 <= status < 500, (route, bad, status)
    root = str(site.root)
    for bad in FOLDER_FILTERS:
        q = "folder=" + bad.replace("{root}", root)
        for target in (f"/api/v1/images/{site.ids[0]}/similar?{q}", f"/api/v1/images/{site.ids[0]}/similar?{q}&"
                       "folder=/"):
            status, _, data = send("folder", "GET", target)
            if status == 200:  # a folder filter only narrows the catalog's own images: never another file
                assert all(h["path"].startswith(str(site.root / "photos")) for h in json.loads(data)["hits"])
    for bad in MODEL_PARAMS:
        m = bad.replace("{root}", root)
        for target in (f"/api/v1/images/{site.ids[0]}/similar?model={m}", f"/api/v1/duplicates?model={m}",
                       f"/api/v1/map?model={m}", f"/api/v1/admin/jobs/status?model={m}"):
            status, _, _ = send("model", "GET", target)
            assert 400 <= status < 500, (target, status)
        body = json.dumps({"query": "x", "model": m}).encode()
        assert send("model", "POST", "/api/v1/search", body, {"Content-Type": "application/json"})[0] in (404, 422)
    for target in STATIC_TARGETS:
        status, _, _ = send("static", "GET", target)
        assert status in (400, 404, 405), (target, status)
    # the admin index route, with a folder outside service.allowed_roots reached through ``..``, encodings, NUL
    allowed = site.root / "allowed"
    for folder in (f"{allowed}/..", f"{allowed}/../photos", f"{allowed}/../../../etc", f"{allowed}/%2e%2e/photos",
                   f"{allowed}/..\u0000/photos", "/etc", "/", f"{allowed}/../secret.txt", "//etc/../..",
                   f"{allowed}/./../index"):
        body = json.dumps({"folder": folder}).encode()
        status, _, data = send("admin index", "POST", "/api/v1/admin/index", body,
                               {"Content-Type": "application/json"})
        assert status in (403, 404, 422), (folder, status, data[:200])
    for model in MODEL_PARAMS:
        body = json.dumps({"model": model.replace("{root}", root)}).encode()
        status, _, _ = send("admin reembed", "POST", "/api/v1/admin/reembed", body,
                            {"Content-Type": "application/json"})
        assert status in (404, 422), (model, status)
    # a real id still answers: the attempts above broke nothing
    assert _raw(server, "GET", f"/api/v1/images/{site.ids[0]}")[0] == 200
    print(f"\npath traversal: {sum(counts.values())} requests ({counts}); no 5xx, nothing outside the index served")


# -- 2. uploads --------------------------------------------------------------------------------------------------
UPLOAD = "/api/v1/search/image"


def _peak_rss(server: Server, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            out.append(server.rss())
        time.sleep(0.01)


def _send_after_413(server: Server, request_head: bytes, pieces: Iterator[bytes], cap: int
                    ) -> tuple[bytes, int, int | None, bool]:
    """Send ``request_head`` then ``pieces`` (up to ``cap`` bytes of body) while a thread reads the answer: (answer,
    body bytes sent, bytes sent when the whole answer had arrived or None, whether the server broke the connection
    before ``cap`` was sent)."""
    answer = bytearray()
    sent = 0
    sent_at_answer: list[int] = []
    closed_early = False

    def read(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                got = sock.recv(65536)
                if not got:
                    return
                answer.extend(got)
                if not sent_at_answer and b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                    sent_at_answer.append(sent)

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        reader = threading.Thread(target=read, args=(sock,), daemon=True)
        reader.start()
        sock.sendall(request_head)
        try:
            while sent < cap:
                piece = next(pieces)
                sock.sendall(piece)
                sent += len(piece)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            closed_early = True  # the server stopped reading (stalled) or closed the connection
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        reader.join(timeout=30)
    return bytes(answer), sent, sent_at_answer[0] if sent_at_answer else None, closed_early


def _check_413_and_close(answer: bytes, sent: int, sent_at_answer: int | None, closed_early: bool,
                         cap: int) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    if b"chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1]
    assert json.loads(body[: body.rindex(b"}") + 1])["error"] == "too_large"
    assert sent_at_answer is not None and sent_at_answer < 8 * 1024 * 1024, "the 413 came only after the body was read"
    assert b"\r\nconnection: close" in head.lower(), head
    # the server closed the connection after its 413 instead of reading (and discarding) the rest of the body
    assert closed_early and sent < cap, f"{sent / 2**20:.1f} MB of {cap / 2**20:.0f} MB accepted after the 413"


MULTIPART_HEAD = (b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
                  b"Content-Type: image/jpeg\r\n\r\n")


def test_an_endless_chunked_upload_is_refused_without_buffering(server: Server) -> None:
    """A chunked body (no Content-Length) that would run to ``CAP`` bytes, 512 times the limit: the 413 arrives while
    the body is still being sent (after a few MB at most: the limit plus socket buffers), says ``Connection: close``
    and the server closes the connection (it used to keep it alive and read and discard the whole 128 MB), and its
    RSS grows by far less than what was sent."""
    cap = 128 * 1024 * 1024
    chunk = b"\xff" * 65536

    def pieces() -> Iterator[bytes]:
        first = MULTIPART_HEAD + chunk
        yield b"%x\r\n" % len(first) + first + b"\r\n"
        while True:
            yield b"%x\r\n" % len(chunk) + chunk + b"\r\n"

    before = server.rss()
    stop, samples = threading.Event(), [before]
    sampler = threading.Thread(target=_peak_rss, args=(server, stop, samples), daemon=True)
    sampler.start()
    answer, sent, sent_at_answer, closed_early = _send_after_413(
        server, f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: multipart/form-data; boundary=b0\r\n\r\n".encode(), pieces(), cap)
    time.sleep(0.5)
    stop.set()
    sampler.join()
    growth = max(samples) - before
    print(f"\nchunked upload: 413 after {sent_at_answer / 2**20 if sent_at_answer else -1:.2f} MB sent; "
          f"{sent / 2**20:.1f} MB sent in all ({'connection closed by the server' if closed_early else 'drained'}; "
          f"cap {cap / 2**20:.0f} MB, limit {MAX_UPLOAD / 2**10:.0f} KiB); server RSS peak growth "
          f"{growth / 2**20:.1f} MB")
    _check_413_and_close(answer, sent, sent_at_answer, closed_early, cap)
    assert growth < 32 * 1024 * 1024, f"server RSS grew {growth / 2**20:.1f} MB while refusing an upload"
    assert httpx.get(server.url + "/api/v1/health", timeout=30).status_code == 200


def test_a_declared_oversized_upload_is_refused_and_the_connection_closed(server: Server) -> None:
    """A Content-Length of 64 MB (256 x the limit), body sent anyway: the 413 comes from the header alone, with
    ``Connection: close``, and the server closes the connection instead of reading the 64 MB it was told about."""
    cap = 64 * 1024 * 1024
    chunk = b"\xff" * 65536

    def pieces() -> Iterator[bytes]:
        yield MULTIPART_HEAD + chunk
        while True:
            yield chunk

    answer, sent, sent_at_answer, closed_early = _send_after_413(
        server, f"POST {UPLOAD} HTTP/1.1\r\nHost: x\r\nContent-Length: {cap}\r\n"
        "Content-Type: multipart/form-data; boundary=b0\r\n\r\n".encode(), pieces(), cap)
    print(f"\ndeclared {cap / 2**20:.0f} MB upload: 413 after {sent_at_answer or 0:,} bytes sent; "
          f"{sent / 2**20:.1f} MB sent in all ({'closed by the server' if closed_early else 'drained'})")
    _check_413_and_close(answer, sent, sent_at_answer, closed_early, cap)
    assert httpx.get(server.url + "/api/v1/health", timeout=30).status_code == 200


def _jpeg(seed: int = 3) -> bytes:
    buf = io.BytesIO()
    from helpers import pattern

    pattern(seed).save(buf, "JPEG")
    return buf.getvalue()


def _multipart(boundary: str, name: str, data: bytes, filename: str = "q.jpg") -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


def test_malformed_multipart_is_4xx_json(server: Server) -> None:
    jpeg = _jpeg()
    good = _multipart("b0", "file", jpeg)
    cases: dict[str, tuple[bytes, str]] = {
        "no boundary parameter": (good, "multipart/form-data"),
        "empty boundary": (good, "multipart/form-data; boundary="),
        "boundary not in the body": (good, "multipart/form-data; boundary=other"),
        "truncated before the closing boundary": (good[: len(good) // 2], "multipart/form-data; boundary=b0"),
        "closing boundary missing": (good[: -len("--b0--\r\n")], "multipart/form-data; boundary=b0"),
        "wrong field name": (_multipart("b0", "image", jpeg), "multipart/form-data; boundary=b0"),
        "no Content-Disposition": (b"--b0\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n--b0--\r\n",
                                   "multipart/form-data; boundary=b0"),
        "headers never end": (b"--b0\r\nContent-Disposition: form-data; name=\"file\"" + b"x" * 4000,
                              "multipart/form-data; boundary=b0"),
        "empty body": (b"", "multipart/form-data; boundary=b0"),
        "only the closing boundary": (b"--b0--\r\n", "multipart/form-data; boundary=b0"),
        "garbage": (os.urandom(4096), "multipart/form-data; boundary=b0"),
        "a 300-character boundary": (_multipart("b" * 300, "file", jpeg),
                                     "multipart/form-data; boundary=" + "b" * 300),
        "file part empty": (_multipart("b0", "file", b""), "multipart/form-data; boundary=b0"),
        "JSON where multipart is expected": (b'{"file": "x"}', "application/json"),
    }
    for what, (body, ctype) in cases.items():
        status, rtype, data = _raw(server, "POST", UPLOAD, body, {"Content-Type": ctype})
        assert 400 <= status < 500, (what, status, data[:300])
        assert rtype.startswith("application/json") and json.loads(data)["error"], (what, data[:300])
    status, _, data = _raw(server, "POST", UPLOAD, good, {"Content-Type": "multipart/form-data; boundary=b0"})
    assert status == 200 and json.loads(data)["hits"], data[:300]  # the well-formed one is answered
    print(f"\nmalformed multipart: {len(cases)} kinds, each a 4xx JSON answer")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_bomb(width: int, height: int, rows: int = 64) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (8-bit RGB) with ``rows`` rows of zeros compressed (a few KB:
    deflate packs runs of zeros ~1000:1)."""
    raw = zlib.compress(b"\x00" * ((width * 3 + 1) * rows), 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b""))


def test_image_bombs_uploaded_as_queries_are_refused(server: Server) -> None:
    bombs = {"100000x100000 PNG": _png_bomb(100_000, 100_000, rows=2),
             "20000x20000 PNG": _png_bomb(20_000, 20_000, rows=16),
             "65535x65535 GIF header": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00,"
             + b"\x00" * 4 + struct.pack("<HH", 65535, 65535) + b"\x00\x02\x02D\x01\x00;"}
    before = server.rss()
    stop, samples = threading.Event(), [before]
    sampler = threading.Thread(target=_peak_rss, args=(server, stop, samples), daemon=True)
    sampler.start()
    try:
        for what, data in bombs.items():
            assert len(data) < MAX_UPLOAD, (what, len(data))
            status, rtype, body = _raw(server, "POST", UPLOAD, _multipart("b0", "file", data, "bomb.png"),
                                       {"Content-Type": "multipart/form-data; boundary=b0"})
            assert status == 422 and rtype.startswith("application/json"), (what, status, body[:300])
            answer = json.loads(body)
            assert answer["error"] == "invalid_input", (what, body[:300])
            print(f"\n{what}: {len(data):,} bytes -> 422 {answer['message'][:160]}")
    finally:
        stop.set()
        sampler.join()
    growth = max(samples) - before
    assert growth < 64 * 1024 * 1024, f"server RSS grew {growth / 2**20:.1f} MB on image bombs"
    print(f"\nimage bombs: {len(bombs)} refused (422), server RSS peak growth {growth / 2**20:.1f} MB")


# -- 3. load and leak check ----------------------------------------------------------------------------------------
async def _round(url: str, ids: list[int], n: int, concurrency: int) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))

    async def worker(http: httpx.AsyncClient) -> None:
        for i in counter:
            image_id = ids[i % len(ids)]
            started = time.perf_counter()
            try:
                r = await http.get(f"/api/v1/images/{image_id}/similar", params={"limit": 10})
                ok = r.status_code == 200 and len(r.json()["hits"]) == min(10, len(ids) - 1)
                if not ok:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def _pct(sorted_s: list[float], q: float) -> float:
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000


def test_loopback_load_by_id_has_zero_errors_and_no_leak(server: Server, site: Site) -> None:
    rounds: list[dict[str, Any]] = []
    rss_mb = [server.rss() / 2**20]
    for _ in range(2):
        latencies, errors, elapsed = asyncio.run(_round(server.url, site.ids, LOAD_REQUESTS, LOAD_CONCURRENCY))
        rss_mb.append(server.rss() / 2**20)
        assert not errors, (len(errors), errors[:5])
        assert len(latencies) == LOAD_REQUESTS
        s = sorted(latencies)
        rounds.append({"requests": LOAD_REQUESTS, "errors": len(errors), "seconds": round(elapsed, 2),
                       "rps": round(LOAD_REQUESTS / elapsed, 1), "p50_ms": round(statistics.median(s) * 1000, 2),
                       "p99_ms": round(_pct(s, 0.99), 2), "max_ms": round(s[-1] * 1000, 2),
                       "server_rss_mb_after": round(rss_mb[-1], 1)})
    growth = rss_mb[2] - rss_mb[1]
    result = {"what": "GET /api/v1/images/{id}/similar?limit=10 over loopback, httpx.AsyncClient, uvicorn in a "
                      "separate process (tests/reliability/test_http.py)",
              "images": len(site.ids), "concurrency": LOAD_CONCURRENCY, "rounds": rounds,
              "server_rss_mb_at_start": round(rss_mb[0], 1), "rss_growth_second_over_first_mb": round(growth, 1),
              "leak_limit_mb": LEAK_LIMIT_MB, "cores": os.cpu_count(), "loadavg_before": list(os.getloadavg()),
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    # the tracked results file is rewritten only when asked (a test run leaves the tree as it found it)
    if os.environ.get("IMG_SEARCH_WRITE_RESULTS"):
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    for i, r in enumerate(rounds, 1):
        print(f"\nround {i}: {r['requests']} requests, {LOAD_CONCURRENCY} concurrent, {r['seconds']} s, {r['rps']} "
              f"req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms, errors {r['errors']}, "
              f"server RSS {r['server_rss_mb_after']} MB")
    print(f"server RSS: start {rss_mb[0]:.1f} MB, after round 1 {rss_mb[1]:.1f} MB, after round 2 {rss_mb[2]:.1f} MB "
          f"(growth {growth:+.1f} MB)")
    assert growth < LEAK_LIMIT_MB, f"server RSS grew {growth:.1f} MB over a second {LOAD_REQUESTS} requests"


# -- 4. SIGKILL while serving --------------------------------------------------------------------------------------
def _answers(url: str, ids: list[int]) -> dict[str, Any]:
    """What the server answers for every id (similar, limit 20, both collections) and two text queries."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for image_id in ids:
            for model in ("image_assets", "image_assets_siglip"):
                r = http.get(f"/api/v1/images/{image_id}/similar", params={"limit": 20, "model": model})
                assert r.status_code == 200, r.text
                out[f"{model}/{image_id}"] = [(h["id"], round(h["cosine"], 5)) for h in r.json()["hits"]]
        for text in ("a red car", "sunset over mountains"):
            r = http.post("/api/v1/search", json={"query": text, "limit": 20, "model": "image_assets"})
            assert r.status_code == 200, r.text
            out[f"text/{text}"] = [(h["id"], round(h["cosine"], 5)) for h in r.json()["hits"]]
    return out


def test_server_killed_while_serving_answers_the_same_after_restart(site: Site, tiny_models: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    srv = Server(_env(site, tiny_models), tmp_path / "server.log")
    srv.start()
    try:
        before = _answers(srv.url, site.ids)
        kills = 3
        served_total = 0
        for k in range(kills):
            stop = threading.Event()
            served = [0]

            def hammer(url: str = srv.url, stop: threading.Event = stop, served: list[int] = served) -> None:
                # similar-by-id, text searches and thumbnails (whose cache writes into the index dir) until the kill
                with httpx.Client(base_url=url, timeout=30) as http:
                    i = 0
                    while not stop.is_set():
                        image_id = site.ids[i % len(site.ids)]
                        with contextlib.suppress(httpx.HTTPError):
                            if i % 3 == 0:
                                http.get(f"/api/v1/images/{image_id}/similar", params={"limit": 10})
                            elif i % 3 == 1:
                                http.post("/api/v1/search", json={"query": f"photo {i}", "limit": 10})
                            else:
                                http.get(f"/api/v1/images/{image_id}/thumbnail")
                            served[0] += 1
                        i += 1

            threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.5 + k)
            srv.kill()
            stop.set()
            for t in threads:
                t.join(timeout=60)
            served_total += served[0]
            assert integrity(site.index_dir / "catalog.sqlite3") == "ok"
            srv.start()  # the same index dir, a new process
            assert _answers(srv.url, site.ids) == before, f"answers changed after kill {k + 1}"
            for image_id in site.ids:
                r = httpx.get(f"{srv.url}/api/v1/images/{image_id}/thumbnail", timeout=30)
                assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size[0] > 0
    finally:
        srv.stop()
    assert integrity(site.index_dir / "catalog.sqlite3") == "ok"
    print(f"\nSIGKILL while serving: {kills} kills, {served_total} requests answered before them; after each "
          f"restart {len(before)} answers identical, integrity_check ok")
