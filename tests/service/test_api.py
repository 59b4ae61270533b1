"""The HTTP API through FastAPI's TestClient: searches, metadata, health, dependency overrides, and every bad
request answered with a 4xx JSON error (never a 500)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import API_KEY, N_PHOTOS, Models
from fastapi.testclient import TestClient
from helpers import pattern

from img_search.service.deps import get_router
from img_search.service.schemas import MAX_LIMIT

SEARCH = "/api/v1/search"
UPLOAD = "/api/v1/search/image"
HIT_KEYS = {"id", "path", "cosine", "probability", "width", "height", "model", "collection", "score", "text_score",
            "matched", "date", "date_source"}


def _jpeg_bytes(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    out = io.BytesIO()
    pattern(seed, size).save(out, "JPEG", quality=90)
    return out.getvalue()


def _error(response: Any, status: int, kind: str, needle: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == kind and needle in body["message"], body
    return body


def test_text_search_answers_with_hits_and_routing(client: TestClient, indexed: tuple[Path, Path],
                                                   models: Models) -> None:
    photos, _ = indexed
    r = client.post(SEARCH, json={"query": "sunset over mountains", "limit": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["collection"] == "image_assets" and body["model"] == str(models.clip)  # rollout 0 %: all CLIP
    assert body["routing"]["rule"] == "rollout" and body["routing"]["percentage"] == 0
    assert len(body["hits"]) == 5 and all(set(h) == HIT_KEYS for h in body["hits"])
    assert all(h["probability"] is None and h["collection"] == "image_assets" for h in body["hits"])  # CLIP
    cosines = [h["cosine"] for h in body["hits"]]
    assert cosines == sorted(cosines, reverse=True)
    assert all(h["path"].startswith(str(photos)) for h in body["hits"])
    siglip = client.post(SEARCH, json={"query": "sunset", "limit": MAX_LIMIT, "model": "image_assets_siglip"}).json()
    assert siglip["routing"]["rule"] == "requested" and len(siglip["hits"]) == N_PHOTOS  # what exists
    assert all(0 < h["probability"] < 1 for h in siglip["hits"])  # SigLIP: calibrated
    by_path = client.post(SEARCH, json={"query": "sunset", "model": str(models.siglip)}).json()
    assert by_path["collection"] == "image_assets_siglip"


def test_threshold_applies_to_probability_for_siglip(client: TestClient) -> None:
    hits = client.post(SEARCH, json={"query": "a dog", "limit": 12, "model": "image_assets_siglip"}).json()["hits"]
    cut = sorted(h["probability"] for h in hits)[6]
    kept = client.post(SEARCH, json={"query": "a dog", "limit": 12, "model": "image_assets_siglip",
                                     "threshold": cut}).json()["hits"]
    assert kept and all(h["probability"] >= cut for h in kept) and len(kept) < len(hits)


def test_upload_search_finds_the_indexed_copy_first(client: TestClient, indexed: tuple[Path, Path]) -> None:
    photos, _ = indexed
    data = (photos / "a" / "img03.jpg").read_bytes()
    r = client.post(UPLOAD, files={"file": ("x.jpg", data, "image/jpeg")}, params={"limit": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["path"] == str(photos / "a" / "img03.jpg") and hits[0]["cosine"] == pytest.approx(1, abs=1e-5)
    fresh = client.post(UPLOAD, files={"file": ("new.jpg", _jpeg_bytes(99), "image/jpeg")},
                        params={"model": "image_assets_siglip", "limit": 4}).json()
    assert len(fresh["hits"]) == 4 and all(h["probability"] is None for h in fresh["hits"])  # image -> image: cosine


def test_similar_by_id_leaves_the_image_out(client: TestClient) -> None:
    r = client.get("/api/v1/images/3/similar", params={"limit": 50})
    assert r.status_code == 200, r.text
    ids = [h["id"] for h in r.json()["hits"]]
    assert 3 not in ids and len(ids) == N_PHOTOS - 1


def test_image_metadata_and_thumbnail(client: TestClient, indexed: tuple[Path, Path]) -> None:
    info = client.get("/api/v1/images/1").json()
    assert info["status"] == "ok" and Path(info["path"]).is_file() and info["width"] == 96
    assert sorted(info["collections"]) == ["image_assets", "image_assets_siglip"]
    thumb = client.get(info["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff" and info["content_hash"] in thumb.headers["etag"]


def test_health_reports_collections_and_rollout(client: TestClient, indexed: tuple[Path, Path]) -> None:
    h = client.get("/api/v1/health").json()
    assert h["status"] == "ok" and h["index_dir"] == str(indexed[1]) and h["images"] == {"ok": N_PHOTOS}
    by_name = {c["name"]: c for c in h["collections"]}
    assert set(by_name) == {"image_assets", "image_assets_siglip"}
    for c in by_name.values():
        assert c["points"] == N_PHOTOS and c["backend"] == "exact" and c["generation"] and c["model_loaded"]
    assert h["rollout"]["active"] and h["rollout"]["siglip_routable"] and h["rollout"]["percentage"] == 0


def test_health_of_an_empty_index_dir(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(tmp_path / "nothing-yet")
    h = client.get("/api/v1/health")
    assert h.status_code == 200 and h.json()["status"] == "empty" and h.json()["collections"] == []
    _error(client.post(SEARCH, json={"query": "x"}), 404, "not_found", "img-search index")
    _error(client.get("/api/v1/images/1"), 404, "not_found", "no catalog")


def test_dependencies_are_overridable(client: TestClient, indexed: tuple[Path, Path]) -> None:
    app = client.app
    real = app.state.router  # type: ignore[attr-defined]
    calls: list[str | None] = []

    class Spy:
        def route(self, model: str | None = None, **kwargs: Any) -> Any:
            calls.append(model)
            return real.route("image_assets_siglip", **kwargs)

    app.dependency_overrides[get_router] = lambda: Spy()  # type: ignore[attr-defined]
    try:
        body = client.post(SEARCH, json={"query": "a cat"}).json()
    finally:
        app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert calls == [None] and body["collection"] == "image_assets_siglip"


# ------------------------------------------------------------------------------------------------- bad requests
BAD_SEARCHES: dict[str, tuple[Any, int, str, str]] = {
    "empty query": ({"query": ""}, 422, "invalid_input", "body.query"),
    "blank query": ({"query": " \t\n\u3000"}, 422, "invalid_input", "only white space"),
    "no query": ({"limit": 3}, 422, "invalid_input", "body.query: Field required"),
    "query too long": ({"query": "x" * 1001}, 422, "invalid_input", "body.query"),
    "limit 0": ({"query": "x", "limit": 0}, 422, "invalid_input", "body.limit"),
    "limit over max": ({"query": "x", "limit": MAX_LIMIT + 1}, 422, "invalid_input", "less than or equal to 1000"),
    "limit not int": ({"query": "x", "limit": "ten"}, 422, "invalid_input", "body.limit"),
    "limit float": ({"query": "x", "limit": 2.5}, 422, "invalid_input", "body.limit"),
    "threshold text": ({"query": "x", "threshold": "high"}, 422, "invalid_input", "body.threshold"),
    "unknown field": ({"query": "x", "limt": 3}, 422, "invalid_input", "body.limt"),
    "unknown model": ({"query": "x", "model": "nope"}, 404, "not_found", "image_assets_siglip"),
    # model names are compared as text: a path in a request is never resolved on the server's disk
    "relative model path": ({"query": "x", "model": "../models0/tiny-siglip"}, 404, "not_found", "served:"),
    # one message, not one per member of the str | int union named by pydantic's internal tags
    "user_id bool": ({"query": "x", "user_id": True}, 422, "invalid_input",
                     "body.user_id: Value error, a user id is a string or a whole number, got true"),
    "user_id list": ({"query": "x", "user_id": [1]}, 422, "invalid_input", "a string or a whole number, got [1]"),
    "user_id fraction": ({"query": "x", "user_id": 1.5}, 422, "invalid_input", "a whole number, got 1.5"),
    "not an object": ([1, 2], 422, "invalid_input", "body"),
}


@pytest.mark.parametrize("case", sorted(BAD_SEARCHES))
def test_bad_search_requests_are_4xx_json(client: TestClient, case: str) -> None:
    payload, status, kind, needle = BAD_SEARCHES[case]
    _error(client.post(SEARCH, json=payload), status, kind, needle)


@pytest.mark.parametrize("raw", [b"{bad json", b"", b'{"query": "x", "limit": NaN}', b'{"query": "x",}',
                                 b"\xff\xfe", b'{"query": "x", "threshold": Infinity}'])
def test_malformed_json_is_422(client: TestClient, raw: bytes) -> None:
    r = client.post(SEARCH, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_input", r.text


def test_wrong_content_type_and_methods_and_routes(client: TestClient) -> None:
    _error(client.post(SEARCH, content=b"query=x", headers={"content-type": "application/x-www-form-urlencoded"}),
           422, "invalid_input")
    r = _error(client.get(SEARCH), 405, "method_not_allowed", "GET is not allowed")
    assert r and client.get(SEARCH).headers["allow"] == "POST"
    assert client.put("/api/v1/admin/rollout").headers["allow"] == "GET, POST"  # both routes of the path
    _error(client.get("/api/v1/nowhere"), 404, "not_found", "no such route")
    _error(client.post(SEARCH, content=b"x" * 70_000, headers={"content-type": "application/json"}), 413,
           "too_large", "limit of 65,536 bytes")


@pytest.mark.parametrize("path", ["/api/v1/images/999999", "/api/v1/images/999999/similar",
                                  "/api/v1/images/999999/thumbnail"])
def test_unknown_image_ids_are_404(client: TestClient, path: str) -> None:
    _error(client.get(path), 404, "not_found", "999999")


@pytest.mark.parametrize("path", ["/api/v1/images/abc", "/api/v1/images/-1/similar", "/api/v1/images/1.5/thumbnail",
                                  f"/api/v1/images/{2**64}", "/api/v1/images/1/similar?limit=0",
                                  "/api/v1/images/1/similar?limit=1001", "/api/v1/images/1/similar?threshold=nan",
                                  "/api/v1/images/1/similar?model="])
def test_bad_image_requests_are_422(client: TestClient, path: str) -> None:
    _error(client.get(path), 422, "invalid_input")


def test_map_of_too_few_images_is_422_as_the_cli_says_and_writes_nothing(
        make_client: Callable[..., TestClient], fresh_index: Callable[..., tuple[Path, Path]], models: Models) -> None:
    """POST /api/v1/map of a collection UMAP cannot fit (6 SigLIP images) refuses with `img-search map`'s error, not
    a layout along the equator."""
    from img_search.explore.sphere import MIN_FIT_POINTS
    from img_search.explore.umap_map import MAPS_DIR

    _, index_dir = fresh_index(siglip="a")  # SigLIP: the 6 photos under a/
    client = make_client(index_dir)
    body = _error(client.post("/api/v1/map", params={"model": str(models.siglip)}), 422, "invalid_input")
    assert body["message"] == (f"the map needs at least {MIN_FIT_POINTS} images; the collection of {models.siglip} "
                               "holds 6: index more images first")
    assert not (index_dir / MAPS_DIR).exists()
    _error(client.get("/api/v1/map", params={"model": str(models.siglip)}), 404, "not_found", "no map yet")


def test_uploads_that_are_not_images_are_422(client: TestClient) -> None:
    for data in (b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, _jpeg_bytes(1)[:200]):
        _error(client.post(UPLOAD, files={"file": ("x.jpg", data, "image/jpeg")}), 422, "invalid_input")
    _error(client.post(UPLOAD, data={"other": "x"}), 422, "invalid_input", "file")  # no file part
    _error(client.post(UPLOAD, content=b"x", headers={"content-type": "text/plain"}), 422, "invalid_input")


def _oversized_multipart(total: int) -> tuple[bytes, str]:
    boundary = "b0undary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + b"\xff" * (total - len(head) - len(tail)) + tail, f"multipart/form-data; boundary={boundary}"


def test_oversized_uploads_are_refused_before_being_read(make_client: Callable[..., TestClient],
                                                         indexed: tuple[Path, Path]) -> None:
    limit = 64 * 1024
    client = make_client(indexed[1], max_upload_bytes=limit)
    body, ctype = _oversized_multipart(limit + 1)
    _error(client.post(UPLOAD, content=body, headers={"content-type": ctype}), 413, "too_large",
           f"limit of {limit:,} bytes")
    ok = client.post(UPLOAD, files={"file": ("x.jpg", _jpeg_bytes(5), "image/jpeg")})
    assert ok.status_code == 200
    # no Content-Length (chunked): the app stops asking for the body right after the limit is passed. Driven at
    # the ASGI level because TestClient's transport reads a streamed body whole before the app sees it.
    chunk = 8192
    asked: list[int] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        asked.append(len(asked))
        piece = body[:chunk] if len(asked) == 1 else b"\xff" * chunk
        return {"type": "http.request", "body": piece, "more_body": True}  # an endless body

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": UPLOAD, "raw_path": UPLOAD.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", ctype.encode()), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
    anyio.run(client.app, scope, receive, send)  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert start["status"] == 413 and payload["error"] == "too_large"
    assert len(asked) == limit // chunk + 1, "the body was read past the limit"


def test_admin_routes_need_the_key(make_client: Callable[..., TestClient], indexed: tuple[Path, Path]) -> None:
    client = make_client(indexed[1])
    _error(client.get("/api/v1/admin/rollout"), 401, "unauthorized", "X-API-Key")
    _error(client.post("/api/v1/admin/rollout", json={"percentage": 50}, headers={"X-API-Key": "wrong"}), 403,
           "forbidden")
    assert client.get("/api/v1/admin/rollout", headers={"X-API-Key": API_KEY}).status_code == 200
    for bad in ({"percentage": 101}, {"percentage": -1}, {}, {"percentage": 5, "extra": 1}):
        _error(client.post("/api/v1/admin/rollout", json=bad, headers={"X-API-Key": API_KEY}), 422, "invalid_input")
    disabled = make_client(indexed[1], api_key=None)
    _error(disabled.get("/api/v1/admin/rollout", headers={"X-API-Key": API_KEY}), 404, "not_found", "disabled")
