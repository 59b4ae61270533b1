"""The SQLite layer: migrations, atomic batches, prefix queries, model registration."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from img_search.catalog import Catalog, ImageRecord
from img_search.catalog.catalog import prefix_bounds
from img_search.catalog.schema import SCHEMA_VERSION
from img_search.errors import CatalogError, DimensionMismatchError, InvalidInputError


def test_new_catalog_is_migrated_and_wal(tmp_path: Path) -> None:
    with Catalog.in_dir(tmp_path) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        assert cat.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Catalog.in_dir(tmp_path) as again:  # idempotent
        assert again.schema_version == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Catalog.in_dir(tmp_path).close()
    db = sqlite3.connect(tmp_path / "catalog.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(CatalogError, match="newer than this img-search"):
        Catalog.in_dir(tmp_path)


def test_readonly_open_of_missing_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="img-search index"):
        Catalog.in_dir(tmp_path / "nothing", readonly=True)


def test_batch_is_atomic(tmp_path: Path) -> None:
    with Catalog.in_dir(tmp_path) as cat:
        mid = cat.ensure_model("m", family="siglip", dim=4, logit_scale=1.0, logit_bias=-1.0)
        recs = [ImageRecord(f"/p/{i}.jpg", 1, 1, bytes([i]) * 16, 2, 2) for i in range(3)]
        with pytest.raises(ValueError, match="one to one"):
            cat.record(recs, model_id=mid, vectors=np.ones((2, 4), np.float32))  # wrong count: nothing written
        assert cat.status_counts() == {}
        cat.record(recs, model_id=mid, vectors=np.arange(12, dtype=np.float32).reshape(3, 4))
        ids, vecs = cat.load_vectors(mid, 4)
        assert len(ids) == 3 and vecs[2].tolist() == [8.0, 9.0, 10.0, 11.0]


def test_prefix_bounds_select_only_the_folder(tmp_path: Path) -> None:
    with Catalog.in_dir(tmp_path) as cat:
        paths = ["/photos/a.jpg", "/photos/sub/b.jpg", "/photos2/c.jpg", "/photo.jpg", "/photos"]
        cat.record([ImageRecord(p, 1, 1, error="x") for p in paths])
        assert sorted(cat.images_under("/photos")) == ["/photos/a.jpg", "/photos/sub/b.jpg"]
    lo, hi = prefix_bounds("/a")
    assert lo == b"/a/" and hi == b"/a0"


def test_non_utf8_paths_round_trip(tmp_path: Path) -> None:
    odd = os.fsdecode(b"/x/caf\xe9.jpg")
    with Catalog.in_dir(tmp_path) as cat:
        cat.record([ImageRecord(odd, 1, 1, error="x")])
        assert cat.image(odd) is not None and list(cat.images_under("/x")) == [odd]


def test_model_dimension_change_needs_recompute(tmp_path: Path) -> None:
    with Catalog.in_dir(tmp_path) as cat:
        mid = cat.ensure_model("m", family="siglip", dim=4, logit_scale=1.0, logit_bias=-1.0)
        cat.record([ImageRecord("/p/a.jpg", 1, 1, b"h" * 16)], model_id=mid, vectors=np.ones((1, 4), np.float32))
        with pytest.raises(DimensionMismatchError, match="--recompute"):
            cat.ensure_model("m", family="siglip", dim=8, logit_scale=1.0, logit_bias=-1.0)
        assert cat.ensure_model("m", family="siglip", dim=8, logit_scale=1.0, logit_bias=-1.0, recompute=True) == mid
        assert cat.embedded_hashes(mid) == set()


def _v1_catalog(path: Path) -> None:
    """A catalog as the release before schema v2 wrote it: v1 tables, one model, two images with vectors."""
    import sqlite3

    from img_search.catalog.schema import MIGRATIONS

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN")
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO models (name, family, dim, logit_scale, logit_bias, created_at) "
               "VALUES ('m', 'siglip', 2, 1.0, 0.0, 0)")
    for i in range(2):
        h = bytes([i]) * 16
        db.execute("INSERT INTO images (path, size, mtime_ns, content_hash, status, updated_at) "
                   "VALUES (?, 1, 1, ?, 'ok', 0)", (f"/p/{i}.jpg".encode(), h))
        db.execute("INSERT INTO embeddings (content_hash, model_id, vector, dtype, created_at) "
                   "VALUES (?, 1, ?, 'float32', 0)", (h, np.array([1.0, float(i)], np.float32).tobytes()))
    db.execute("COMMIT")
    db.close()


def test_a_v1_catalog_is_read_as_it_is_and_upgraded_in_place_by_a_writer(tmp_path: Path) -> None:
    from img_search.catalog.schema import SCHEMA_VERSION

    path = tmp_path / "catalog.sqlite3"
    _v1_catalog(path)
    with Catalog(path, readonly=True) as reader:  # readers never migrate
        assert reader.schema_version == 1
        assert reader.precision_counts(1) == [("fp32", "torch", 2)] and reader.parity_checks(1) == []
    with Catalog(path) as writer:
        assert writer.schema_version == SCHEMA_VERSION >= 2
        ids, vecs = writer.load_vectors(1, 2)  # nothing re-embedded, nothing lost
        assert ids.tolist() == [1, 2] and vecs.tolist() == [[1.0, 0.0], [1.0, 1.0]]
        assert writer.precision_counts(1) == [("fp32", "torch", 2)]
        writer.record([ImageRecord("/p/9.jpg", 1, 1, b"\x09" * 16)], model_id=1,
                      vectors=np.ones((1, 2), np.float32), precision="int8", runtime="onnxruntime")
        writer.record_parity(1, tower="image", precision="int8", runtime="onnxruntime", min_cosine=0.9997,
                             threshold=0.999, passed=True)
        writer.record_parity(1, tower="image", precision="fp16", runtime="torch", min_cosine=0.98,
                             threshold=0.999, passed=False)
        assert sorted(writer.precision_counts(1)) == [("fp32", "torch", 2), ("int8", "onnxruntime", 1)]
        assert writer.failed_precisions(1) == {("fp16", "torch")}


def test_a_run_whose_writer_was_killed_is_marked_interrupted_by_the_next_run(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A writer SIGKILLed between ``start_run`` and ``finish_run`` leaves its run 'running'; the next run (under the
    writer lock, so no live writer can own that row) marks it 'interrupted' with a finished_at, and finishes its own."""
    import signal
    import subprocess
    import sys

    from img_search.info import catalog_info
    from img_search.pipeline.runner import IndexOptions, index_folders

    idx, photos = tmp_path / "idx", tmp_path / "photos"
    photos.mkdir()
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from pathlib import Path; from img_search.catalog import Catalog; "
        "from img_search.catalog.lock import IndexLock; idx = Path(sys.argv[1]); lock = IndexLock(idx).acquire(); "
        "cat = Catalog.in_dir(idx); cat.start_run(None); os.kill(os.getpid(), signal.SIGKILL)"), str(idx)],
        capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Catalog.in_dir(idx, readonly=True) as cat:
        assert cat.db.execute("SELECT status, finished_at FROM runs").fetchall() == [("running", None)]
    # until the next run, readers tell by the lock: nobody holds it, so the 'running' run is reported interrupted
    assert catalog_info(idx)["last_run"]["status"] == "interrupted"
    from helpers import run_main

    code, out, _ = run_main(capsys, "info", "--index-dir", str(idx))
    assert code == 0 and "last run: interrupted (started " in out, out
    from img_search.catalog.lock import IndexLock

    with IndexLock(idx):  # a live writer: the same row reads as running
        assert catalog_info(idx)["last_run"]["status"] == "running"

    def never():  # type: ignore[no-untyped-def]
        raise AssertionError("nothing to embed")

    index_folders([str(photos)], idx, IndexOptions(model="tiny-unused", workers=0), encoder_factory=never)
    with Catalog.in_dir(idx, readonly=True) as cat:
        rows = cat.db.execute("SELECT id, status, started_at, finished_at FROM runs ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(1, "interrupted"), (2, "finished")]
    assert rows[0][3] is not None and rows[0][3] >= rows[0][2]
    assert catalog_info(idx)["last_run"]["status"] == "finished"
    index_folders([str(photos)], idx, IndexOptions(model="tiny-unused", workers=0), encoder_factory=never)
    with Catalog.in_dir(idx, readonly=True) as cat:  # a finished run is never re-marked
        assert [r[0] for r in cat.db.execute("SELECT status FROM runs ORDER BY id")] == ["interrupted", "finished",
                                                                                         "finished"]


def test_v3_catalog_upgrades_to_v4_with_every_vector_decoded_in_full(tmp_path: Path) -> None:
    """Schema v4 records each vector's decode mode in the embeddings row (written with the vector). A v3 catalog
    (the previous release) reads as all-full, read-only and after the in-place upgrade; a development catalog that
    kept the modes in the interim side table ``embedding_decode`` keeps them."""
    import sqlite3

    import numpy as np
    from helpers import catalog_at_version

    def v3(path: Path, side_table: bool) -> None:
        path.mkdir()
        catalog_at_version(path, 3, [f"/p/{i}.jpg".encode() for i in range(3)])
        if side_table:
            db = sqlite3.connect(path / "catalog.sqlite3")
            with db:
                db.execute("CREATE TABLE embedding_decode (content_hash BLOB NOT NULL, model_id INTEGER NOT NULL, "
                           "mode TEXT NOT NULL, PRIMARY KEY (content_hash, model_id)) WITHOUT ROWID")
                db.executemany("INSERT INTO embedding_decode VALUES (?, 1, 'reduced-1x')",
                               [(bytes([i]) * 16,) for i in (1, 2)])
            db.close()

    plain, side = tmp_path / "plain", tmp_path / "side"
    v3(plain, side_table=False)
    v3(side, side_table=True)
    with Catalog.in_dir(plain, readonly=True) as old:  # readers never migrate: v3 reads as all full
        assert old.schema_version == 3 and old.decode_counts(1) == {"full": 3}
    with Catalog.in_dir(plain) as cat:
        assert cat.schema_version == SCHEMA_VERSION and cat.decode_counts(1) == {"full": 3}
        ids, vecs = cat.load_vectors(1, 2)  # nothing re-embedded
        assert len(ids) == 3 and vecs.tolist() == [[1.0, 1.0]] * 3
        cat.upsert_vectors(1, [bytes([1]) * 16], np.zeros((1, 2), np.float32), decode="reduced-1x")
        assert cat.decode_counts(1) == {"full": 2, "reduced-1x": 1}
        with pytest.raises(InvalidInputError, match="decode mode"):
            cat.upsert_vectors(1, [bytes([1]) * 16], np.zeros((1, 2), np.float32), decode="half")
    with Catalog.in_dir(side) as cat:
        assert cat.decode_counts(1) == {"reduced-1x": 2, "full": 1}
        assert cat.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'embedding_decode'").fetchone() is None



def test_the_warning_for_runs_that_never_finished_counts_them_in_words(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """'1 earlier run of ... never finished' / '2 earlier runs of ...', not 'run(s)'."""
    with Catalog.in_dir(tmp_path) as cat, caplog.at_level("WARNING", logger="img_search.catalog.catalog"):
        cat.start_run(None)
        cat.start_run(None)  # the first was never finished
        assert f"1 earlier run of {cat.path} never finished (the process was killed)" in caplog.text
        with cat.transaction() as db:  # both left 'running', as two killed writers would leave them
            db.execute("UPDATE runs SET status = 'running', finished_at = NULL")
        caplog.clear()
        cat.start_run(None)
        assert f"2 earlier runs of {cat.path} never finished" in caplog.text
