"""The map: UMAP on a sphere, stored and reloaded, incremental placement with transform, refits, exports, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
from explore_support import add_vectors, unit
from helpers import make_jpeg

from img_search.catalog import Catalog
from img_search.errors import EmptyCollectionError, InvalidInputError
from img_search.explore.sphere import MIN_FIT_POINTS, angles_to_latlon, latlon_to_unit
from img_search.explore.umap_map import load_map, load_umap_model, map_root, update_map
from img_search.search.collection import Collection

N = 400
DIM = 64


def manifold(n: int, seed: int) -> np.ndarray:
    """Unit vectors on a smooth 3-D manifold in DIM dimensions (random Fourier features of a latent cube): local
    structure a 2-D map can show, unlike isotropic noise."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(1234).normal(scale=3.0, size=(3, DIM))
    b = np.random.default_rng(1235).uniform(0, 2 * np.pi, DIM)
    return unit(np.cos(rng.uniform(0, 1, size=(n, 3)) @ w + b))


def valid_coordinates(layout) -> None:  # type: ignore[no-untyped-def]
    assert layout.latitude.dtype == np.float64 and layout.longitude.dtype == np.float64
    assert layout.image_ids.dtype == np.int64 and np.all(np.diff(layout.image_ids) > 0)
    assert np.all(np.isfinite(layout.latitude)) and np.all(np.isfinite(layout.longitude))
    assert np.all((layout.latitude >= -90) & (layout.latitude <= 90))
    assert np.all((layout.longitude > -180) & (layout.longitude <= 180))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    index_dir = tmp_path_factory.mktemp("map") / "idx"
    vectors = manifold(N, seed=0)
    add_vectors(index_dir, vectors)
    collection = Collection.open(index_dir)
    layout = update_map(index_dir, collection)
    yield index_dir, collection, vectors, layout
    collection.close()


def test_fit_gives_valid_lat_lon_per_live_image(fitted) -> None:  # type: ignore[no-untyped-def]
    _index_dir, collection, _, layout = fitted
    valid_coordinates(layout)
    ids, _ = collection.catalog().live_entries(collection.model.id)
    assert np.array_equal(layout.image_ids, ids) and len(layout) == N
    assert layout.n_fitted == N and layout.n_transformed == 0 and layout.fitted_at == layout.updated_at
    # spread over the sphere, not collapsed onto a point
    assert np.ptp(layout.latitude) > 20 and np.ptp(layout.longitude) > 20


def test_stored_model_round_trip(fitted) -> None:  # type: ignore[no-untyped-def]
    index_dir, collection, _vectors, layout = fitted
    loaded = load_map(index_dir, collection.model)
    assert loaded is not None and loaded.generation == layout.generation
    assert np.array_equal(loaded.image_ids, layout.image_ids)
    assert np.array_equal(loaded.latitude, layout.latitude) and np.array_equal(loaded.longitude, layout.longitude)
    assert (loaded.fitted_at, loaded.n_fitted) == (layout.fitted_at, layout.n_fitted)
    assert load_map(index_dir, collection.model.id).generation == layout.generation  # by id too
    model = load_umap_model(index_dir, collection.model)
    assert model.metric == "cosine" and model.output_metric == "haversine" and model.random_state == 42
    lat, lon = angles_to_latlon(model.embedding_)
    assert np.allclose(lat, layout.latitude) and np.allclose(lon, layout.longitude)
    # an unchanged collection: nothing is written, the same generation comes back
    assert update_map(index_dir, collection).generation == layout.generation


def test_no_map_yet(tmp_path: Path) -> None:
    add_vectors(tmp_path / "idx", manifold(3, seed=5))
    with Catalog.in_dir(tmp_path / "idx", readonly=True) as catalog:
        model = catalog.models()[0]
    assert load_map(tmp_path / "idx", model) is None


def _add_and_update(index_dir: Path, collection: Collection, new: np.ndarray, start: int, salt: str):  # type: ignore[no-untyped-def]
    add_vectors(index_dir, new, start=start, salt=salt)
    collection.refresh()
    return update_map(index_dir, collection)


def test_near_copies_land_on_their_original(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    index_dir, collection, vectors, before = fitted
    rng = np.random.default_rng(7)
    pick = rng.choice(N, 100, replace=False)
    new = unit(vectors[pick] + 0.003 * rng.normal(size=(100, DIM)))  # cosine ~0.9997 to the original
    assert float(np.min(np.sum(new * vectors[pick], axis=1))) > 0.999
    after = _add_and_update(index_dir, collection, new, start=10_000, salt="copy")
    valid_coordinates(after)
    assert len(after) == N + 100 and after.n_fitted == N and after.fitted_at == before.fitted_at
    assert after.n_transformed == 100
    old_rows = np.isin(after.image_ids, before.image_ids)
    # the images already on the map did not move
    assert np.array_equal(after.latitude[old_rows], before.latitude)
    assert np.array_equal(after.longitude[old_rows], before.longitude)
    old = latlon_to_unit(before.latitude, before.longitude)
    placed = latlon_to_unit(after.latitude[~old_rows], after.longitude[~old_rows])
    nearest = np.argmax(placed @ old.T, axis=1)  # great-circle nearest old point (ids are in insertion order)
    assert np.mean(nearest == pick) >= 0.9


def test_transform_places_perturbed_points_near_their_source(tmp_path: Path) -> None:
    """Points below the near-copy cosine go through UMAP's transform: each lands among the map points nearest its
    source (within the closest 5 % of the map) in >= 90 % of cases."""
    index_dir = tmp_path / "idx"
    vectors = manifold(300, seed=3)
    add_vectors(index_dir, vectors)
    collection = Collection.open(index_dir)
    before = update_map(index_dir, collection)
    rng = np.random.default_rng(11)
    pick = rng.choice(300, 60, replace=False)
    new = unit(vectors[pick] + 0.07 * rng.normal(size=(60, DIM)))
    cos = np.sum(new * vectors[pick], axis=1)
    assert float(cos.max()) < 0.95 and float(cos.min()) > 0.75  # none is a near-copy: all transformed
    after = _add_and_update(index_dir, collection, new, start=10_000, salt="noisy")
    assert after.n_transformed == 60 and after.n_snapped == 0
    old = latlon_to_unit(before.latitude, before.longitude)
    placed = latlon_to_unit(after.latitude[-60:], after.longitude[-60:])
    to_source = np.sum(placed * old[pick], axis=1)
    closer_share = np.mean((placed @ old.T) > to_source[:, None], axis=1)  # map points nearer than the source
    assert np.mean(closer_share <= 0.05) >= 0.9
    collection.close()


def test_growth_refit_removal_and_small_collections(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    vectors = manifold(60, seed=9)
    add_vectors(index_dir, vectors[:3])
    collection = Collection.open(index_dir)
    tiny = update_map(index_dir, collection)  # too few to fit: along the equator, no model
    valid_coordinates(tiny)
    assert len(tiny) == 3 and tiny.n_fitted == 0 and np.all(tiny.latitude == 0)
    assert load_umap_model(index_dir, collection.model) is None
    first = _add_and_update(index_dir, collection, vectors[3:20], start=3, salt="")
    assert first.n_fitted == 20 >= MIN_FIT_POINTS and load_umap_model(index_dir, collection.model) is not None
    # 20 -> 30 images: within 2x, placed by transform
    grown = _add_and_update(index_dir, collection, vectors[20:30], start=20, salt="")
    assert grown.n_fitted == 20 and grown.n_transformed == 10 and grown.fitted_at == first.fitted_at
    # 30 -> 45 > 2 x 20: refitted on everything
    refitted = _add_and_update(index_dir, collection, vectors[30:45], start=30, salt="")
    assert refitted.n_fitted == 45 and refitted.n_transformed == 0 and refitted.fitted_at > first.fitted_at
    # a configurable factor, and a refit on request
    add_vectors(index_dir, vectors[45:60], start=45)
    collection.refresh()
    assert update_map(index_dir, collection, growth_factor=4.0).n_fitted == 45
    assert update_map(index_dir, collection, refit=True).n_fitted == 60
    # removed images leave the map; the others keep their place
    before = load_map(index_dir, collection.model)
    gone = ["/photos/img000001.jpg", "/photos/img000002.jpg"]
    with Catalog.in_dir(index_dir) as catalog:
        catalog.mark_deleted(gone)
        gone_ids = [catalog.image(p).id for p in gone]
    collection.refresh()
    after = update_map(index_dir, collection)
    assert len(after) == 58 and not np.isin(gone_ids, after.image_ids).any()
    keep = np.isin(before.image_ids, after.image_ids)
    assert np.array_equal(before.latitude[keep], after.latitude) and after.n_fitted == 60
    # only the current generation and the one before it are kept
    gens = sorted(p.name for p in map_root(index_dir, collection.model.id).iterdir() if p.name.startswith("map-"))
    assert len(gens) == 2 and gens[-1] == after.generation
    with pytest.raises(InvalidInputError, match="growth factor"):
        update_map(index_dir, collection, growth_factor=0.5)
    collection.close()


def test_empty_collection(tmp_path: Path) -> None:
    add_vectors(tmp_path / "idx", manifold(2, seed=1))
    with Catalog.in_dir(tmp_path / "idx") as catalog:
        catalog.mark_deleted(["/photos/img000000.jpg", "/photos/img000001.jpg"])
    collection = Collection.open(tmp_path / "idx")
    with pytest.raises(EmptyCollectionError):
        update_map(tmp_path / "idx", collection)
    collection.close()


def test_png_and_self_contained_html(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from img_search.explore.export import export_html, export_png

    _, _, _, layout = fitted
    photos = {int(i): str(make_jpeg(tmp_path / "p" / f"{int(i)}.jpg", seed=int(i))) for i in layout.image_ids[:5]}
    png = export_png(layout, tmp_path / "map.png", paths=photos)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = export_html(layout, tmp_path / "map.html", photos, max_thumbnails=len(layout)).read_text()
    assert "<script" in page and "http://" not in page and "https://" not in page  # nothing fetched from anywhere
    assert " src=" not in page.split("<script id=\"data\"")[0].replace('src = t', '')  # no external resources
    data = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert len(data["lat"]) == len(layout) and data["ids"] == layout.image_ids.tolist()
    assert np.allclose(data["lat"], layout.latitude, atol=1e-4)
    # thumbnails for the images that exist (the fake paths of the others have no file)
    assert len(data["thumbs"]) == 5 and all(v.startswith("data:image/jpeg;base64,") for v in data["thumbs"].values())
    assert data["paths"][0] == photos[int(layout.image_ids[0])]


def test_map_command_end_to_end(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> None:
    env = {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "idx"), "IMG_SEARCH_MODEL": str(tiny_siglip)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return helpers.cli(*args, env=env, timeout=900)

    assert cli("index", str(photo_dir), "--workers", "0").returncode == 0
    done = cli("map", "--json", "--png", str(tmp_path / "m.png"), "--html", str(tmp_path / "m.html"))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["images"] == 12 and out["n_fitted"] == 12 and len(out["points"]) == 12
    assert set(out["files"]) == {"png", "html"} and (tmp_path / "m.png").exists()
    page = (tmp_path / "m.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 12 and str(photo_dir) in page
    done = cli("map")
    assert done.returncode == 0 and done.stdout.startswith("map of 12 images")
    done = cli("map", "--growth-factor", "0.5")
    assert done.returncode == 2


def test_one_writer_per_map(tmp_path: Path) -> None:
    from img_search.errors import ConflictError

    add_vectors(tmp_path / "idx", manifold(3, seed=2))
    collection = Collection.open(tmp_path / "idx")
    root = map_root(tmp_path / "idx", collection.model.id)
    root.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(root / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConflictError, match="another process"):
            update_map(tmp_path / "idx", collection)
    finally:
        holder.kill()
        holder.wait()
    assert len(update_map(tmp_path / "idx", collection)) == 3  # free again once the other writer is gone
    collection.close()


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_thumbnail_of_a_large_file_is_the_thumbnail_of_its_bytes(tmp_path: Path, fmt: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file above READ_WHOLE_MAX_BYTES (lowered here) is read from disk (data.images.LargeFile), JPEGs still at a
    reduced scale: the same thumbnail as from its bytes."""
    from img_search.data import images
    from img_search.explore.export import thumbnail_data_url

    path = tmp_path / f"a.{fmt}"
    helpers.pattern(5, (300, 200)).save(path)
    small = thumbnail_data_url(str(path))
    monkeypatch.setattr(images, "READ_WHOLE_MAX_BYTES", 16)
    assert small is not None and thumbnail_data_url(str(path)) == small
