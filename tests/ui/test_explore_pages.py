"""The map and duplicates pages end to end in headless Chromium: the map is made on request when there is none, a
clicked point opens its image and neighbours, zoom and pan (buttons, wheel, drag, keys) move the view, search
results are highlighted (the map's own search box, and the search page's "Show on the map" after the threshold
slider); the duplicates page groups the copies of a photo; both fit a phone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from ui_support import DUPLICATE_OF, N_PHOTOS, PHONE

pytestmark = pytest.mark.timeout(600)

N_IMAGES = N_PHOTOS + 2  # and the two copies


def _map_ready(page: Any, timeout_s: float = 30) -> None:
    page.wait_for_function("window.imgSearchMap && window.imgSearchMap.ready", timeout=timeout_s * 1000)


def _drawn_pixels(page: Any) -> int:
    """Pixels of the map canvas that are not blank (points and graticule)."""
    return int(page.evaluate("""(() => {
        const c = document.getElementById('map'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return n; })()"""))


def _isolated_point(page: Any) -> tuple[int, dict[str, float]]:
    """The id whose point is farthest on screen from any other (a click on it can only mean it), and where it is."""
    ids = page.evaluate("window.imgSearchMap.ids()")
    where = {i: page.evaluate(f"window.imgSearchMap.project({i})") for i in ids}
    def gap(i: int) -> float:
        return min(math.dist((where[i]["x"], where[i]["y"]), (where[j]["x"], where[j]["y"])) for j in ids if j != i)
    best = max((i for i in ids if where[i]["visible"]), key=gap)
    assert gap(best) > 14, "every point overlaps another: the click test needs one on its own"
    return best, where[best]


def test_map_is_made_on_request_when_there_is_none(open_page: Any, unmapped_server: str) -> None:
    page, watch = open_page("/map", base=unmapped_server)
    page.wait_for_selector("#error:not([hidden])")
    assert "no map yet" in page.inner_text("#error")
    assert watch.refused and watch.refused[0].startswith("HTTP 404")
    page.get_by_role("button", name="Update the map").click()
    _map_ready(page, timeout_s=600)  # a first UMAP fit in this process: numba compiles for tens of seconds
    assert len(page.evaluate("window.imgSearchMap.ids()")) == N_IMAGES
    assert page.locator("#error").is_hidden()
    assert f"{N_IMAGES} images" in page.inner_text("#status")
    page.wait_for_timeout(100)
    assert _drawn_pixels(page) > 0
    # made once, stored: the next page load reads it without asking for an update
    layout = httpx.get(unmapped_server + "/api/v1/map").json()
    assert layout["points"] == N_IMAGES and layout["missing"] == 0
    assert all(-90 <= v <= 90 for v in layout["latitude"]) and all(-180 <= v <= 180 for v in layout["longitude"])


def test_click_a_point_opens_its_image_and_neighbours(open_page: Any, mapped_server: str) -> None:
    page, _ = open_page("/map")
    _map_ready(page)
    image_id, at = _isolated_point(page)
    page.mouse.click(at["x"], at["y"])
    page.wait_for_selector("#selected img")
    page.wait_for_function("document.querySelectorAll('#neighbours button').length > 0")
    assert page.evaluate("window.imgSearchMap.selected()") == image_id
    info = httpx.get(f"{mapped_server}/api/v1/images/{image_id}").json()
    assert page.inner_text("#selected .name") == Path(info["path"]).name
    assert page.get_attribute("#selected img", "src") == f"/api/v1/images/{image_id}/thumbnail"
    similar = httpx.get(f"{mapped_server}/api/v1/images/{image_id}/similar",
                        params={"limit": 12, "model": "image_assets_siglip"}).json()
    neighbour_ids = [int(x) for x in page.eval_on_selector_all("#neighbours button",
                                                               "els => els.map(e => e.dataset.id)")]
    assert neighbour_ids == [h["id"] for h in similar["hits"]] and image_id not in neighbour_ids
    assert sorted(page.evaluate("window.imgSearchMap.neighbours()")) == sorted(neighbour_ids)
    page.wait_for_function("[...document.querySelectorAll('#neighbours img, #selected img')].every(i => i.complete)")
    assert page.evaluate("[...document.querySelectorAll('#neighbours img')].every(i => i.naturalWidth > 0)")
    # a neighbour opens in turn, centred on the map
    page.locator("#neighbours button").first.click()
    page.wait_for_function(f"window.imgSearchMap.selected() === {neighbour_ids[0]}")
    centre = page.evaluate(f"window.imgSearchMap.project({neighbour_ids[0]})")
    box = page.locator("#map").bounding_box()
    assert centre["x"] == pytest.approx(box["x"] + box["width"] / 2, abs=1)
    # "More like this" leads to the search page's similar search
    page.get_by_role("link", name="More like this").click()
    page.wait_for_url(f"**/?like={neighbour_ids[0]}")
    page.wait_for_function("document.querySelectorAll('#grid .card').length > 0")


def test_zoom_and_pan(open_page: Any, mapped_server: str) -> None:
    page, _ = open_page("/map")
    _map_ready(page)
    image_id = page.evaluate("window.imgSearchMap.ids()[0]")
    where = lambda: page.evaluate(f"window.imgSearchMap.project({image_id})")  # noqa: E731
    scale = lambda: page.evaluate("window.imgSearchMap.scale()")  # noqa: E731
    fitted = scale()
    page.get_by_role("button", name="Zoom in").click()
    assert scale() == pytest.approx(fitted * 1.5)
    page.get_by_role("button", name="Zoom out").click()
    assert scale() == pytest.approx(fitted)
    box = page.locator("#map").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)  # wheel up: zoom in around the pointer
    page.wait_for_function(f"window.imgSearchMap.scale() > {fitted * 1.5}")
    page.get_by_role("button", name="Fit all").click()
    assert scale() == pytest.approx(fitted)
    before = where()
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 80, box["y"] + 50, steps=5)
    page.mouse.up()
    after = where()
    assert (after["x"] - before["x"], after["y"] - before["y"]) == (pytest.approx(60, abs=1), pytest.approx(30, abs=1))
    assert page.evaluate("window.imgSearchMap.selected()") is None  # a drag is not a click
    # keys on the focused map: arrows pan a tenth of the view, + zooms, Enter opens the point nearest the centre
    page.focus("#map")
    page.keyboard.press("ArrowLeft")
    moved = where()
    assert moved["x"] - after["x"] == pytest.approx(box["width"] * 0.1, abs=1)
    page.keyboard.press("+")
    assert scale() == pytest.approx(fitted * 1.5)
    page.keyboard.press("0")
    page.keyboard.press("Enter")
    page.wait_for_selector("#selected img")
    chosen = page.evaluate("window.imgSearchMap.selected()")
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    distances = {i: math.dist(centre, (p["x"], p["y"])) for i in page.evaluate("window.imgSearchMap.ids()")
                 for p in [page.evaluate(f"window.imgSearchMap.project({i})")]}
    assert distances[chosen] == pytest.approx(min(distances.values()))
    page.keyboard.press("Escape")
    assert page.evaluate("window.imgSearchMap.selected()") is None


def test_search_results_are_highlighted(open_page: Any, mapped_server: str, screenshot: Any) -> None:
    page, _ = open_page("/map")
    _map_ready(page)
    page.fill("#q", "a sandy beach")
    page.press("#q", "Enter")
    page.wait_for_function("window.imgSearchMap.highlighted().length > 0")
    hits = httpx.post(mapped_server + "/api/v1/search",
                      json={"query": "a sandy beach", "limit": 200, "model": "image_assets_siglip"}).json()["hits"]
    assert sorted(page.evaluate("window.imgSearchMap.highlighted()")) == sorted(h["id"] for h in hits)
    assert "results highlighted" in page.inner_text("#status")
    page.get_by_role("button", name="Clear").click()
    assert page.evaluate("window.imgSearchMap.highlighted()") == []
    # from the search page: the hits left by the threshold slider, and only those
    page.goto(mapped_server + "/?q=a+sandy+beach")
    page.wait_for_function("document.querySelectorAll('#grid .card').length > 0 && "
                           "!document.querySelector('#grid').hasAttribute('aria-busy')")
    page.fill("#threshold", "60")
    shown = sorted(int(x) for x in page.eval_on_selector_all("#grid .card:not([hidden])",
                                                              "els => els.map(e => e.dataset.id)"))
    assert 0 < len(shown) < N_IMAGES
    page.get_by_role("link", name="Show on the map").click()
    _map_ready(page)
    page.wait_for_function("window.imgSearchMap.highlighted().length > 0")
    assert sorted(page.evaluate("window.imgSearchMap.highlighted()")) == shown
    assert f"{len(shown)} results highlighted" in page.inner_text("#status")
    # highlights stay while a point is opened (the README's picture: results, selection, neighbours)
    _, at = _isolated_point(page)
    page.mouse.click(at["x"], at["y"])
    page.wait_for_function("document.querySelectorAll('#neighbours button').length > 0")
    page.wait_for_function("[...document.querySelectorAll('#neighbours img, #selected img')].every(i => i.complete)")
    assert sorted(page.evaluate("window.imgSearchMap.highlighted()")) == shown
    screenshot(page, "ui-map")


def test_duplicates_page_groups_the_copies(open_page: Any, mapped_server: str, ui_collection: Any,
                                           screenshot: Any) -> None:
    # the tiny random-weight model puts unrelated patterns of one colour above 0.95, so the page is asked for 0.99
    # (from its URL, as a link or a reload would); a real checkpoint keeps them apart at the default
    page, _ = open_page("/duplicates?threshold=0.99")
    page.wait_for_function("!document.querySelector('#groups').hasAttribute('aria-busy')")
    assert page.input_value("#threshold") == "0.99"
    api = httpx.get(mapped_server + "/api/v1/duplicates", params={"threshold": 0.99}).json()
    groups = page.locator("#groups > li")
    assert groups.count() == len(api["groups"]) > 1
    shown = [sorted(int(x) for x in groups.nth(g).locator("figure").evaluate_all("els => els.map(e => e.dataset.id)"))
             for g in range(groups.count())]
    assert shown == [sorted(g["image_ids"]) for g in api["groups"]]
    # the photo, its byte-identical copy and its re-encoded copy: the first group (largest, then closest), alone
    copies = {"photo00.jpg", "photo00-copy.jpg", "photo00-reencoded.jpg"}
    assert set(groups.first.locator("figcaption strong").all_inner_texts()) == copies
    assert {Path(p).name for p in api["groups"][0]["paths"]} == copies
    assert str(ui_collection.photos / DUPLICATE_OF) in api["groups"][0]["paths"]
    assert "3 images" in groups.first.locator("h3").inner_text()
    page.wait_for_function("[...document.querySelectorAll('#groups img')].every(i => i.complete)")
    assert page.evaluate("[...document.querySelectorAll('#groups img')].every(i => i.naturalWidth > 0)")
    assert f"{len(api['groups'])} groups" in page.inner_text("#status")
    screenshot(page, "ui-duplicates")
    # from the form: stricter, only the copies are left; looser, more images grouped
    grouped = sum(len(g["image_ids"]) for g in api["groups"])
    for threshold, compare in (("0.999", lambda n: n == 3), ("0.95", lambda n: n > grouped)):
        page.fill("#threshold", threshold)
        page.get_by_role("button", name="Find duplicates").click()
        page.wait_for_url(f"**/duplicates?threshold={threshold}")
        page.wait_for_function(f"document.querySelector('#status').textContent.includes('≥ {threshold}')")
        assert compare(page.locator("#groups figure").count()), threshold
    # a bad value is the API's message, in one line
    page.fill("#threshold", "2")
    page.get_by_role("button", name="Find duplicates").click()
    page.wait_for_selector("#error:not([hidden])")
    assert "threshold" in page.inner_text("#error")


@pytest.mark.parametrize("path", ["/map", "/duplicates"])
def test_explore_pages_fit_a_phone(open_page: Any, mapped_server: str, path: str) -> None:
    page, _ = open_page(path, viewport=PHONE)
    if path == "/map":
        _map_ready(page)
        _, at = _isolated_point(page)
        page.mouse.click(at["x"], at["y"])  # the panel opens below the map
        page.wait_for_function("document.querySelectorAll('#neighbours button').length > 0")
    else:
        page.wait_for_function("document.querySelectorAll('#groups > li').length > 0")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{path} is {width} px wide on a {PHONE['width']} px phone"


def test_a_large_map_is_drawn_through_the_pixel_buffer(open_page: Any, mapped_server: str) -> None:
    """20,000 points (above map.js's PIXEL_POINTS): drawn as pixels, each where ``project`` says, and picked the
    same way. The layout is served by the browser's request interception, not the app."""
    import json
    import random

    rng = random.Random(4)
    n = 20_000
    layout = {"model": "m", "collection": "image_assets_siglip", "points": n, "missing": 0,
              "image_ids": list(range(1_000_000, 1_000_000 + n)),
              "latitude": [round(rng.uniform(-40, 40), 5) for _ in range(n)],
              "longitude": [round(rng.uniform(-150, 150), 5) for _ in range(n)], "took_ms": 1.0}
    page, _ = open_page("/duplicates")  # any page: the map is loaded below, with its API answer intercepted
    page.route("**/api/v1/map", lambda route: route.fulfill(status=200, content_type="application/json",
                                                              body=json.dumps(layout)))
    page.goto(mapped_server + "/map")
    _map_ready(page)
    page.wait_for_timeout(100)
    sample = rng.sample(layout["image_ids"], 200)
    unlit = page.evaluate("""(ids) => {
        const c = document.getElementById('map'), box = c.getBoundingClientRect(), dpr = c.width / box.width;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return ids.filter(id => {
            const p = window.imgSearchMap.project(id);
            const x = Math.round((p.x - box.left) * dpr) + 1, y = Math.round((p.y - box.top) * dpr) + 1;
            return d[(y * c.width + x) * 4 + 3] === 0;
        }); }""", sample)
    assert unlit == []
    # zoomed in, the points keep their places under the pixels
    page.get_by_role("button", name="Zoom in").click()
    page.wait_for_timeout(100)
    visible = [i for i in sample if page.evaluate(f"window.imgSearchMap.project({i}).visible")]
    assert visible
    assert page.evaluate("""(ids) => {
        const c = document.getElementById('map'), box = c.getBoundingClientRect(), dpr = c.width / box.width;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return ids.every(id => { const p = window.imgSearchMap.project(id);
            const x = Math.round((p.x - box.left) * dpr) + 1, y = Math.round((p.y - box.top) * dpr) + 1;
            return d[(y * c.width + x) * 4 + 3] > 0; }); }""", visible)
