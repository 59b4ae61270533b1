"""The search page end to end in headless Chromium: a typed query shows thumbnails with calibrated scores, the
threshold slider hides the weaker hits, "more like this" searches by a result, an image chosen from disk searches by
image, a folder filter narrows the hits, the page fits a phone, and the keyboard alone reaches "more like this"."""

from __future__ import annotations

from typing import Any

import pytest
from ui_support import PHONE, UiCollection

pytestmark = pytest.mark.timeout(300)

CARDS = "#grid .card"
VISIBLE_CARDS = "#grid .card:not([hidden])"


def _search(page: Any, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelectorAll('#grid .card').length > 0 && "
                           "!document.querySelector('#grid').hasAttribute('aria-busy')")


def _thumbnails_loaded(page: Any) -> int:
    """How many result thumbnails the browser decoded (naturalWidth > 0), once every one finished loading."""
    page.wait_for_function("[...document.querySelectorAll('#grid .card img')].every(i => i.complete)")
    return int(page.evaluate("[...document.querySelectorAll('#grid .card img')].filter(i => i.naturalWidth > 0)"
                             ".length"))


def _card_ids(page: Any, selector: str = VISIBLE_CARDS) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.id)")]


def test_text_query_shows_thumbnails_with_probabilities(open_page: Any, screenshot: Any) -> None:
    page, _ = open_page("/")
    _search(page, "a red boat on the beach")
    cards = page.locator(CARDS)
    n = cards.count()
    assert n == 38  # the whole tiny collection (limit 40): 36 photos and the two copies
    # every card's thumbnail came from the API and decoded
    page.evaluate("document.querySelectorAll('#grid .card img').forEach(i => i.loading = 'eager')")
    assert _thumbnails_loaded(page) == n
    # in the API's order, with the calibrated probability of the tiny SigLIP collection shown as a percentage
    api = page.evaluate("fetch('/api/v1/search', {method: 'POST', headers: {'Content-Type': 'application/json'}, "
                        "body: JSON.stringify({query: 'a red boat on the beach', limit: 40})}).then(r => r.json())")
    assert _card_ids(page, CARDS) == [h["id"] for h in api["hits"]]
    assert page.inner_text("#threshold-kind") == "probability"
    scores = [float(s) for s in page.eval_on_selector_all(CARDS, "els => els.map(e => e.dataset.score)")]
    assert scores == pytest.approx([h["probability"] for h in api["hits"]])
    shown = page.eval_on_selector_all(f"{CARDS} .score", "els => els.map(e => e.textContent)")
    assert all(text.endswith(" %") for text in shown)
    assert float(shown[0].removesuffix(" %")) == pytest.approx(api["hits"][0]["probability"] * 100, rel=0.05)
    assert "Showing 38 of 38" in page.inner_text("#status")
    assert page.url.endswith("/?q=a+red+boat+on+the+beach")  # shareable, and Back returns to it
    screenshot(page, "ui-search")


def test_threshold_slider_hides_weaker_hits(open_page: Any) -> None:
    page, _ = open_page("/")
    _search(page, "mountains at sunset")
    total = page.locator(CARDS).count()
    cards = page.eval_on_selector_all(CARDS, "els => els.map(e => [Number(e.dataset.id), e.dataset.score, "
                                             "e.dataset.keep === '1'])")
    # matches by words (hybrid ranking) are kept whatever the threshold, as the API's threshold does
    words = {i for i, _, keep in cards if keep}
    scores = {i: float(s) for i, s, keep in cards if not keep}
    lo, hi = min(scores.values()), max(scores.values())
    for position, fraction in (("50", 0.5), ("100", 1.0)):
        page.fill("#threshold", position)
        expected = words | {i for i, s in scores.items() if s >= lo + (hi - lo) * fraction - 1e-12}
        assert set(_card_ids(page)) == expected
        assert f"Showing {len(expected)} of {total}" in page.inner_text("#status")
        assert len(expected) < total
    page.fill("#threshold", "50")
    fewer = page.locator(VISIBLE_CARDS).count()
    assert 0 < fewer < total  # fewer cards, but not none
    # the keyboard moves it too (arrow keys: 1 % of the range a step)
    page.focus("#threshold")
    page.keyboard.press("End")
    assert page.locator(VISIBLE_CARDS).count() == len(words) + sum(s == hi for s in scores.values())
    page.keyboard.press("Home")
    assert page.locator(VISIBLE_CARDS).count() == total


def test_more_like_this_searches_by_the_result(open_page: Any, ui_collection: UiCollection) -> None:
    page, _ = open_page("/")
    _search(page, "a forest path")
    first = page.locator(CARDS).nth(2)
    source_id = int(first.get_attribute("data-id"))
    name = first.locator(".name").inner_text()
    first.get_by_role("button", name="More like this").click()
    page.wait_for_function(f"document.querySelector('#results-title').textContent.includes('{name}')")
    page.wait_for_function("!document.querySelector('#grid').hasAttribute('aria-busy')")
    ids = _card_ids(page, CARDS)
    assert source_id not in ids and len(ids) == 37  # every other image, the source itself left out
    assert page.inner_text("#threshold-kind") == "cosine"  # an image query: cosines, no probability
    assert page.url.endswith(f"/?like={source_id}")
    # the same answer as the API gives
    api = page.evaluate(f"fetch('/api/v1/images/{source_id}/similar?limit=40').then(r => r.json())")
    assert ids == [h["id"] for h in api["hits"]]
    page.go_back()
    page.wait_for_function("document.querySelector('#results-title').textContent.includes('a forest path')")


def test_image_chosen_from_disk_searches_by_image(open_page: Any, ui_collection: UiCollection) -> None:
    page, _ = open_page("/")
    original = ui_collection.photos / "beach" / "photo00.jpg"
    page.set_input_files("#file", str(original))
    page.wait_for_function("document.querySelector('#results-title').textContent.includes('photo00.jpg') && "
                           "document.querySelectorAll('#grid .card').length > 0")
    names = page.eval_on_selector_all(f"{CARDS} .name", "els => els.map(e => e.textContent)")
    # an indexed file is searched by its stored vector: its own catalog copies (cosine 1) come first
    assert set(names[:2]) == {"photo00.jpg", "photo00-copy.jpg"}
    assert page.locator(f"{CARDS} .score").first.inner_text() == "cosine 1.000"


def _session_keys(requests: list[Any]) -> list[str | None]:
    """The ``session_key`` each search request sent: in the JSON body of POST /search, else in the query."""
    import json
    from urllib.parse import parse_qs, urlsplit

    keys: list[str | None] = []
    for request in requests:
        if urlsplit(request.url).path == "/api/v1/search":
            keys.append(json.loads(request.post_data or "{}").get("session_key"))
        else:
            keys.append(parse_qs(urlsplit(request.url).query).get("session_key", [None])[0])
    return keys


def test_searches_of_one_browser_share_one_rollout_key(open_page: Any, ui_collection: UiCollection) -> None:
    """Text, "more like this" and image searches, before and after a reload, send one session_key, so a partial
    SigLIP rollout keeps the visitor on one collection (the page sent none: a random bucket per request)."""
    from urllib.parse import urlsplit

    page, _ = open_page("/")
    searches: list[Any] = []
    page.on("request", lambda r: searches.append(r) if "/api/" in r.url and ("/search" in r.url or "/similar" in r.url)
            else None)
    _search(page, "a red boat on the beach")
    page.locator(CARDS).first.get_by_role("button", name="More like this").click()
    page.wait_for_function("document.querySelector('#results-title').textContent.startsWith('More like') && "
                           "!document.querySelector('#grid').hasAttribute('aria-busy')")
    page.set_input_files("#file", str(ui_collection.photos / "beach" / "photo00.jpg"))
    page.wait_for_function("document.querySelector('#results-title').textContent.includes('photo00.jpg') && "
                           "!document.querySelector('#grid').hasAttribute('aria-busy')")
    page.reload()
    _search(page, "a forest path")
    paths = [urlsplit(r.url).path for r in searches]
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["search", "similar", "image", "search"], paths
    keys = _session_keys(searches)
    assert keys[0] is not None and len(keys[0]) == 32 and set(keys) == {keys[0]}, keys
    # another browser is another visitor
    other, _ = open_page("/")
    others: list[Any] = []
    other.on("request", lambda r: others.append(r) if "/api/v1/search" in r.url else None)
    _search(other, "a red boat on the beach")
    assert _session_keys(others)[0] not in (None, keys[0])


def test_folder_filter_and_date_sort(open_page: Any, ui_collection: UiCollection) -> None:
    page, watch = open_page("/")
    page.click("#options summary")
    page.fill("#f-folder", str(ui_collection.photos / "city"))
    page.select_option("#f-sort", "date")
    _search(page, "a busy street")
    folders = set(page.eval_on_selector_all(f"{CARDS} .folder", "els => els.map(e => e.textContent)"))
    assert folders == {str(ui_collection.photos / "city")}
    assert page.locator(CARDS).count() == 12
    dates = page.eval_on_selector_all(f"{CARDS} .badge", "els => els.map(e => e.textContent)")
    assert len(dates) == 12 and dates == sorted(dates, reverse=True)  # newest first
    # a bad filter value is the API's one-line message, not a broken page
    page.fill("#f-near", "not a place")
    page.press("#q", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "near" in page.inner_text("#error").lower()
    assert page.locator(CARDS).count() == 0
    assert [r.split(":")[0] for r in watch.refused] == ["HTTP 422"]


def test_phone_viewport_has_no_horizontal_scrolling(open_page: Any, screenshot: Any) -> None:
    page, _ = open_page("/", viewport=PHONE)
    _search(page, "a red boat on the beach with a very long description that could push the layout sideways")
    page.click("#options summary")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px phone"
    # the cards sit side by side, two to a row, and each fits
    boxes = [page.locator(CARDS).nth(i).bounding_box() for i in range(2)]
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"] for b in boxes)
    assert boxes[0]["y"] == boxes[1]["y"]
    page.click("#options summary")
    screenshot(page, "ui-phone")


def test_keyboard_only_from_the_query_box_to_more_like_this(open_page: Any) -> None:
    page, _ = open_page("/")
    page.focus("#q")
    for key in "harbour":  # only key presses from here on
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#grid .card').length > 0 && "
                           "!document.querySelector('#grid').hasAttribute('aria-busy')")
    visited = []
    for _ in range(30):
        page.keyboard.press("Tab")
        active = page.evaluate("(() => { const a = document.activeElement; return {tag: a.tagName, "
                               "cls: a.className, label: a.getAttribute('aria-label') || a.textContent.trim(), "
                               "visible: a.matches(':focus-visible'), "
                               "outline: getComputedStyle(a).outlineStyle + ' ' + getComputedStyle(a).outlineWidth}"
                               "})()")
        visited.append(active["label"])
        if active["cls"] == "more":
            break
    else:
        pytest.fail(f"Tab never reached a 'More like this' button; focus went through {visited}")
    # focus is visible on the way (the focus ring of :focus-visible)
    assert active["visible"] and active["outline"].startswith("solid"), active
    assert len(visited) <= 8, f"too many stops before the first result: {visited}"
    target = active["label"].removeprefix("More like this: ")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('#results-title').textContent.includes('{target}')")
    page.wait_for_function("!document.querySelector('#grid').hasAttribute('aria-busy')")
    assert page.locator(CARDS).count() > 0
    assert target not in page.eval_on_selector_all(f"{CARDS} .name", "els => els.map(e => e.textContent)")
    # the focus moved to the new results, so the next Tab goes on from there; Space works on the buttons too
    assert page.evaluate("document.activeElement.id") == "results"
    for _ in range(5):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.className") == "more":
            break
    second = page.evaluate("document.activeElement.getAttribute('aria-label')").removeprefix("More like this: ")
    page.keyboard.press("Space")
    page.wait_for_function(f"document.querySelector('#results-title').textContent.includes('{second}')")


def test_pages_are_served_without_any_other_origin(server: str) -> None:
    import httpx

    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/ui.css", "/static/common.js", "/static/search.js"):
        assert httpx.get(server + asset).status_code == 200
    html = page.text
    assert "http://" not in html and "https://" not in html
    missing = httpx.get(server + "/static/nothing.js")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"

