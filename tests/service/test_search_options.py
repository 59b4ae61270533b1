"""The HTTP API's issue-9 fields: filters, sort, hybrid, expansion and temperature on text, upload and by-id searches,
bad values as 422, and the `--server` client sending them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

SEARCH = "/api/v1/search"


def _paths(response: dict) -> list[str]:
    return [h["path"] for h in response["hits"]]


def test_folder_filter_and_limit(client: TestClient, indexed: tuple[Path, Path]) -> None:
    photos, _ = indexed
    body = {"query": "a dog", "limit": 4, "model": "image_assets_siglip", "filters": {"folders": [str(photos / "a")]}}
    r = client.post(SEARCH, json=body)
    assert r.status_code == 200, r.text
    paths = _paths(r.json())
    assert len(paths) == 4 and all(p.startswith(str(photos / "a") + "/") for p in paths)
    assert all(h["matched"] == "embedding" and h["score"] is not None for h in r.json()["hits"])


def test_sort_by_date_and_temperature(client: TestClient) -> None:
    body = {"query": "a dog", "limit": 5, "model": "image_assets_siglip", "sort": "date", "temperature": 25.0,
            "hybrid": "off"}
    r = client.post(SEARCH, json=body)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert all(h["date_source"] == "modified" for h in hits)  # generated JPEGs carry no capture date
    dates = [h["date"] for h in hits]
    assert dates == sorted(dates, reverse=True)
    import math

    for h in hits:  # the seed's sigmoid(T * cos)
        assert h["probability"] == pytest.approx(1 / (1 + math.exp(-25.0 * h["cosine"])), rel=1e-6)


def test_image_queries_take_filters_as_parameters(client: TestClient, indexed: tuple[Path, Path]) -> None:
    photos, _ = indexed
    r = client.get("/api/v1/images/1/similar", params={"folder": str(photos / "b"), "limit": 3,
                                                        "model": "image_assets_siglip"})
    assert r.status_code == 200, r.text
    assert all(p.startswith(str(photos / "b") + "/") for p in _paths(r.json())) and len(r.json()["hits"]) == 3
    data = (photos / "a" / "img01.jpg").read_bytes()
    r = client.post("/api/v1/search/image", params={"folder": str(photos / "b"), "sort": "date"},
                    files={"file": ("x.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert all(p.startswith(str(photos / "b") + "/") for p in _paths(r.json()))


@pytest.mark.parametrize("extra", [
    {"filters": {"after": "yesterday"}}, {"filters": {"near": "1,2"}}, {"filters": {"bogus": 1}},
    {"hybrid": "maybe"}, {"weight": 1.5}, {"sort": "name"}, {"temperature": 0}, {"filters": {"min_size": "big"}},
    {"filters": {"after": "2023-05-02", "before": "2023-05-01"}}, {"filters": {"cameras": "Pixel"}},
    {"threshold": 5}, {"threshold": -1}, {"threshold": 1.01},
])
def test_bad_option_values_are_422(client: TestClient, extra: dict) -> None:
    r = client.post(SEARCH, json={"query": "a dog", **extra})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/json")


def test_bad_image_query_parameters_are_422(client: TestClient) -> None:
    for params in ({"near": "x"}, {"after": "May"}, {"sort": "name"}, {"threshold": "2"}, {"threshold": "-1"}):
        r = client.get("/api/v1/images/1/similar", params=params)
        assert r.status_code == 422, (params, r.text)


def test_client_sends_options(make_client: Callable[..., TestClient], indexed: tuple[Path, Path],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The --server path: client.search_text / search_image put the options in the request (captured here)."""
    from img_search.search.filters import build_filter
    from img_search.search.searcher import SearchOptions
    from img_search.service import client as http

    sent: list[tuple[str, dict | None, bytes | None]] = []

    def fake_call(base: str, method: str, path: str, *, query=None, body=None, **_: object) -> dict:  # type: ignore[no-untyped-def]
        sent.append((path, query, body))
        return {"hits": []}

    monkeypatch.setattr(http, "_call", fake_call)
    options = SearchOptions(filter=build_filter(after="2023-05-01", near="48.85,2.35,10km", tags=["x"]),
                            hybrid="weighted", weight=0.3, sort="date")
    http.search_text("http://127.0.0.1:1", "a dog", options=options)
    import json

    body = json.loads(sent[-1][2] or b"{}")
    assert body["hybrid"] == "weighted" and body["weight"] == 0.3 and body["sort"] == "date"
    assert body["filters"]["after"] == "2023-05-01T00:00:00" and body["filters"]["tags"] == ["x"]
    from img_search.service.schemas import SearchFilters

    again = SearchFilters(**body["filters"]).to_filter()  # what the server rebuilds equals what was sent
    assert again == options.filter
    photos, _ = indexed
    http.search_image("http://127.0.0.1:1", photos / "a" / "img01.jpg", options=options)
    query = sent[-1][1] or {}
    assert query["tag"] == ["x"] and query["sort"] == "date" and query["near"].endswith("m")
