"""Searching while `img-search index` writes, and two writers at once.

Readers (the CLI's `search` in its own process, and a ``Searcher`` shared by threads in this one) run while an
`index` process commits batches of new images: no "database is locked", no partial result (every search returns
its full limit, ranked, of live images, and a stored vector finds its own image first), and once the writer has
committed, the next refresh / the next `search` process sees every new image. The writer is also paused (SIGSTOP)
in the middle of its run, possibly inside a write transaction, while readers and a second writer come.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import CLI, cli, make_jpeg
from reliability_support import catalog_state, check_saved_index, integrity, one_line_error

N_BASE = 40  # indexed before the writer starts
N_NEW = 400  # what the writer adds, two per transaction
LIMIT = 10


def _photos(folder: Path, start: int, n: int) -> None:
    for i in range(start, start + n):
        make_jpeg(folder / f"{i // 100:02d}" / f"{i:04d}.jpg", seed=i, size=(48, 36))


def _ok_images(idx: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{idx / 'catalog.sqlite3'}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM images WHERE status = 'ok'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_siglip: Path) -> tuple[Path, Path, str]:
    """(photos with N_BASE images indexed, the index dir, the model name): copied by each test."""
    root = tmp_path_factory.mktemp("concurrency")
    photos, idx = root / "photos", root / "idx"
    _photos(photos, 0, N_BASE)
    done = cli("index", str(photos), "--model", str(tiny_siglip), "--index-dir", str(idx), "--json", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    return photos, idx, json.loads(done.stdout)["model"]


@pytest.fixture()
def setup(base: tuple[Path, Path, str], tmp_path: Path) -> tuple[Path, Path, str]:
    """(a folder of N_NEW new images, a copy of the base index dir, the model name)."""
    _, idx, model = base
    shutil.copytree(idx, tmp_path / "idx")
    _photos(tmp_path / "new", N_BASE, N_NEW)
    return tmp_path / "new", tmp_path / "idx", model


@contextlib.contextmanager
def _writer(photos: Path, idx: Path, model: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, "index", str(photos), "--model", str(model), "--index-dir", str(idx),
                                 "--batch-size", "2", "--workers", "0", "--json", "--quiet"],
                                stdout=subprocess.PIPE, stderr=out)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()


def _wait_for(idx: Path, proc: subprocess.Popen[bytes], at_least: int, log: Path) -> int:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        n = _ok_images(idx)
        if n >= at_least:
            return n
        assert proc.poll() is None, f"the writer ended before {at_least} images: {log.read_text()[-2000:]}"
        time.sleep(0.005)
    raise AssertionError("the writer made no progress")


def _cli_search(idx: Path) -> list[dict[str, object]]:
    done = cli("search", "a red car", "--index-dir", str(idx), "--limit", str(LIMIT), "--json")
    assert done.returncode == 0 and "locked" not in done.stderr, done.stderr[-2000:]
    hits: list[dict[str, object]] = json.loads(done.stdout)
    return hits


def test_searches_while_index_writes_see_whole_results_then_the_new_images(
        setup: tuple[Path, Path, str], tiny_siglip: Path, siglip_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from img_search.search.collection import Collection
    from img_search.search.searcher import Searcher

    photos, idx, model = setup
    base_state = catalog_state(idx, model)
    base_paths = sorted(base_state.vectors)
    queries = np.stack([base_state.vectors[p] for p in base_paths])
    searcher = Searcher(Collection.open(idx, model), siglip_encoder)
    assert len(searcher.collection) == N_BASE
    problems: list[str] = []
    sizes: list[int] = []
    searches = [0]
    stop = threading.Event()

    def search_loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                j = int(rng.integers(N_BASE))
                hits = searcher.search_vectors(queries[j][None, :], limit=LIMIT)[0]
                cos = [h.cosine for h in hits]
                if len(hits) != LIMIT or hits[0].path != base_paths[j] or abs(cos[0] - 1) > 1e-4 \
                        or cos != sorted(cos, reverse=True) or len({h.image_id for h in hits}) != LIMIT:
                    problems.append(f"vector query {j}: {[(h.path, h.cosine) for h in hits]}")
                if seed == 0 and len(searcher.search_text("a red car", limit=LIMIT)) != LIMIT:
                    problems.append("a text query returned fewer hits")
                searches[0] += 1
            except Exception as exc:
                problems.append(f"{type(exc).__name__}: {exc}")

    def refresh_loop() -> None:
        while not stop.is_set():
            try:
                searcher.refresh()
                sizes.append(len(searcher.collection))
            except Exception as exc:
                problems.append(f"refresh: {type(exc).__name__}: {exc}")
            time.sleep(0.02)

    threads = [threading.Thread(target=search_loop, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=refresh_loop))
    log = tmp_path / "writer.log"
    cli_hits: list[list[dict[str, object]]] = []
    for t in threads:
        t.start()
    try:
        with _writer(photos, idx, tiny_siglip, log) as writer:
            # CLI searches meanwhile, some with the writer paused in the middle of its batches
            for target in (N_BASE + 20, N_BASE + 120, N_BASE + 260):
                _wait_for(idx, writer, target, log)
                writer.send_signal(signal.SIGSTOP)
                try:
                    cli_hits.append(_cli_search(idx))
                finally:
                    writer.send_signal(signal.SIGCONT)
            while writer.poll() is None:
                cli_hits.append(_cli_search(idx))
            out = writer.communicate()[0]
            assert writer.returncode == 0, log.read_text()[-3000:]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert json.loads(out)["embedded"] == N_NEW
    (tmp_path / "counts.json").write_text(json.dumps({  # for docs/RELIABILITY.md
        "in_process_searches": searches[0], "cli_searches": len(cli_hits), "views": sorted(set(sizes))}))
    assert problems == [], problems[:5]
    assert searches[0] > 0 and all(len(h) == LIMIT for h in cli_hits) and len(cli_hits) >= 3
    assert sizes == sorted(sizes)  # the view only grows while images are only added
    # committed: the next refresh (or the refresher already did) and the next search process see every image
    searcher.refresh()
    assert len(searcher.collection) == N_BASE + N_NEW
    state = catalog_state(idx, model)
    new_path = sorted(set(state.vectors) - set(base_paths))[7]
    assert searcher.search_vectors(state.vectors[new_path][None, :], limit=1)[0][0].path == new_path
    done = cli("search", "a red car", "--index-dir", str(idx), "--limit", "100000", "--json")
    assert len(json.loads(done.stdout)) == N_BASE + N_NEW
    searcher.close()
    assert integrity(idx / "catalog.sqlite3") == "ok"
    check_saved_index(idx, model)


def test_a_second_writer_is_refused_clearly_and_the_first_completes(
        setup: tuple[Path, Path, str], tiny_siglip: Path, siglip_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from img_search.errors import CatalogLockedError
    from img_search.pipeline.runner import IndexOptions, index_folders

    photos, idx, model = setup
    other = tmp_path / "other"
    _photos(other, 1000, 5)
    log = tmp_path / "writer.log"
    with _writer(photos, idx, tiny_siglip, log) as first:
        _wait_for(idx, first, N_BASE + 30, log)
        first.send_signal(signal.SIGSTOP)  # a slow first writer, stopped between or inside its transactions
        try:
            for folder in (photos, other):  # the same folder or another one: one writer per index dir
                second = cli("index", str(folder), "--model", str(tiny_siglip), "--index-dir", str(idx), "--quiet")
                line = one_line_error(second)
                assert second.returncode == 1
                assert f"another `img-search index` (pid {first.pid}) is already writing to {idx}" in line
            with pytest.raises(CatalogLockedError, match=f"pid {first.pid}"):
                index_folders([str(other)], idx, IndexOptions(model=str(tiny_siglip), workers=0),
                              encoder_factory=lambda: siglip_encoder)
            assert len(_cli_search(idx)) == LIMIT  # and search works meanwhile
        finally:
            first.send_signal(signal.SIGCONT)
        out = first.communicate()[0]
        assert first.returncode == 0, log.read_text()[-3000:]
    assert json.loads(out)["embedded"] == N_NEW
    assert integrity(idx / "catalog.sqlite3") == "ok"
    state = catalog_state(idx, model)
    assert state.n_rows == N_BASE + N_NEW and set(state.statuses.values()) == {"ok"}
    assert not any(p.startswith(str(other)) for p in state.statuses)  # the refused runs wrote nothing
    check_saved_index(idx, model)
    # the lock went with the first writer: the other folder indexes now
    third = cli("index", str(other), "--model", str(tiny_siglip), "--index-dir", str(idx), "--json", "--quiet")
    assert third.returncode == 0 and json.loads(third.stdout)["embedded"] == 5

