"""Photo metadata during `index`: read by the decode workers, searchable, back-filled without re-embedding."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from metadata_photos import ascii_, exif_for, photo, raw_exif, short, xmp_packet
from PIL import Image

from img_search.catalog import Catalog
from img_search.catalog.text_index import query_terms
from img_search.pipeline import metadata as backfill
from img_search.pipeline.runner import IndexOptions, index_folders


def _never():  # type: ignore[no-untyped-def]
    raise AssertionError("nothing needs embedding: the model must not be loaded")


def _run(folder: Path, idx: Path, model: Path, factory, **kw):  # type: ignore[no-untyped-def]
    opts = IndexOptions(model=str(model), batch_size=4, workers=kw.pop("workers", 1), **kw)
    return index_folders([str(folder)], idx, opts, encoder_factory=factory)


def _album(folder: Path) -> dict[str, Path]:
    """Photos with EXIF (two cameras, both hemispheres), embedded XMP keywords, an XMP sidecar, garbage EXIF."""
    garbage = folder / "garbage.jpg"
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 200, 200)).save(garbage, exif=raw_exif(
        {0x010F: short(5), 0x0112: ascii_("six")}, {0x9003: ascii_("2023:02:30 10:00:00")},
        {1: ascii_("N"), 2: ascii_("400 degrees"), 3: ascii_("E"), 4: short(2)}))
    paris = photo(folder / "paris.jpg", (220, 30, 30), exif=exif_for(
        taken="2023-06-01 10:00:00".replace("-", ":", 2), offset="+02:00", make="Google", model="Pixel 7",
        lens="Pixel 7 back camera", orientation=1, lat=48.8566, lon=2.3522, altitude=35.0))
    sydney = photo(folder / "trip" / "sydney.jpg", (30, 60, 210), exif=exif_for(
        taken="2023:07:10 08:15:00", offset="+10:00", make="Canon", model="Canon EOS R5", orientation=6,
        lat=-33.8568, lon=151.2153))
    tagged = photo(folder / "tagged.jpg", (40, 150, 40), xmp=xmp_packet(keywords=("croissant", "breakfast")))
    sidecar = photo(folder / "side.jpg", (250, 250, 250))
    (folder / "side.jpg.xmp").write_bytes(xmp_packet(keywords=("Ana", "birthday"), description="Ana's seventh"))
    return {"garbage": garbage, "paris": paris, "sydney": sydney, "tagged": tagged, "sidecar": sidecar}


def _ids(cat: Catalog, text: str) -> set[str]:
    hits = cat.text_search(query_terms(text), 20)
    rows = cat.images_by_id([i for i, _ in hits])
    return {os.path.basename(rows[i].path) for i, _ in hits}


def test_index_cli_reads_exif_xmp_and_sidecars(tmp_path: Path, tiny_siglip: Path) -> None:
    files = _album(tmp_path / "album")
    idx = tmp_path / "idx"
    env = dict(os.environ, IMG_SEARCH_INDEX_DIR=str(idx), IMG_SEARCH_MODEL=str(tiny_siglip))
    done = subprocess.run([sys.executable, "-m", "img_search", "index", str(tmp_path / "album"), "--json",
                           "--workers", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["embedded"] == 5 and summary["failed"] == [] and summary["metadata_read"] == 0
    with Catalog.in_dir(idx, readonly=True) as cat:
        meta = {name: cat.photo_metadata(cat.image(str(p)).id) for name, p in files.items()}
        paris, sydney = meta["paris"], meta["sydney"]
        assert paris is not None and sydney is not None
        assert (paris.taken_at, paris.utc_offset_minutes, paris.camera) == ("2023-06-01T10:00:00", 120,
                                                                           "Google Pixel 7")
        assert paris.lens == "Pixel 7 back camera" and paris.orientation == 1
        assert paris.latitude == pytest.approx(48.8566, abs=1e-5) and paris.longitude == pytest.approx(2.3522,
                                                                                                        abs=1e-5)
        assert paris.altitude == pytest.approx(35.0) and paris.season == "summer" and paris.colors == ("red",)
        assert sydney.latitude == pytest.approx(-33.8568, abs=1e-5) and sydney.season == "winter"
        assert sydney.colors == ("blue",) and sydney.orientation == 6
        garbage = meta["garbage"]  # indexed, its metadata empty where it was garbage
        assert garbage is not None and cat.image(str(files["garbage"])).status == "ok"
        assert (garbage.camera_make, garbage.orientation, garbage.taken_at, garbage.latitude) == (None,) * 4
        rows = {os.path.basename(r.path): r for r in cat.filter_rows()}
        assert rows["paris.jpg"].camera == "Google Pixel 7" and rows["paris.jpg"].taken_at == "2023-06-01T10:00:00"
        assert rows["sydney.jpg"].latitude == pytest.approx(-33.8568, abs=1e-5)
        assert rows["garbage.jpg"].camera is None and rows["garbage.jpg"].latitude is None
        assert _ids(cat, "birthday") == {"side.jpg"} and _ids(cat, "Ana's seventh") == {"side.jpg"}
        assert _ids(cat, "croissant") == {"tagged.jpg"}  # embedded XMP keywords
        assert _ids(cat, "winter") == {"sydney.jpg"} and _ids(cat, "red") == {"paris.jpg"}
        assert cat.has_own_text()


def test_backfill_without_reembedding_and_sidecar_changes(tmp_path: Path, tiny_siglip: Path,
                                                          siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    files = _album(tmp_path / "album")
    idx = tmp_path / "idx"
    s = _run(tmp_path / "album", idx, tiny_siglip, lambda: siglip_encoder, read_metadata=False)
    assert s.embedded == 5 and s.metadata_read == 0
    with Catalog.in_dir(idx) as cat:
        assert cat.metadata_state([str(p) for p in files.values()]) == {}
        created = dict(cat.db.execute("SELECT content_hash, created_at FROM embeddings"))
    # the catalog as the previous release (schema v2) left it: no metadata tables at all
    db = sqlite3.connect(idx / "catalog.sqlite3")
    db.executescript("DROP TABLE photo_metadata; DROP TABLE tags; DROP TABLE annotations; DROP TABLE ocr_text; "
                     "DROP TABLE text_index; ALTER TABLE embeddings DROP COLUMN decode; DROP TABLE recompute_files; "
                     "DROP TABLE recomputes; PRAGMA user_version = 2;")
    db.close()

    s = _run(tmp_path / "album", idx, tiny_siglip, _never)  # upgraded, back-filled, nothing embedded
    assert (s.embedded, s.unchanged, s.metadata_read) == (0, 5, 5)
    with Catalog.in_dir(idx) as cat:
        assert dict(cat.db.execute("SELECT content_hash, created_at FROM embeddings")) == created
        paris = cat.photo_metadata(cat.image(str(files["paris"])).id)
        assert paris is not None and paris.camera == "Google Pixel 7" and paris.colors == ("red",)
        assert _ids(cat, "birthday") == {"side.jpg"}

    assert _run(tmp_path / "album", idx, tiny_siglip, _never).metadata_read == 0  # nothing stale: nothing read

    sidecar = tmp_path / "album" / "side.jpg.xmp"  # the user re-tags in darktable: the sidecar changes
    sidecar.write_bytes(xmp_packet(keywords=("Ana", "party")))
    later = time.time() + 5
    os.utime(sidecar, (later, later))
    (tmp_path / "album" / "tagged.xmp").write_bytes(xmp_packet(keywords=("pastry",)))  # a new sidecar appears
    s = _run(tmp_path / "album", idx, tiny_siglip, _never)
    assert (s.embedded, s.metadata_read) == (0, 2)
    with Catalog.in_dir(idx) as cat:
        assert _ids(cat, "party") == {"side.jpg"} and _ids(cat, "birthday") == set()
        assert _ids(cat, "pastry") == {"tagged.jpg"} and _ids(cat, "croissant") == {"tagged.jpg"}
        # rows deleted (e.g. by a repair) are read again
        cat.db.execute("DELETE FROM photo_metadata WHERE image_id = ?", (cat.image(str(files["sydney"])).id,))
    sidecar.unlink()  # and a sidecar that went away
    s = _run(tmp_path / "album", idx, tiny_siglip, _never)
    assert (s.embedded, s.metadata_read) == (0, 2)
    with Catalog.in_dir(idx) as cat:
        assert _ids(cat, "party") == set() and cat.photo_metadata(cat.image(str(files["sidecar"])).id) is not None
        assert cat.photo_metadata(cat.image(str(files["sydney"])).id).season == "winter"  # type: ignore[union-attr]
        assert dict(cat.db.execute("SELECT content_hash, created_at FROM embeddings")) == created


def test_reused_vectors_get_their_files_metadata(tmp_path: Path, tiny_siglip: Path,
                                                 siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    files = _album(tmp_path / "album")
    idx = tmp_path / "idx"
    _run(tmp_path / "album", idx, tiny_siglip, lambda: siglip_encoder)
    copy = tmp_path / "album" / "copy_of_paris.jpg"
    copy.write_bytes(files["paris"].read_bytes())  # same bytes: the vector is reused, the file never decoded
    (tmp_path / "album" / "copy_of_paris.xmp").write_bytes(xmp_packet(keywords=("eiffel",)))
    s = _run(tmp_path / "album", idx, tiny_siglip, _never)
    assert (s.reused, s.embedded, s.metadata_read) == (1, 0, 1)
    with Catalog.in_dir(idx) as cat:
        m = cat.photo_metadata(cat.image(str(copy)).id)
        assert m is not None and m.camera == "Google Pixel 7" and m.keywords == ("eiffel",)
        assert _ids(cat, "eiffel") == {"copy_of_paris.jpg"}


def test_identical_copies_in_one_run_get_their_metadata_in_that_run(tmp_path: Path, tiny_siglip: Path,
                                                                       siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """Two new files with the same bytes: one is embedded, the other reuses its vector in the same run
    (``runner._split_copies``). Metadata is per path, not per content: the copy's own row, with its own XMP sidecar,
    must be there right after that first run, not only after the next `index`."""
    album = tmp_path / "album"
    paris = photo(album / "paris.jpg", (220, 30, 30), exif=exif_for(taken="2023:06:01 10:00:00", make="Google",
                                                                     model="Pixel 7", lat=48.8566, lon=2.3522))
    copy = album / "copy_of_paris.jpg"
    copy.write_bytes(paris.read_bytes())
    (album / "copy_of_paris.xmp").write_bytes(xmp_packet(keywords=("eiffel",)))
    idx = tmp_path / "idx"
    s = _run(album, idx, tiny_siglip, lambda: siglip_encoder)
    assert (s.embedded, s.reused) == (1, 1)
    with Catalog.in_dir(idx) as cat:
        original, copied = (cat.photo_metadata(cat.image(str(p)).id) for p in (paris, copy))
        assert original is not None and copied is not None
        assert original.camera == copied.camera == "Google Pixel 7" and original.taken_at == copied.taken_at
        assert (original.keywords, copied.keywords) == ((), ("eiffel",))
        assert _ids(cat, "eiffel") == {"copy_of_paris.jpg"}
    assert _run(album, idx, tiny_siglip, _never).metadata_read == 0  # nothing left for the next run


def test_backfill_reads_every_file_in_the_calling_process(tmp_path: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A back-fill of more files than the old pool's threshold (64), with decode workers asked for, reads each file
    once, in this process (issue 9: the forked pool it had could hang for good), in several transactions."""
    folder = tmp_path / "many"
    for i in range(70):
        photo(folder / f"{i:02d}.jpg", (3 * i, 200 - 2 * i, 90), exif=exif_for(
            taken=f"2022:{i % 12 + 1:02d}:15 12:00:00", make="Nikon", model=f"Z{i}", lat=10.0 + i / 10, lon=20.0))
    idx = tmp_path / "idx"
    _run(folder, idx, tiny_siglip, lambda: siglip_encoder, read_metadata=False)
    here, reads = os.getpid(), []
    real = backfill.read_metadata

    def read_here(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        assert os.getpid() == here, "metadata read in another process"
        reads.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(backfill, "read_metadata", read_here)
    monkeypatch.setattr(backfill, "BATCH", 16)  # several transactions
    assert _run(folder, idx, tiny_siglip, _never, workers=2).metadata_read == 70
    assert sorted(reads) == sorted(f"{i:02d}.jpg" for i in range(70))
    with Catalog.in_dir(idx) as cat:
        got = {os.path.basename(p): cat.photo_metadata(row.id) for p, row in cat.images_under(str(folder)).items()}
    assert {m.camera_model for m in got.values()} == {f"Z{i}" for i in range(70)}  # type: ignore[union-attr]
    assert _run(folder, idx, tiny_siglip, _never, workers=2).metadata_read == 0
