"""The job routes: re-embedding (in process, and on RQ over the real Redis), their status, index jobs confined to
the allowed roots, and the admin key."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, Models, make_photos, service_settings
from fastapi.testclient import TestClient

from img_search.catalog import Catalog

KEY = {"X-API-Key": API_KEY}
REDIS_URL = "redis://127.0.0.1:6379/13"


def _wait(client: TestClient, url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(url, headers=KEY)
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body["state"] in ("finished", "failed") and body["saved_index"] != "pending":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_reembedding_fills_the_siglip_collection(make_client: Callable[..., TestClient], models: Models,
                                                 fresh_index: Callable[..., tuple[Path, Path]]) -> None:
    _, index_dir = fresh_index(clip=True, siglip=False)
    client = make_client(index_dir)
    idle = client.get("/api/v1/admin/siglip/status", headers=KEY).json()
    assert idle["state"] == "idle" and idle["target_points"] == 0 and idle["source_points"] == 12
    assert idle["collection"] == "image_assets_siglip" and idle["backend"] == "inprocess"

    started = client.post("/api/v1/admin/reembed", json={"batch_size": 5}, headers=KEY)
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["kind"] == "reembed" and run["model"] == str(models.siglip) and run["total"] == 3
    assert run["images_total"] == 12

    done = _wait(client, "/api/v1/admin/siglip/status")
    assert done["run_id"] == run["run_id"] and done["state"] == "finished" and done["percent"] == 100.0
    assert done["target_points"] == done["source_points"] == 12 and done["complete"] is True
    assert done["saved_index"] == "synced" and done["failed"] == 0 and done["errors"] == []
    same = client.get("/api/v1/admin/jobs/status", params={"model": "image_assets_siglip"}, headers=KEY).json()
    assert same == client.get(f"/api/v1/admin/jobs/{run['run_id']}", headers=KEY).json()
    assert same["run_id"] == run["run_id"]

    # the service serves the new collection without a restart, and the rollout may now route to it
    rollout = client.get("/api/v1/admin/rollout", headers=KEY).json()
    assert rollout["siglip_points"] == 12 and rollout["active"] is True
    hits = client.post("/api/v1/search", json={"query": "a photo", "model": "image_assets_siglip", "limit": 3})
    assert hits.status_code == 200 and len(hits.json()["hits"]) == 3


def test_job_routes_need_the_key(make_client: Callable[..., TestClient], indexed: tuple[Path, Path]) -> None:
    client = make_client(indexed[1])
    routes = [("post", "/api/v1/admin/reembed", {}), ("post", "/api/v1/admin/index", {"folder": "/tmp"}),
              ("get", "/api/v1/admin/siglip/status", None), ("get", "/api/v1/admin/jobs/status?model=x", None),
              ("get", "/api/v1/admin/jobs/abc123", None)]
    def call(c: TestClient, method: str, url: str, body: Any, headers: dict[str, str] | None = None) -> int:
        return c.request(method, url, json=body, headers=headers).status_code

    for method, url, body in routes:
        assert call(client, method, url, body) == 401, url
        assert call(client, method, url, body, {"X-API-Key": "wrong"}) == 403, url
    disabled = make_client(indexed[1], api_key=None)
    for method, url, body in routes:
        assert call(disabled, method, url, body, KEY) == 404, url


def test_bad_job_requests_are_4xx(make_client: Callable[..., TestClient], indexed: tuple[Path, Path]) -> None:
    client = make_client(indexed[1])
    for body in ({"batch_size": 0}, {"batch_size": 10_001}, {"batch_size": "5"}, {"model": ""}, {"extra": 1},
                 {"missing_only": "yes"}):
        answer = client.post("/api/v1/admin/reembed", json=body, headers=KEY)
        assert answer.status_code == 422 and answer.json()["error"] == "invalid_input", (body, answer.text)
    unknown = client.post("/api/v1/admin/reembed", json={"model": "/etc/some-model"}, headers=KEY)
    assert unknown.status_code == 404 and "image_assets_siglip" in unknown.json()["message"]
    assert client.get("/api/v1/admin/jobs/0123abcd", headers=KEY).status_code == 404
    assert client.get("/api/v1/admin/jobs/not-a-run", headers=KEY).status_code == 422
    assert client.get("/api/v1/admin/jobs/status", headers=KEY).status_code == 422  # model is required
    for body in ({}, {"folder": ""}, {"folder": 5}):
        assert client.post("/api/v1/admin/index", json=body, headers=KEY).status_code == 422, body


def test_index_jobs_stay_inside_the_allowed_roots(make_client: Callable[..., TestClient], models: Models,
                                                  fresh_index: Callable[..., tuple[Path, Path]],
                                                  tmp_path: Path) -> None:
    _, index_dir = fresh_index(clip=True, siglip=True)
    root = tmp_path / "allowed"
    make_photos(root / "new", n=3, start=50)
    outside = make_photos(tmp_path / "secret", n=2, start=80)
    (root / "link").symlink_to(outside)  # a symlink inside the root to a folder outside it
    client = make_client(index_dir, allowed_roots=[str(root)])

    refused = {str(outside): 403, f"{root}/../secret": 403, str(root / "link"): 403, "/": 403,
               "allowed/new": 422, "new": 422, str(root / "missing"): 404, f"{root}/new\x00": 422}
    for folder, status in refused.items():
        answer = client.post("/api/v1/admin/index", json={"folder": folder}, headers=KEY)
        assert answer.status_code == status, (folder, answer.text)
    closed = make_client(index_dir)  # no allowed_roots: every folder is refused
    answer = closed.post("/api/v1/admin/index", json={"folder": str(root / "new")}, headers=KEY)
    assert answer.status_code == 403 and "allowed_roots is empty" in answer.json()["message"]

    started = client.post("/api/v1/admin/index", json={"folder": f"{root}/./new/../new"}, headers=KEY)
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["kind"] == "index" and run["folder"] == str(root / "new")
    done = _wait(client, f"/api/v1/admin/jobs/{run['run_id']}")
    assert done["state"] == "finished" and done["images_done"] == 3  # 3 new images (files, once for the 2 models)
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        paths = set(cat.images_under(str(tmp_path)))
        counts = cat.embedding_counts()
    assert {str(p) for p in (root / "new").rglob("*.jpg")} <= paths
    assert not any(p.startswith(str(outside)) for p in paths)
    assert sorted(counts.values()) == [15, 15]


@pytest.fixture()
def rq_queue_name() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"needs the Redis at {REDIS_URL}: {exc}")
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(client.scan_iter(match=f"*{name}*", count=1000))
    if keys:
        client.delete(*keys)
    for registry in ("rq:queues", "rq:workers"):  # RQ's global sets name the queue and its workers too
        members = [m for m in client.smembers(registry) if name.encode() in m]
        if members:
            client.srem(registry, *members)


def test_reembedding_on_rq(make_client: Callable[..., TestClient], models: Models, rq_queue_name: str,
                           fresh_index: Callable[..., tuple[Path, Path]]) -> None:
    from img_search.jobs.tasks import Runtime
    from img_search.jobs.worker import work

    _, index_dir = fresh_index(clip=True, siglip=False)
    client = make_client(index_dir, redis_url=REDIS_URL, queue_name=rq_queue_name)
    run = client.post("/api/v1/admin/reembed", json={"batch_size": 4}, headers=KEY).json()
    assert run["backend"] == "rq" and run["state"] == "queued" and run["queued"] == 3 and run["workers"] == 0
    settings = service_settings(index_dir, models, redis_url=REDIS_URL, queue_name=rq_queue_name)
    work(settings, burst=True, logging_level="WARNING", runtime=Runtime(settings, encoders=models.encoders.get))
    done = _wait(client, "/api/v1/admin/siglip/status")
    assert done["run_id"] == run["run_id"] and done["state"] == "finished" and done["complete"] is True
    assert done["images_done"] == 12 and done["saved_index"] == "synced"


def test_redis_down_is_503_and_search_still_works(make_client: Callable[..., TestClient],
                                                  indexed: tuple[Path, Path]) -> None:
    client = make_client(indexed[1], redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    for answer in (client.get("/api/v1/admin/siglip/status", headers=KEY),
                   client.post("/api/v1/admin/reembed", json={}, headers=KEY)):
        # the documented kind and the library's message as it is (was "internal", "internal error (...)")
        assert answer.status_code == 503 and answer.json()["error"] == "unavailable"
        assert answer.json()["message"].startswith("cannot reach Redis at redis://127.0.0.1:1/0")
    assert client.post("/api/v1/search", json={"query": "a photo"}).status_code == 200


def test_serve_watch_indexes_new_images(models: Models, fresh_index: Callable[..., tuple[Path, Path]]) -> None:
    from helpers import make_jpeg

    from img_search.service.app import create_app

    photos, index_dir = fresh_index(clip=True, siglip=True)
    settings = service_settings(index_dir, models, watch_debounce_s=0.3)
    app = create_app(settings, opener=models.opener(), watch=[str(photos)])
    with TestClient(app) as client:
        assert app.state.jobs.watcher.status()[0]["mode"] == "events"
        new = make_jpeg(photos / "a" / "arrived.jpg", seed=77)
        deadline = time.monotonic() + 30
        while [c["points"] for c in client.get("/api/v1/health").json()["collections"]] != [13, 13]:
            assert time.monotonic() < deadline, "the new image was not indexed with both models"
            time.sleep(0.05)
        with Catalog.in_dir(index_dir, readonly=True) as cat:
            row = cat.image(str(new))
            assert row is not None and row.status == "ok"


def test_job_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from img_search.errors import ConfigError
    from img_search.service.config import load_service_settings

    for name in ("REDIS_URL", "IMG_SEARCH_SERVICE__REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert load_service_settings(tmp_path).service.redis_url is None  # no Redis: jobs run in process
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")  # the seed's variable
    assert load_service_settings(tmp_path).service.redis_url == "redis://redis:6379/0"
    monkeypatch.setenv("IMG_SEARCH_SERVICE__REDIS_URL", "redis://other:6379/1")  # our own name wins
    assert load_service_settings(tmp_path).service.redis_url == "redis://other:6379/1"
    monkeypatch.setenv("IMG_SEARCH_SERVICE__REDIS_URL", "localhost:6379")
    with pytest.raises(ConfigError, match="redis_url must start with redis://"):
        load_service_settings(tmp_path)
    monkeypatch.delenv("IMG_SEARCH_SERVICE__REDIS_URL")
    monkeypatch.setenv("IMG_SEARCH_SERVICE__ALLOWED_ROOTS", '["photos"]')
    with pytest.raises(ConfigError, match="allowed_roots must be absolute"):
        load_service_settings(tmp_path)
    monkeypatch.setenv("IMG_SEARCH_SERVICE__ALLOWED_ROOTS", '["~/photos", "/srv/photos"]')
    roots = load_service_settings(tmp_path).service.allowed_roots
    assert roots == (os.path.expanduser("~/photos"), "/srv/photos")
