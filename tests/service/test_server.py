"""The service in a real uvicorn process on 127.0.0.1 (settings from the environment, the seed's variables among
them; models loaded by the default opener): an end-to-end search through the client the CLI will use, the early
413 over a real socket, and a bounded loopback load (2,000 requests, 8 at a time) with zero errors."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_KEY, N_PHOTOS, Models

from img_search.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from img_search.search.searcher import open_searcher
from img_search.service import client
from img_search.settings import load_settings

STARTUP_TIMEOUT_S = 120
LOAD_REQUESTS = 2000
LOAD_CONCURRENCY = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(indexed: tuple[Path, Path], models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _, index_dir = indexed
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMG_SEARCH_")}
    env.update({
        "IMG_SEARCH_INDEX_DIR": str(index_dir), "IMG_SEARCH_DEVICE": "cpu",
        # the answers are compared with the session's float32 encoders ("auto" may pick int8 on this CPU)
        "IMG_SEARCH_PRECISION": "fp32",
        "IMG_SEARCH_SERVICE__CLIP_MODEL": str(models.clip), "IMG_SEARCH_SERVICE__CLIP_DIM": "32",
        "IMG_SEARCH_SERVICE__SIGLIP_MODEL": str(models.siglip), "SIGLIP_EMBEDDING_DIM": "32",  # a seed alias
        "SIGLIP_ROLLOUT_PERCENTAGE": "50", "IMG_SEARCH_SERVICE__API_KEY": API_KEY,
        "IMG_SEARCH_SERVICE__MAX_UPLOAD_BYTES": str(256 * 1024),
    })
    code = ("from img_search.service import run; from img_search.service.config import load_service_settings; "
            f"run(load_service_settings(), '127.0.0.1', {port}, log_level='warning')")
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_end_to_end_search_through_the_client(server: str, indexed: tuple[Path, Path], models: Models) -> None:
    photos, index_dir = indexed
    status = client.check_server(server, index_dir=index_dir, model=str(models.siglip))
    assert status["rollout"]["percentage"] == 50 and status["rollout"]["source"] == "settings"  # seed variable
    assert all(c["model_loaded"] for c in status["collections"])
    hits = client.search_text(server, "a red car on the beach", limit=5, model=str(models.siglip),
                              index_dir=index_dir)
    local = open_searcher(load_settings(index_dir), str(models.siglip),
                          encoder=models.encoders[str(models.siglip)]).search_text("a red car on the beach", limit=5)
    assert [h["path"] for h in hits] == [h.path for h in local]  # same answer as the CLI computes in-process
    assert [h["cosine"] for h in hits] == pytest.approx([h.cosine for h in local], abs=1e-5)
    assert [h["probability"] for h in hits] == pytest.approx([h.probability for h in local], abs=1e-6)
    assert list(hits[0]) == list(local[0].to_dict())  # the --json keys, in order
    assert [h.path for h in client.to_hits(hits)] == [h.path for h in local]
    query = photos / "a" / "img05.jpg"
    similar = client.search_image(server, query, limit=20, model="image_assets")
    assert len(similar) == N_PHOTOS - 1 and str(query) not in [h["path"] for h in similar]
    by_id = client.similar_to_id(server, similar[0]["image_id"], limit=3)
    assert len(by_id) == 3 and similar[0]["image_id"] not in [h["image_id"] for h in by_id]


def test_the_clients_searches_stay_on_one_collection(server: str, indexed: tuple[Path, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """At a 50 % rollout, every search of one user through the client (text, upload, by id) is answered by one
    collection: the client sends its default_session_key(). It sent none, so each request (each CLI command) drew
    a random bucket: 8 text searches all on one collection happened 1 time in 128."""
    answered: list[str] = []
    call = client._call

    def spy(*args: Any, **kwargs: Any) -> Any:
        payload = call(*args, **kwargs)
        if isinstance(payload, dict) and "routing" in payload:
            answered.append(payload["collection"])
            assert payload["routing"]["sticky_by"] == "session_key"
        return payload

    monkeypatch.setattr(client, "_call", spy)
    photos, _ = indexed
    for text in ("a red car", "mountains", "a dog", "the sea", "a forest", "a city at night", "snow", "a cat"):
        client.search_text(server, text, limit=1)
    client.search_image(server, photos / "a" / "img05.jpg", limit=1)
    client.similar_to_id(server, 1, limit=1)
    assert len(answered) == 10 and len(set(answered)) == 1, answered
    assert client.default_session_key() == client.default_session_key()
    assert client.default_session_key().startswith("cli-") and len(client.default_session_key()) == 20


def test_a_large_query_file_is_uploaded_from_disk(server: str, indexed: tuple[Path, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A file above READ_WHOLE_MAX_BYTES (lowered here) is a LargeFile, not bytes: the client sends it in chunks
    read from the file, with its length declared, and the server finds the same neighbours."""
    from img_search.data import images

    photos, _ = indexed
    query = photos / "a" / "img05.jpg"
    whole = client.search_image(server, query, limit=5, model="image_assets")
    monkeypatch.setattr(images, "READ_WHOLE_MAX_BYTES", 16)
    assert isinstance(images.read_file(str(query)), images.LargeFile)
    assert client.search_image(server, query, limit=5, model="image_assets") == whole


def test_client_errors_are_the_library_kinds(server: str, indexed: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConflictError, match="serves the index directory"):
        client.search_text(server, "x", index_dir=tmp_path)
    with pytest.raises(ConflictError, match="does not serve model"):
        client.search_text(server, "x", model="google/siglip-so400m-patch14-384")
    with pytest.raises(InvalidInputError, match="limit"):
        client.search_text(server, "x", limit=0)
    with pytest.raises(NotFoundError, match="no such file"):
        client.search_image(server, tmp_path / "missing.jpg")
    (tmp_path / "not-an-image.jpg").write_bytes(b"plain text")
    with pytest.raises(InvalidInputError):
        client.search_image(server, tmp_path / "not-an-image.jpg")
    with pytest.raises(NotFoundError, match="no indexed image has id 424242"):
        client.similar_to_id(server, 424242)
    with pytest.raises(UnavailableError, match="no img-search service answers"):
        client.health(f"http://127.0.0.1:{_free_port()}", timeout=5)


def test_oversized_upload_is_refused_before_its_body_is_sent(server: str) -> None:
    """A declared 10 GB upload is answered 413 at once, although not one byte of its body was sent."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/search/image HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["error"] == "too_large"


def test_loopback_load_has_zero_errors(server: str) -> None:
    queries = ["a dog", "sunset over mountains", "a red car", "two cats on a table", "a boat by the sea"]

    def request(i: int, http: httpx.Client) -> tuple[int, float, str]:
        started = time.perf_counter()
        kind = i % 4
        if kind == 0:
            r = http.get(f"/api/v1/images/{1 + i % N_PHOTOS}/similar", params={"limit": 5})
        elif kind == 3:
            r = http.get("/api/v1/health")
        else:
            r = http.post("/api/v1/search", json={"query": queries[i % len(queries)], "limit": 10,
                                                  "user_id": f"user-{i % 97}"})
        return r.status_code, time.perf_counter() - started, r.text[:200]

    with httpx.Client(base_url=server, timeout=30, limits=httpx.Limits(max_connections=LOAD_CONCURRENCY)) as http:
        started = time.perf_counter()
        with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
            results = list(pool.map(lambda i: request(i, http), range(LOAD_REQUESTS)))
        elapsed = time.perf_counter() - started
    errors = [(status, text) for status, _, text in results if status != 200]
    assert not errors, errors[:5]
    latencies = sorted(t for _, t, _ in results)
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    print(f"\nloopback load: {LOAD_REQUESTS} requests, {LOAD_CONCURRENCY} concurrent, {elapsed:.1f} s, "
          f"{LOAD_REQUESTS / elapsed:.0f} req/s, p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")


UPLOAD_LIMIT = 256 * 1024  # the server fixture's IMG_SEARCH_SERVICE__MAX_UPLOAD_BYTES


@pytest.mark.parametrize("size, chunked", [(UPLOAD_LIMIT + 1, False), (8 * 2**20, False), (8 * 2**20, True)],
                         ids=["just-over", "8MiB", "8MiB-chunked"])
def test_similar_with_a_file_over_the_servers_upload_limit_names_the_limit(
        server: str, indexed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, size: int, chunked: bool) -> None:
    """The server answers 413 and closes once it has the headers, while the client may still be sending the body:
    `similar FILE --server URL` says the file is over the server's limit (exit 2, one line), never "no img-search
    service answers" (the connection error of a body cut off)."""
    from helpers import run_main

    from img_search.data import images

    photos, _ = indexed
    big = tmp_path / "big.jpg"
    head = (photos / "a" / "img05.jpg").read_bytes()  # a JPEG header (the client checks it), then padding
    big.write_bytes(head + b"\0" * (size - len(head)))
    if chunked:  # a LargeFile: sent in chunks read from the file, as a file over 64 MiB is
        monkeypatch.setattr(images, "READ_WHOLE_MAX_BYTES", 16)
    for args in ([], ["--model", "image_assets"]):  # without and with the server check that reads its health
        code, out, err = run_main(capsys, "similar", str(big), "--server", server, *args)
        assert code == 2, (code, out, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"over the server's upload limit of {UPLOAD_LIMIT:,} bytes (service.max_upload_bytes)" in err, err
        assert "no img-search service answers" not in err, err
    # no server at all is still the connection's error (the limit cannot be read either)
    with pytest.raises(UnavailableError, match="no img-search service answers"):
        client.search_image(f"http://127.0.0.1:{_free_port()}", big, timeout=5)
