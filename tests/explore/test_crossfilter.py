"""The crossfilter embedding database (seed 004): schema, msgpack vectors read back with plain sqlite3 + msgpack,
incremental skip, --recompute_existing_embeddings, UUID names, UMAP model and projections, the two entry points."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest
from helpers import make_jpeg

from img_search.crossfilter.compute_embeddings_cli import build_parser, main

T = "SIGLIP2"
N_VALID = 9


def uid(i: int) -> str:
    return str(uuid.UUID(int=0x1234_0000 + i))


@pytest.fixture()
def uuid_photos(tmp_path: Path) -> Path:
    root = tmp_path / "by-uuid"
    for i in range(N_VALID):
        make_jpeg(root / ("x" if i % 2 else "y/z") / f"{uid(i)}.jpg", seed=i, size=(80, 60))
    make_jpeg(root / "not-a-uuid.jpg", seed=50)
    make_jpeg(root / "y" / "1234.jpg", seed=51)
    make_jpeg(root / "y" / (uid(0).replace("-", "") + ".jpg"), seed=52)  # UUID() parses it; not canonical: skipped
    (root / "notes.txt").write_text("not an image")
    return root


def run(photos: Path, db: Path, model: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> dict:
    code = main(["--embedding_type", T, "--input_dir", str(photos), "--output_embeddings_db", str(db),
                 "--model", str(model), "--workers", "0", "--batch_size", "4", "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def read_db(db: Path) -> dict[str, bytes]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute(f"SELECT UUID, EMBEDDING FROM {T}_EMBEDDINGS"))


def test_seed_defaults() -> None:
    args = build_parser().parse_args(["--input_dir", "a", "--output_embeddings_db", "b.db"])
    assert (args.embedding_type, args.batch_size, args.recompute_existing_embeddings,
            args.reproject_umap_embeddings) == ("SIGLIP2", 10, False, True)
    args = build_parser().parse_args(["--input_dir", "a", "--output_embeddings_db", "b.db",
                                      "--recompute_existing_embeddings", "--no-reproject_umap_embeddings"])
    assert args.recompute_existing_embeddings and not args.reproject_umap_embeddings


def test_schema_and_msgpack_round_trip(uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "out" / "emb.db"  # a missing parent folder is created, as the seed does
    summary = run(uuid_photos, db, tiny_models["siglip2"], "--no-reproject_umap_embeddings", capsys=capsys)
    assert summary["embedded"] == N_VALID and summary["failed"] == []
    assert summary["jpeg_files"] == N_VALID + 3 and summary["invalid_names"] == 3
    assert {os.path.basename(p) for p in summary["invalid_examples"]} == {
        "not-a-uuid.jpg", "1234.jpg", uid(0).replace("-", "") + ".jpg"}
    assert summary["umap"] == "not asked"

    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {f"{T}_EMBEDDINGS", f"{T}_UMAP_MODEL", f"{T}_UMAP_PROJECTIONS"}
    # (name, declared type, primary key) of each column, as sqlite reports them
    cols = {t: [(c[1], c[2], c[5]) for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    assert cols[f"{T}_EMBEDDINGS"] == [("UUID", "TEXT", 1), ("EMBEDDING", "BLOB", 0)]
    assert cols[f"{T}_UMAP_MODEL"] == [("MODEL", "BLOB", 0)]
    assert cols[f"{T}_UMAP_PROJECTIONS"] == [("UUID", "TEXT", 1), ("LATITUDE", "REAL", 0), ("LONGITUDE", "REAL", 0)]
    conn.close()

    rows = read_db(db)
    assert set(rows) == {uid(i) for i in range(N_VALID)}
    from img_search.embedding import load_encoder

    encoder = load_encoder(str(tiny_models["siglip2"]), encoder="siglip2", device="cpu", precision="fp32")
    from img_search.data.images import decode_image

    for i in (0, 5):
        values = msgpack.unpackb(rows[uid(i)])  # plain msgpack: a list of floats
        assert isinstance(values, list) and all(isinstance(x, float) for x in values)
        assert len(values) == encoder.info.dim
        vec = np.asarray(values, np.float32)
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
        path = next(uuid_photos.rglob(f"{uid(i)}.jpg"))
        expected = encoder.encode_images([decode_image(path.read_bytes())])[0]
        assert float(vec @ expected) > 0.9999
        # exact float32 values: repacking gives the same bytes
        assert msgpack.packb(vec.tolist(), use_single_float=True) == rows[uid(i)]


def test_incremental_skip_then_recompute(uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "emb.db"
    model = tiny_models["siglip2"]
    run(uuid_photos, db, model, "--no-reproject_umap_embeddings", capsys=capsys)
    before = read_db(db)
    # a new image, and an existing UUID whose picture changed: only the new one is embedded
    make_jpeg(uuid_photos / "new" / f"{uid(100)}.jpg", seed=100)
    changed = next(uuid_photos.rglob(f"{uid(3)}.jpg"))
    make_jpeg(changed, seed=333, size=(64, 96))
    summary = run(uuid_photos, db, model, "--no-reproject_umap_embeddings", capsys=capsys)
    assert summary["embedded"] == 1 and summary["already_present"] == N_VALID and summary["stored"] == N_VALID + 1
    after = read_db(db)
    assert {k: v for k, v in after.items() if k != uid(100)} == before  # nothing present was rewritten
    summary = run(uuid_photos, db, model, "--no-reproject_umap_embeddings", "--recompute_existing_embeddings",
                  capsys=capsys)
    assert summary["embedded"] == N_VALID + 1 and summary["already_present"] == 0
    again = {k: np.asarray(msgpack.unpackb(v), np.float32) for k, v in read_db(db).items()}
    old = {k: np.asarray(msgpack.unpackb(v), np.float32) for k, v in before.items()}
    # rewritten from the changed picture; the others recomputed to the same vectors (up to float rounding: a batch
    # of other images changes the last bits)
    assert float(again[uid(3)] @ old[uid(3)]) < 0.999
    assert min(float(again[k] @ old[k]) for k in old if k != uid(3)) > 0.99999


def test_umap_model_and_projections(uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "emb.db"
    summary = run(uuid_photos, db, tiny_models["siglip2"], capsys=capsys)  # reproject is the default
    assert summary["umap"] == f"fitted on {N_VALID}"
    conn = sqlite3.connect(db)
    models = conn.execute(f"SELECT MODEL FROM {T}_UMAP_MODEL").fetchall()
    assert len(models) == 1
    umap_model = pickle.loads(models[0][0])
    assert type(umap_model).__name__ == "UMAP" and umap_model.embedding_.shape == (N_VALID, 2)
    assert umap_model.metric == "cosine" and umap_model.output_metric == "haversine"
    proj = {u: (la, lo) for u, la, lo in conn.execute(f"SELECT UUID, LATITUDE, LONGITUDE FROM {T}_UMAP_PROJECTIONS")}
    assert set(proj) == {uid(i) for i in range(N_VALID)}
    lat = np.array([v[0] for v in proj.values()])
    lon = np.array([v[1] for v in proj.values()])
    assert np.all((lat >= -90) & (lat <= 90)) and np.all((lon > -180) & (lon <= 180))
    from img_search.explore.sphere import angles_to_latlon

    # rows of the fit are in UUID order
    exp_lat, exp_lon = angles_to_latlon(umap_model.embedding_)
    ordered = [proj[u] for u in sorted(proj)]
    assert np.allclose([p[0] for p in ordered], exp_lat) and np.allclose([p[1] for p in ordered], exp_lon)
    conn.close()
    # nothing new: the stored projection is kept as it is
    again = run(uuid_photos, db, tiny_models["siglip2"], capsys=capsys)
    assert again["umap"] == "up to date" and again["embedded"] == 0
    with sqlite3.connect(db) as conn2:
        assert conn2.execute(f"SELECT MODEL FROM {T}_UMAP_MODEL").fetchall() == models


def test_runs_through_the_one_pipeline_loop(uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path],
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import img_search.pipeline.loop as loop

    calls: list[dict] = []
    batches: list[int] = []
    real = loop.run_loop

    def spy(sources, load, encoder, make_sink, **kw):  # type: ignore[no-untyped-def]
        calls.append({"n": len(sources), **kw})

        def counting_sink():  # type: ignore[no-untyped-def]
            sink = make_sink()
            put = sink.put

            def counted(batch, vectors):  # type: ignore[no-untyped-def]
                batches.append(len(batch))
                put(batch, vectors)

            sink.put = counted
            return sink

        return real(sources, load, encoder, counting_sink, **kw)

    monkeypatch.setattr(loop, "run_loop", spy)
    run(uuid_photos, tmp_path / "l.db", tiny_models["siglip2"], "--no-reproject_umap_embeddings", capsys=capsys)
    assert len(calls) == 1 and calls[0]["n"] == N_VALID and calls[0]["batch_size"] == 4
    assert batches == [4, 4, 1]


def test_too_few_for_umap_and_duplicate_uuid(tmp_path: Path, tiny_models: dict[str, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "few"
    make_jpeg(photos / "a" / f"{uid(1)}.jpg", seed=1)
    make_jpeg(photos / "b" / f"{uid(1).upper()}.JPG", seed=2)  # the same UUID again (any case): the first wins
    make_jpeg(photos / "b" / f"{uid(2)}.jpeg", seed=3)
    summary = run(photos, tmp_path / "few.db", tiny_models["siglip2"], capsys=capsys)
    assert summary["valid"] == 2 and summary["duplicate_uuids"] == 1 and summary["embedded"] == 2
    assert summary["umap"].startswith("skipped: 2 embeddings")
    assert set(read_db(tmp_path / "few.db")) == {uid(1), uid(2)}


def test_undecodable_image_is_reported_not_written(tmp_path: Path, tiny_models: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "p"
    make_jpeg(photos / f"{uid(1)}.jpg", seed=1)
    (photos / f"{uid(2)}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    summary = run(photos, tmp_path / "p.db", tiny_models["siglip2"], "--no-reproject_umap_embeddings", capsys=capsys)
    assert summary["embedded"] == 1 and [f["uuid"] for f in summary["failed"]] == [uid(2)]
    assert set(read_db(tmp_path / "p.db")) == {uid(1)}


def test_entry_points_and_errors(tmp_path: Path) -> None:
    env = dict(os.environ, IMG_SEARCH_INDEX_DIR=str(tmp_path / "idx"))
    mod = [sys.executable, "-m", "img_search.crossfilter.compute_embeddings_cli"]
    done = subprocess.run([*mod, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "--no-recompute_existing_embeddings" in done.stdout
    done = subprocess.run([*mod, "--input_dir", str(tmp_path / "missing"), "--output_embeddings_db",
                           str(tmp_path / "x.db")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: input folder") and done.stdout == ""
    img = [sys.executable, "-m", "img_search", "crossfilter"]
    done = subprocess.run([*img, "--embedding_type", "NOPE", "--input_dir", str(tmp_path), "--output_embeddings_db",
                           str(tmp_path / "x.db")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "SIGLIP2" in done.stderr and "NOPE" in done.stderr
    done = subprocess.run([*img, "--input_dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "--output_embeddings_db" in done.stderr


def test_negative_workers_refused_and_one_skipped_name_in_the_singular(
        uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """--workers -1 is a usage error naming the option (it ran silently with 0), before any database is made; the
    scan's warning counts one skipped name as '1 .jpg file' (was '1 .jpg files')."""
    db = tmp_path / "emb.db"
    code = main(["--embedding_type", T, "--input_dir", str(uuid_photos), "--output_embeddings_db", str(db),
                 "--model", str(tiny_models["siglip2"]), "--workers", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --workers must be a whole number >= 0 (0: decode in this process), got -1\n"
    assert not db.exists()
    photos = tmp_path / "one-bad-name"
    make_jpeg(photos / f"{uid(0)}.jpg", seed=0)
    make_jpeg(photos / "holiday.jpg", seed=1)
    code = main(["--embedding_type", T, "--input_dir", str(photos), "--output_embeddings_db", str(db),
                 "--model", str(tiny_models["siglip2"]), "--workers", "0", "--no-reproject_umap_embeddings"])
    err = capsys.readouterr().err
    assert code == 0 and "skipped 1 .jpg file whose name is not a UUID (e.g. " in err, err


def test_interoperates_with_crossfilters_msgpack_numpy_codec(uuid_photos: Path, tmp_path: Path,
                                                            tiny_models: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """crossfilter's own writer stores ``msgpack_numpy``-encoded arrays and its reader unpacks with
    ``msgpack_numpy``'s hook: a database it wrote is extended and re-projected here, and every row we write reads
    back through its reader as the same float32 values."""
    msgpack_numpy = pytest.importorskip("msgpack_numpy")
    db = tmp_path / "theirs.db"
    dim = 32
    theirs = np.random.default_rng(3).normal(size=(3, dim)).astype(np.float32)
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    with sqlite3.connect(db) as conn:  # the schema and rows as crossfilter's compute_embeddings_cli leaves them
        conn.execute(f"CREATE TABLE {T}_EMBEDDINGS (UUID TEXT PRIMARY KEY, EMBEDDING BLOB)")
        conn.executemany(f"INSERT INTO {T}_EMBEDDINGS VALUES (?, ?)",
                         [(uid(i), msgpack.packb(theirs[i], default=msgpack_numpy.encode)) for i in range(3)])
    summary = run(uuid_photos, db, tiny_models["siglip2"], capsys=capsys)
    assert summary["already_present"] == 3 and summary["embedded"] == N_VALID - 3
    rows = read_db(db)
    assert set(rows) == {uid(i) for i in range(N_VALID)}
    for i in range(N_VALID):
        vec = msgpack.unpackb(rows[uid(i)], object_hook=msgpack_numpy.decode)  # crossfilter's reader
        vec = np.asarray(vec, np.float32)
        assert vec.shape == (dim,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
        if i < 3:
            assert np.array_equal(vec, theirs[i])  # their rows are kept as they were
    with sqlite3.connect(db) as conn:  # the map covers their rows and ours
        assert conn.execute(f"SELECT COUNT(*) FROM {T}_UMAP_PROJECTIONS").fetchone()[0] == N_VALID
