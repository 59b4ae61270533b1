"""A missing optional library or a bad output path ends a command with one `error:` line, before any work, and
leaves no file behind: export (pyarrow), map (umap-learn, --png / --html), crossfilter (umap-learn, the database)."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytest
from helpers import make_jpeg, run_main

from img_search.errors import InvalidInputError, UnavailableError
from img_search.files import check_output_file
from img_search.optional import require

CROSSFILTER_UUIDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(3)]


@pytest.fixture()
def indexed(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> Path:
    from img_search.embedding import load_encoder
    from img_search.pipeline.runner import IndexOptions, index_folders

    idx = tmp_path / "idx"
    index_folders([str(photo_dir)], idx, IndexOptions(model=str(tiny_siglip), batch_size=4, workers=0),
                  encoder_factory=partial(load_encoder, str(tiny_siglip), device="cpu"))
    return idx


@pytest.fixture()
def uuid_photos(tmp_path: Path) -> Path:
    for i, u in enumerate(CROSSFILTER_UUIDS):
        make_jpeg(tmp_path / "uuids" / f"{u}.jpg", seed=i)
    return tmp_path / "uuids"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# -- the two helpers ------------------------------------------------------------------------------------------------
def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require("json", extra="x", needed_for="y").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(UnavailableError, match=r"the map needs umap-learn.*pip install 'img-search\[explore\]'"):
        require("umap", extra="explore", needed_for="the map", package="umap-learn")


def test_check_output_file(tmp_path: Path) -> None:
    assert check_output_file(tmp_path / "new.parquet") == tmp_path / "new.parquet"
    (tmp_path / "old.png").write_bytes(b"x")
    assert check_output_file(str(tmp_path / "old.png")) == tmp_path / "old.png"  # replaced by the writer
    with pytest.raises(InvalidInputError, match="is a folder"):
        check_output_file(tmp_path, "--html")
    with pytest.raises(InvalidInputError, match="does not exist; create it first"):
        check_output_file(tmp_path / "missing" / "v.parquet")
    with pytest.raises(InvalidInputError, match=r"old\.png' is not a folder but a file; give a path inside a folder$"):
        check_output_file(tmp_path / "old.png" / "v.parquet")  # not 'the folder ... is not a folder; create it first'
    assert not (tmp_path / "missing").exists()


def test_check_output_file_refuses_a_folder_it_cannot_write(tmp_path: Path, read_only_mount) -> None:  # type: ignore[no-untyped-def]
    """Read-only media (EROFS even for root) are refused before any work, and the probe leaves nothing behind."""
    (tmp_path / "media").mkdir()
    ro = read_only_mount(tmp_path / "media")
    with pytest.raises(UnavailableError, match=r"--png '.*/x\.png': cannot write in the folder .*Read-only file"):
        check_output_file(ro / "x.png", "--png")
    assert check_output_file(tmp_path / "media" / "x.png") == tmp_path / "media" / "x.png"
    assert listing(tmp_path / "media") == set()  # the probe was removed


def test_unwritable_output_folders_one_line_before_any_work(
        indexed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_siglip: Path, uuid_photos: Path,
        monkeypatch: pytest.MonkeyPatch, read_only_mount) -> None:  # type: ignore[no-untyped-def]
    """export -o, map --png / --html and crossfilter's database in a read-only folder: exit 1 with one line naming
    the option, no traceback (were pyarrow's / Pillow's / sqlite3's OSError after the work), nothing fitted or
    embedded."""
    import img_search.crossfilter.compute as compute
    import img_search.explore.umap_map as umap_map

    def no_work(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("an unwritable output folder must be refused before the work")

    monkeypatch.setattr(umap_map, "update_map", no_work)
    monkeypatch.setattr(compute, "_default_encoder", no_work)
    (tmp_path / "out").mkdir()
    ro = read_only_mount(tmp_path / "out")
    common = ("--index-dir", str(indexed), "--model", str(tiny_siglip))
    for args in (("export", "-o", str(ro / "v.parquet"), "--index-dir", str(indexed)),
                 ("map", "--png", str(ro / "m.png"), *common),
                 ("map", "--html", str(ro / "m.html"), *common),
                 ("crossfilter", "--input_dir", str(uuid_photos), "--output_embeddings_db", str(ro / "e.db"),
                  "--model", str(tiny_siglip), "--workers", "0")):
        code, _, err = run_main(capsys, *args)
        line = one_error_line(err)
        written = next(a for a in args if a.startswith(str(ro)))
        assert code == 1 and "cannot write in the folder" in line and written in line, (args, err)
    assert listing(tmp_path / "out") == set()


@pytest.fixture()
def full_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tmpfs holding an earlier map ``m.html`` and filled to the last byte (root only; skipped where mount is
    refused)."""
    import os
    import subprocess

    target = tmp_path / "full"
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (target / "m.html").write_text("an earlier map\n")
        fd = os.open(target / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_a_full_disk_under_an_output_file_is_one_line_and_keeps_the_old_file(
        indexed: Path, capsys: pytest.CaptureFixture[str], tiny_siglip: Path, full_disk: Path) -> None:
    """export -o, map --html and map --png onto a full disk: exit 1, one line saying there is no space (were
    pyarrow's / pathlib's / matplotlib's OSError tracebacks), no half-written file (--png left an empty m.png), and
    the earlier m.html as it was (write_text had truncated it)."""
    common = ("--index-dir", str(indexed), "--model", str(tiny_siglip))
    for args in (("export", "-o", str(full_disk / "v.parquet"), "--index-dir", str(indexed)),
                 ("map", "--html", str(full_disk / "m.html"), *common),
                 ("map", "--png", str(full_disk / "m.png"), *common)):
        code, _, err = run_main(capsys, *args)
        line = one_error_line(err)
        assert code == 1 and "no space left on the device" in line and args[2] in line, (args, err)
        assert listing(full_disk) == {"m.html", "filler"}, args
        assert (full_disk / "m.html").read_text() == "an earlier map\n"


# -- export -----------------------------------------------------------------------------------------------------------
def test_export_without_pyarrow(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out = tmp_path / "v.parquet"
    code, _, err = run_main(capsys, "export", "-o", str(out), "--index-dir", str(tmp_path / "idx"))
    assert code == 1 and "pip install 'img-search[eval]'" in one_error_line(err)
    assert not out.exists() and not (tmp_path / "idx").exists()
    code, _, err = run_main(capsys, "export", "-o", str(out), "--format", "nope", "--index-dir", str(tmp_path))
    assert code == 2 and "nope" in one_error_line(err)


def test_export_bad_output_paths(indexed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "somedir"
    folder.mkdir()
    before = listing(tmp_path)
    code, _, err = run_main(capsys, "export", "-o", str(folder), "--index-dir", str(indexed))
    assert code == 2 and "is a folder" in one_error_line(err)
    assert listing(tmp_path) == before and listing(folder) == set()  # no somedir.tmp
    code, _, err = run_main(capsys, "export", "-o", str(tmp_path / "missing" / "v.parquet"), "--index-dir",
                            str(indexed))
    assert code == 2 and "does not exist" in one_error_line(err)
    assert not (tmp_path / "missing").exists()
    code, _, err = run_main(capsys, "export", "-o", str(tmp_path / "v.parquet"), "--index-dir", str(indexed))
    assert code == 0 and (tmp_path / "v.parquet").stat().st_size > 0


# -- map --------------------------------------------------------------------------------------------------------------
def test_map_without_umap(indexed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                          tiny_siglip: Path) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)
    from img_search.explore.umap_map import MAPS_DIR

    code, _, err = run_main(capsys, "map", "--index-dir", str(indexed), "--model", str(tiny_siglip))
    assert code == 1 and "umap-learn" in (line := one_error_line(err)) and "img-search[explore]" in line
    assert not (indexed / MAPS_DIR).exists()  # checked before the map's folder and lock are made


def test_map_bad_output_paths(indexed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                              tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ("--index-dir", str(indexed), "--model", str(tiny_siglip))
    import img_search.explore.umap_map as umap_map

    real_update = umap_map.update_map

    def no_fit(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a bad output path must be refused before the map is fitted")

    monkeypatch.setattr(umap_map, "update_map", no_fit)
    code, _, err = run_main(capsys, "map", "--png", str(tmp_path / "nonexistent" / "dir" / "map.png"), *common)
    assert code == 2 and "does not exist" in one_error_line(err)
    assert not (tmp_path / "nonexistent").exists()
    folder = tmp_path / "somedir"
    folder.mkdir()
    code, _, err = run_main(capsys, "map", "--html", str(folder), *common)
    assert code == 2 and "is a folder" in one_error_line(err) and listing(folder) == set()
    monkeypatch.setattr(umap_map, "update_map", real_update)
    code, _, err = run_main(capsys, "map", "--html", str(tmp_path / "m.html"), *common)
    assert code == 0 and (tmp_path / "m.html").read_text().startswith("<!doctype html>")


# -- crossfilter ------------------------------------------------------------------------------------------------------
def crossfilter(capsys: pytest.CaptureFixture[str], photos: Path, db: Path, model: Path | str,
                *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "crossfilter", "--input_dir", str(photos), "--output_embeddings_db", str(db),
                    "--model", str(model), "--workers", "0", *extra)


def test_crossfilter_without_umap_fails_before_embedding(
        uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import img_search.crossfilter.compute as compute

    loaded: list[str] = []
    monkeypatch.setattr(compute, "_default_encoder", lambda checkpoint, name: loaded.append(checkpoint))
    monkeypatch.setitem(sys.modules, "umap", None)
    db = tmp_path / "emb.db"
    code, _, err = crossfilter(capsys, uuid_photos, db, tiny_models["siglip2"])
    line = one_error_line(err)
    assert code == 1 and "umap-learn" in line and "img-search[explore]" in line, line
    assert loaded == [] and not db.exists()
    monkeypatch.undo()  # without reprojection umap-learn is not needed
    monkeypatch.setitem(sys.modules, "umap", None)
    code, out, err = crossfilter(capsys, uuid_photos, db, tiny_models["siglip2"], "--no-reproject_umap_embeddings")
    assert code == 0, err
    assert "3 embedded" in out


def test_crossfilter_bad_database_path(uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "somedir"
    folder.mkdir()
    code, _, err = crossfilter(capsys, uuid_photos, folder, tiny_models["siglip2"])
    assert code == 2 and "is a folder" in one_error_line(err) and listing(folder) == set()
    (tmp_path / "a-file").write_text("x")
    code, _, err = crossfilter(capsys, uuid_photos, tmp_path / "a-file" / "e.db", tiny_models["siglip2"])
    assert code == 2 and "not a folder" in one_error_line(err)


def test_crossfilter_failed_model_load_leaves_no_database(uuid_photos: Path, tmp_path: Path,
                                                          tiny_models: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = listing(tmp_path)
    code, _, err = crossfilter(capsys, uuid_photos, tmp_path / "emb.db", tmp_path / "no-such-model")
    assert code != 0 and "no-such-model" in one_error_line(err)
    assert listing(tmp_path) == before  # no emb.db, -wal, -shm
    # an existing database is kept as it was when the model fails to load
    code, _, err = crossfilter(capsys, uuid_photos, tmp_path / "emb.db", tiny_models["siglip2"],
                               "--no-reproject_umap_embeddings")
    assert code == 0, err
    make_jpeg(uuid_photos / "00000000-0000-4000-8000-000000000099.jpg", seed=99)
    code, _, err = crossfilter(capsys, uuid_photos, tmp_path / "emb.db", tmp_path / "no-such-model")
    assert code != 0 and (tmp_path / "emb.db").exists()


def test_crossfilter_removes_the_database_it_created_when_nothing_was_stored(
        uuid_photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import img_search.crossfilter.compute as compute

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(compute, "_embed", interrupted)
    db = tmp_path / "emb.db"
    with pytest.raises(KeyboardInterrupt):
        compute.compute_embeddings(uuid_photos, db, reproject=False, encoder_factory=lambda c, n: object())  # type: ignore[arg-type,return-value]
    assert not db.exists() and not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()


def test_crossfilter_database_that_is_not_sqlite_is_refused_and_kept(
        uuid_photos: Path, tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--output_embeddings_db naming a file that is not SQLite (a script, a photo): exit 2, one line, no
    sqlite3.DatabaseError traceback, the file byte-for-byte as it was, no -wal / -shm beside it, no model loaded."""
    import img_search.crossfilter.compute as compute

    loaded: list[str] = []
    monkeypatch.setattr(compute, "_default_encoder", lambda checkpoint, name: loaded.append(checkpoint))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n" * 40)
    before = listing(tmp_path)
    code, _, err = crossfilter(capsys, uuid_photos, notes, tiny_models["siglip2"])
    line = one_error_line(err)
    assert code == 2 and "not an SQLite database" in line and str(notes) in line, err
    assert notes.read_text() == "my notes, not a database\n" * 40
    assert listing(tmp_path) == before and loaded == []
