"""``GET`` / ``POST /api/v1/map`` and ``GET /api/v1/duplicates`` over HTTP (no browser): GET reads the stored
layout only, POST makes or updates it; images indexed since counted as missing and placed by POST, deleted ones
left out, the
duplicates' groups as the library finds them, bad values refused with the API's errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from helpers import pattern
from ui_support import N_PHOTOS, UiCollection

from img_search.explore import duplicates as lib_duplicates
from img_search.search.collection import Collection

pytestmark = pytest.mark.timeout(600)


def test_map_made_on_request_then_kept_up_to_date(unmapped_server: str, unmapped_index: Path,
                                                  ui_collection: UiCollection, tmp_path: Path) -> None:
    url = unmapped_server + "/api/v1/map"
    missing = httpx.get(url)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert "img-search map" in missing.json()["message"]
    made = httpx.post(url, timeout=600).json()
    n = N_PHOTOS + 2
    assert made["points"] == n and made["missing"] == 0 and made["collection"] == "image_assets_siglip"
    assert len(made["image_ids"]) == len(made["latitude"]) == len(made["longitude"]) == n
    stored = httpx.get(url).json()
    assert stored["image_ids"] == made["image_ids"] and stored["latitude"] == made["latitude"]
    # an image indexed since: counted as missing (not placed by a GET), placed by a POST
    new = tmp_path / "new" / "late.jpg"
    new.parent.mkdir()
    pattern(999, (240, 160)).save(new, "JPEG", quality=90)
    ui_collection.index(new.parent, unmapped_index)
    later = httpx.get(url).json()
    assert later["points"] == n and later["missing"] == 1
    placed = httpx.post(url, timeout=600).json()
    assert placed["points"] == n + 1 and placed["missing"] == 0
    # the old points keep their places (transform of the new one, no refit below the growth factor)
    old = dict(zip(made["image_ids"], zip(made["latitude"], made["longitude"], strict=True), strict=True))
    now = dict(zip(placed["image_ids"], zip(placed["latitude"], placed["longitude"], strict=True), strict=True))
    assert all(now[i] == pytest.approx(old[i]) for i in old)
    # a deleted image leaves the map at once, before any update
    new.unlink()
    ui_collection.index(new.parent, unmapped_index)
    gone = httpx.get(url).json()
    assert gone["points"] == n and set(gone["image_ids"]) == set(made["image_ids"])
    # by collection or model name; unknown names are the API's 404
    assert httpx.get(url, params={"model": ui_collection.model}).json()["collection"] == "image_assets_siglip"
    unknown = httpx.get(url, params={"model": "nope"})
    assert unknown.status_code == 404 and "nope" in unknown.json()["message"]


def test_duplicates_are_the_library_groups(server: str, ui_collection: UiCollection) -> None:
    answer = httpx.get(server + "/api/v1/duplicates", params={"threshold": 0.99}).json()
    collection = Collection.open(ui_collection.index_dir, ui_collection.model)
    try:
        expected = lib_duplicates.find_duplicates(collection, threshold=0.99)
    finally:
        collection.close()
    assert answer["total_groups"] == len(expected) > 0
    assert [g["image_ids"] for g in answer["groups"]] == [list(g.image_ids) for g in expected]
    assert [g["min_cosine"] for g in answer["groups"]] == pytest.approx([g.min_cosine for g in expected])
    assert all(g["size"] == len(g["paths"]) == len(g["image_ids"]) for g in answer["groups"])
    assert answer["threshold"] == 0.99 and answer["k"] == 10
    default = httpx.get(server + "/api/v1/duplicates").json()  # the [explore] settings' defaults
    assert (default["threshold"], default["k"]) == (ui_collection.settings.explore.duplicate_threshold,
                                                    ui_collection.settings.explore.duplicate_neighbours) == (0.95, 10)
    first = httpx.get(server + "/api/v1/duplicates", params={"threshold": 0.99, "limit": 1}).json()
    assert len(first["groups"]) == 1 and first["total_groups"] == len(expected)
    assert first["groups"][0] == answer["groups"][0]


@pytest.mark.parametrize("params", [{"threshold": "2"}, {"threshold": "-1.5"}, {"threshold": "nan"},
                                    {"threshold": "x"}, {"k": "0"}, {"k": "1001"}, {"limit": "0"}])
def test_duplicates_bad_values_are_422(server: str, params: dict[str, str]) -> None:
    answer = httpx.get(server + "/api/v1/duplicates", params=params)
    assert answer.status_code == 422 and answer.json()["error"] == "invalid_input"
    assert next(iter(params)) in answer.json()["message"]


def test_map_bad_values_are_422(server: str) -> None:
    for call in (httpx.get, httpx.post):
        answer = call(server + "/api/v1/map", params={"model": ""})
        assert answer.status_code == 422 and "model" in answer.json()["message"]
