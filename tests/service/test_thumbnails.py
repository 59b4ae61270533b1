"""Thumbnails: made once and cached (in the index dir, or under $XDG_CACHE_HOME when it is read-only), and never
anything but an indexed picture: no path from a request reaches the file system, and a catalog file replaced since
it was indexed (by another picture, or a symlink to another file) is refused."""

from __future__ import annotations

import builtins
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Models
from fastapi.testclient import TestClient
from helpers import make_jpeg
from PIL import Image

from img_search.catalog import Catalog
from img_search.service import thumbnails as thumbnails_module

SIZE = 48


def _ids_by_name(index_dir: Path) -> dict[str, int]:
    with Catalog.in_dir(index_dir, readonly=True) as catalog:
        rows = catalog.images_by_id(range(1, 1000))
    return {Path(r.path).name: r.id for r in rows.values()}


def test_made_once_then_served_from_the_cache(fresh_index: Callable[..., tuple[Path, Path]],
                                              make_client: Callable[..., TestClient]) -> None:
    photos, index_dir = fresh_index(siglip=False)
    client = make_client(index_dir, thumbnail_size=SIZE)
    image_id = _ids_by_name(index_dir)["img04.jpg"]
    first = client.get(f"/api/v1/images/{image_id}/thumbnail")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(first.content)) as im:
        assert max(im.size) == SIZE and im.size == (48, 32)  # 96x64 scaled to a longest side of 48
    cached = list((index_dir / "thumbnails").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == first.content
    (photos / "b" / "img04.jpg").unlink()  # the original is not read again
    again = client.get(f"/api/v1/images/{image_id}/thumbnail")
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["etag"] == first.headers["etag"]


def test_read_only_index_dir_caches_under_xdg(fresh_index: Callable[..., tuple[Path, Path]],
                                              make_client: Callable[..., TestClient], read_only_mount: Any,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, index_dir = fresh_index(siglip=False)
    mounted = read_only_mount(index_dir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    client = make_client(mounted, thumbnail_size=SIZE)
    image_id = next(iter(_ids_by_name(mounted).values()))
    r = client.get(f"/api/v1/images/{image_id}/thumbnail")
    assert r.status_code == 200, r.text
    assert not (mounted / "thumbnails").exists()
    cached = list((tmp_path / "xdg-cache" / "img-search" / "thumbnails").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == r.content
    assert client.get("/api/v1/health").json()["read_only"]


def test_only_indexed_pictures_are_ever_read(fresh_index: Callable[..., tuple[Path, Path]],
                                             make_client: Callable[..., TestClient], models: Models,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos, index_dir = fresh_index(siglip=False)
    (photos / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (photos / "b" / "img06.jpg").unlink()
    models.index(photos, index_dir, "clip")  # broken.jpg: status error; img06.jpg: status deleted
    ids = _ids_by_name(index_dir)
    with Catalog.in_dir(index_dir, readonly=True) as catalog:
        catalog_paths = {r.path for r in catalog.images_by_id(ids.values()).values()}
    make_jpeg(photos / "b" / "img06.jpg", seed=6)  # back on disk, but deleted in the catalog until the next index
    secret = make_jpeg(tmp_path / "outside" / "secret.jpg", seed=777)  # never indexed
    swapped = photos / "a" / "img01.jpg"
    swapped.unlink()
    swapped.symlink_to(secret)  # a catalog path now pointing elsewhere
    make_jpeg(photos / "a" / "img03.jpg", seed=303)  # another picture under an indexed name
    (photos / "a" / "img07.jpg").unlink()
    os.mkfifo(photos / "a" / "img07.jpg")  # a read would block the server thread forever
    with open(photos / "b" / "img08.jpg", "wb") as fh:
        fh.truncate(3 * 2**30)  # 3 GB of zeros (sparse): refused by its size, never read

    opened: list[str] = []

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(thumbnails_module, "open", spy_open, raising=False)
    client = make_client(index_dir, thumbnail_size=SIZE)
    cases = {
        f"/api/v1/images/{ids['broken.jpg']}/thumbnail": (404, "not_found"),
        f"/api/v1/images/{ids['img06.jpg']}/thumbnail": (404, "not_found"),
        f"/api/v1/images/{ids['img01.jpg']}/thumbnail": (409, "conflict"),
        f"/api/v1/images/{ids['img03.jpg']}/thumbnail": (409, "conflict"),
        f"/api/v1/images/{ids['img07.jpg']}/thumbnail": (409, "conflict"),
        f"/api/v1/images/{ids['img08.jpg']}/thumbnail": (409, "conflict"),
        "/api/v1/images/..%2F..%2Foutside%2Fsecret.jpg/thumbnail": (404, "not_found"),  # decoded: no route
        f"/api/v1/images/{secret}/thumbnail": (404, "not_found"),  # an absolute path: no such route
        "/api/v1/images/%2e%2e/thumbnail": (422, "invalid_input"),
        "/api/v1/images/0/thumbnail": (404, "not_found"),
    }
    for url, (status, kind) in cases.items():
        r = client.get(url)
        assert (r.status_code, r.json()["error"]) == (status, kind), (url, r.text)
    ok = client.get(f"/api/v1/images/{ids['img05.jpg']}/thumbnail")
    assert ok.status_code == 200
    assert opened and set(opened) <= catalog_paths, opened
    assert not {str(photos / "a" / "img07.jpg"), str(photos / "b" / "img08.jpg")} & set(opened)
    assert str(secret) not in opened and not list((index_dir / "thumbnails").rglob("*.jpg"))[1:]
