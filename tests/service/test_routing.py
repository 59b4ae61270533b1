"""The SigLIP rollout through the running app: runtime switch and rollback through the admin route, stickiness per
user, refusal of an incomplete SigLIP collection (response and log say why), forcing it, and collections catching
up with `index` runs without a restart."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import API_KEY, N_PHOTOS, Models, make_photos
from fastapi.testclient import TestClient

from img_search.catalog import Catalog

SEARCH = "/api/v1/search"
ADMIN = "/api/v1/admin/rollout"
KEY = {"X-API-Key": API_KEY}


def _collection(client: TestClient, **body: object) -> str:
    r = client.post(SEARCH, json={"query": "a bird", "limit": 1, **body})
    assert r.status_code == 200, r.text
    name: str = r.json()["collection"]
    return name


def test_runtime_switch_and_rollback(client: TestClient) -> None:
    users = [f"user-{i}" for i in range(60)]
    assert {_collection(client, user_id=u) for u in users} == {"image_assets"}  # settings: 0 %
    r = client.post(ADMIN, json={"percentage": 100}, headers=KEY)
    assert r.status_code == 200 and r.json()["source"] == "admin" and r.json()["siglip_routable"]
    assert {_collection(client, user_id=u) for u in users} == {"image_assets_siglip"}  # the next request, no restart
    assert client.get(ADMIN, headers=KEY).json()["percentage"] == 100
    client.post(ADMIN, json={"percentage": 0}, headers=KEY)  # rollback
    assert {_collection(client, user_id=u) for u in users} == {"image_assets"}


def test_users_are_sticky_and_split_by_the_percentage(client: TestClient) -> None:
    client.post(ADMIN, json={"percentage": 50}, headers=KEY)
    users = list(range(200))
    first = {u: _collection(client, user_id=u) for u in users}
    assert first == {u: _collection(client, user_id=u) for u in users}  # every user keeps their collection
    assert first == {u: _collection(client, user_id=str(u)) for u in users}  # 23 and "23" are one user
    share = sum(c == "image_assets_siglip" for c in first.values()) / len(users)
    assert 0.35 <= share <= 0.65
    sessions = {k: _collection(client, session_key=k) for k in ("s1", "s2", "s3", "s4")}
    assert sessions == {k: _collection(client, session_key=k) for k in sessions}
    routing = client.post(SEARCH, json={"query": "x", "user_id": 7}).json()["routing"]
    assert routing["sticky_by"] == "user_id" and 0 <= routing["bucket"] < 100 and routing["percentage"] == 50
    assert client.post(SEARCH, json={"query": "x"}).json()["routing"]["sticky_by"] == "random"


def test_incomplete_siglip_is_refused_then_used_once_complete(
        fresh_index: Callable[..., tuple[Path, Path]], make_client: Callable[..., TestClient], models: Models,
        caplog: pytest.LogCaptureFixture) -> None:
    photos, index_dir = fresh_index(siglip="a")  # SigLIP holds half of the photos
    client = make_client(index_dir, siglip_rollout_percentage=100)
    status = client.get("/api/v1/health").json()["rollout"]
    assert status["active"] and not status["siglip_routable"] and "incomplete" in status["reason"]
    with caplog.at_level(logging.WARNING, logger="img_search.service"):
        r = client.post(SEARCH, json={"query": "a bird", "user_id": 1}).json()
    assert r["collection"] == "image_assets" and r["routing"]["rule"] == "incomplete"
    assert f"6 of the {N_PHOTOS} points" in r["routing"]["reason"]
    assert any("incomplete" in rec.getMessage() and "6 of the 12" in rec.getMessage() for rec in caplog.records)
    # the admin can force it (and undo that)
    forced = client.post(ADMIN, json={"percentage": 100, "force": True}, headers=KEY).json()
    assert forced["siglip_routable"] and forced["force"]
    r = client.post(SEARCH, json={"query": "a bird", "user_id": 1}).json()
    assert r["collection"] == "image_assets_siglip" and r["routing"]["forced"] and len(r["hits"]) == 6
    client.post(ADMIN, json={"percentage": 100}, headers=KEY)
    assert _collection(client, user_id=1) == "image_assets"
    # finish the re-embedding while the service runs: the next request sees a complete collection
    models.index(photos, index_dir, "siglip")
    r = client.post(SEARCH, json={"query": "a bird", "user_id": 1, "limit": 50}).json()
    assert r["collection"] == "image_assets_siglip" and r["routing"]["rule"] == "rollout"
    assert len(r["hits"]) == N_PHOTOS


def test_empty_siglip_collection_is_never_routed_to(fresh_index: Callable[..., tuple[Path, Path]],
                                                    make_client: Callable[..., TestClient], models: Models) -> None:
    """The seed's trap: USE_SIGLIP=true on a freshly created, still empty SigLIP collection."""
    _, index_dir = fresh_index(siglip=False)
    info = models.encoders[str(models.siglip)].info
    with Catalog.in_dir(index_dir) as catalog:  # the collection exists (as `collection create` makes it), empty
        catalog.ensure_model(str(models.siglip), family="siglip", dim=info.dim, logit_scale=info.logit_scale,
                             logit_bias=info.logit_bias)
    client = make_client(index_dir, use_siglip=True)
    points = {c["name"]: c["points"] for c in client.get("/api/v1/health").json()["collections"]}
    assert points == {"image_assets": N_PHOTOS, "image_assets_siglip": 0}
    r = client.post(SEARCH, json={"query": "x", "user_id": "u"}).json()
    assert r["collection"] == "image_assets" and r["routing"]["rule"] == "incomplete"
    assert "'image_assets_siglip' is empty" in r["routing"]["reason"] and len(r["hits"]) > 0
    asked = client.post(SEARCH, json={"query": "x", "model": "image_assets_siglip"})
    assert asked.status_code == 404 and "no images are indexed" in asked.json()["message"]


def test_one_model_indexed_takes_all_traffic_and_a_new_one_appears_without_restart(
        fresh_index: Callable[..., tuple[Path, Path]], make_client: Callable[..., TestClient],
        models: Models) -> None:
    photos, index_dir = fresh_index(siglip=False)
    client = make_client(index_dir, use_siglip=True)
    r = client.post(SEARCH, json={"query": "x", "user_id": 3}).json()
    assert r["collection"] == "image_assets" and r["routing"]["rule"] == "only_collection"
    assert not client.get("/api/v1/health").json()["rollout"]["active"]
    models.index(photos, index_dir, "siglip")  # the SigLIP collection is created while the service runs
    h = client.get("/api/v1/health").json()
    assert {c["name"] for c in h["collections"]} == {"image_assets", "image_assets_siglip"}
    assert h["rollout"]["active"] and h["rollout"]["siglip_routable"]
    assert _collection(client, user_id=3) == "image_assets_siglip"  # USE_SIGLIP: 100 %


def test_new_images_are_searchable_without_restart(fresh_index: Callable[..., tuple[Path, Path]],
                                                   make_client: Callable[..., TestClient], models: Models) -> None:
    photos, index_dir = fresh_index()
    client = make_client(index_dir)
    before = client.get("/api/v1/health").json()["images"]["ok"]
    make_photos(photos, n=3, start=100)
    models.index(photos, index_dir, "clip")
    r = client.post(SEARCH, json={"query": "x", "limit": 100, "model": "image_assets"}).json()
    assert before == N_PHOTOS and len(r["hits"]) == N_PHOTOS + 3
    # SigLIP now lags behind CLIP: incomplete, so the rollout keeps its traffic on CLIP
    client.post(ADMIN, json={"percentage": 100}, headers=KEY)
    assert client.post(SEARCH, json={"query": "x"}).json()["routing"]["rule"] == "incomplete"


def test_dimension_mismatch_is_not_served(make_client: Callable[..., TestClient], indexed: tuple[Path, Path]
                                          ) -> None:
    client = make_client(indexed[1], siglip_dim=768, use_siglip=True)  # the tiny SigLIP gives 32 dims
    h = client.get("/api/v1/health").json()
    siglip = next(c for c in h["collections"] if c["name"] == "image_assets_siglip")
    assert h["status"] == "degraded" and "32-dim vectors but the settings say 768" in siglip["problem"]
    r = client.post(SEARCH, json={"query": "x"}).json()
    assert r["collection"] == "image_assets" and "not served" in r["routing"]["reason"]
    asked = client.post(SEARCH, json={"query": "x", "model": "image_assets_siglip"})
    assert asked.status_code == 409 and asked.json()["error"] == "conflict"
