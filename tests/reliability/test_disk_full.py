"""A full disk and read-only media.

Disk full: the index dir lives on a small tmpfs the test mounts (root only; skipped otherwise), filled up to leave
less and less room; `img-search index` must fail in one line naming the full device, leave the catalog intact and
the saved search index complete (the previous generation, or the new one; never a part), and complete once there
is room. Read-only media: the photos on a read-only bind mount are indexed without a byte written to them, and a
catalog left by a killed run (changes still in its WAL) answers searches from a read-only mount.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from helpers import CLI, cli, make_jpeg, tmpfs
from reliability_support import (
    catalog_state,
    check_generations,
    check_saved_index,
    integrity,
    one_line_error,
    resize_tmpfs,
)

from img_search.catalog import Catalog

N_FIRST, N_MORE = 12, 300
# free space left before each run (KiB): too little to open the catalog (SQLite's WAL index needs 32), to commit one
# batch, and room for part of the batches
FREE_KIB = (8, 48, 320, 1280)
HNSWLIB = {"IMG_SEARCH_SEARCH__ANN_BACKEND": "hnswlib", "IMG_SEARCH_SEARCH__ANN_THRESHOLD": "0"}


def _leave_free(mnt: Path, free: int) -> None:
    filler = mnt / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(mnt)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - free))


def _temporaries(idx: Path) -> list[str]:
    """Files and folders a writer creates under a temporary name (``.NAME.tmp``, ``.CURRENT.tmp-PID``)."""
    return sorted(str(p.relative_to(idx)) for p in idx.rglob(".*") if ".tmp" in p.name)


def test_index_until_the_disk_is_full_then_on_a_bigger_one(tmp_path: Path, tiny_siglip: Path) -> None:
    env: dict[str, str] = {}
    photos = tmp_path / "photos"
    for i in range(N_FIRST):
        make_jpeg(photos / "first" / f"{i:03d}.jpg", seed=i)
    with tmpfs(tmp_path / "mnt", 8 << 20) as mnt:
        idx = mnt / "idx"
        args = ("index", str(photos), "--model", str(tiny_siglip), "--index-dir", str(idx), "--batch-size", "8",
                "--workers", "0", "--json", "--quiet")
        first = cli(*args, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        model = json.loads(first.stdout)["model"]
        for i in range(N_MORE):
            make_jpeg(photos / "more" / f"{i:03d}.jpg", seed=1000 + i)
        outcomes: list[tuple[int, int, int]] = []  # (free KiB, exit code, images in the catalog after)
        for kib in FREE_KIB:
            _leave_free(mnt, kib << 10)
            run = cli(*args, env=env)
            (mnt / "filler").unlink()  # room to check (SQLite needs some to open a WAL catalog)
            if run.returncode != 0:
                line = one_line_error(run)
                assert run.returncode == 1 and "no space left on the device holding" in line, line
            assert integrity(idx / "catalog.sqlite3") == "ok", kib
            with Catalog.in_dir(idx, readonly=True) as cat:
                model_id = cat.get_model(model).id  # type: ignore[union-attr]
                done = cat.status_counts().get("ok", 0)
            check_generations(idx, model_id)
            assert _temporaries(idx) == [], kib
            outcomes.append((kib, run.returncode, done))
        (tmp_path / "outcomes.json").write_text(json.dumps(outcomes))  # for docs/RELIABILITY.md
        failed = [o for o in outcomes if o[1] != 0]
        assert len(failed) >= 3, outcomes
        counts = [o[2] for o in outcomes]
        assert counts == sorted(counts) and counts[-1] > N_FIRST, outcomes  # each run kept what it committed

        resize_tmpfs(mnt, 64 << 20)  # a bigger disk
        final = cli(*args, env=env)
        assert final.returncode == 0, final.stderr[-3000:]
        state = catalog_state(idx, model)
        assert state.n_rows == N_FIRST + N_MORE and set(state.statuses.values()) == {"ok"}
        assert integrity(idx / "catalog.sqlite3") == "ok"
        assert check_saved_index(idx, model) == "exact"
        assert _temporaries(idx) == []

        # full again while only the saved index must be written (a new backend: a new generation of 312 vectors)
        _leave_free(mnt, 40 << 10)
        switch = cli(*args, env=HNSWLIB)
        (mnt / "filler").unlink()
        line = one_line_error(switch)
        assert switch.returncode == 1 and "no space left on the device holding" in line, line
        assert "saving the search index" in line, line  # the catalog's bookkeeping fitted, the new index did not
        check_generations(idx, model_id)  # the exact generation stays in force, nothing of the new one is left
        assert check_saved_index(idx, model) == "exact" and _temporaries(idx) == []
        again = cli(*args, env=HNSWLIB)
        assert again.returncode == 0, again.stderr[-3000:]
        assert check_saved_index(idx, model) == "hnswlib" and integrity(idx / "catalog.sqlite3") == "ok"


# -- read-only media -------------------------------------------------------------------------------------------------
def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_photos_on_read_only_media_are_indexed_without_a_write(tmp_path: Path, tiny_siglip: Path,
                                                               read_only_mount) -> None:  # type: ignore[no-untyped-def]
    photos = tmp_path / "photos"
    for i in range(10):
        make_jpeg(photos / f"{i:02d}.jpg", seed=i)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff" + bytes(50))
    ro = read_only_mount(photos)
    before = _tree(ro)
    done = cli("index", str(ro), "--model", str(tiny_siglip), "--index-dir", str(tmp_path / "idx"), "--json", "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["embedded"] == 10 and [os.path.basename(f["path"]) for f in summary["failed"]] == ["broken.jpg"]
    assert _tree(ro) == before and _tree(photos) == before


def test_a_killed_runs_catalog_answers_from_read_only_media(tmp_path: Path, tiny_siglip: Path,
                                                             read_only_mount) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL leaves committed pages in the WAL (never checkpointed). From a read-only mount, SQLite reads them
    through the WAL index the killed run left; where it cannot (no WAL index file), the catalog is opened as of its
    last checkpoint and the search says so. Either way: a whole, consistent answer."""
    photos = tmp_path / "photos"
    for i in range(60):
        make_jpeg(photos / f"{i:02d}.jpg", seed=i)
    idx = tmp_path / "idx"
    first = cli("index", str(photos), "--model", str(tiny_siglip), "--index-dir", str(idx), "-q", "--json")
    assert first.returncode == 0
    for i in range(60, 360):
        make_jpeg(photos / f"{i:03d}.jpg", seed=i)
    proc = subprocess.Popen([*CLI, "index", str(photos), "--model", str(tiny_siglip), "--index-dir", str(idx),
                             "--batch-size", "2", "--workers", "0", "-q"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        wal = idx / "catalog.sqlite3-wal"
        if wal.exists() and wal.stat().st_size > 200_000:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (idx / "catalog.sqlite3-wal").stat().st_size > 0
    ro = read_only_mount(idx)
    hits = cli("search", "a red car", "--index-dir", str(ro), "--limit", "100000", "--json")
    assert hits.returncode == 0, hits.stderr[-3000:]
    found = {h["path"] for h in json.loads(hits.stdout)}
    assert len(found) == len(json.loads(hits.stdout)) >= 60 and all(os.path.exists(p) for p in found)
    writable = cli("search", "a red car", "--index-dir", str(idx), "--limit", "100000", "--json")
    everything = {h["path"] for h in json.loads(writable.stdout)}
    assert found == everything or (found < everything and "holds changes not yet merged" in hits.stderr)
    assert len(everything) > 60  # the killed run had committed new images
    (idx / "catalog.sqlite3-shm").unlink()  # as on media copied without it: the WAL cannot be read
    ro_bare = cli("search", "a red car", "--index-dir", str(ro), "--limit", "100000", "--json")
    assert ro_bare.returncode == 0, ro_bare.stderr[-3000:]
    bare = [h["path"] for h in json.loads(ro_bare.stdout)]
    assert "holds changes not yet merged" in ro_bare.stderr
    assert len(set(bare)) == len(bare) >= 60 and set(bare) <= everything
