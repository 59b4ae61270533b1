"""The saved per-model search index: one writer (generations switched atomically), read-only readers that catch up
in memory, backend choice."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from img_search.catalog import Catalog, ImageRecord
from img_search.search.store import CURRENT, VectorStore, choose_backend, read_current
from img_search.settings import SearchSettings

DIM = 8


def _add(cat: Catalog, mid: int, start: int, n: int, rng: np.random.Generator) -> None:
    recs = [ImageRecord(f"/p/{i}.jpg", 1, 1, i.to_bytes(16, "big"), 1, 1) for i in range(start, start + n)]
    cat.record(recs, model_id=mid, vectors=rng.standard_normal((n, DIM)).astype(np.float32))


def _exact_top(cat: Catalog, mid: int, q: np.ndarray, k: int) -> list[int]:
    ids, vecs = cat.load_vectors(mid, DIM)
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return ids[np.argsort(-(vecs @ q))[:k]].tolist()


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _store(tmp_path: Path, cat: Catalog, search: SearchSettings) -> VectorStore:
    model = cat.get_model("m")
    assert model is not None
    return VectorStore(tmp_path, cat, model, search)


@pytest.mark.parametrize("backend", ["exact", "hnswlib", "qdrant_edge"])
def test_reader_catches_up_in_memory_and_writes_nothing(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(0)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 50, rng)
    search = SearchSettings(ann_backend=backend, ann_threshold=0)
    assert _store(tmp_path, cat, search).sync() == backend
    gen = read_current(tmp_path / "vectors" / f"model-{mid}")
    assert gen is not None and gen.backend == backend and gen.count == 50

    _add(cat, mid, 50, 10, rng)  # new images
    cat.mark_deleted(["/p/3.jpg", "/p/7.jpg"])  # deleted
    cat.record([ImageRecord("/p/5.jpg", 2, 2, b"\x99" * 16, 1, 1)], model_id=mid,
               vectors=rng.standard_normal((1, DIM)).astype(np.float32))  # changed content
    deleted = {cat.image(p).id for p in ("/p/3.jpg", "/p/7.jpg")}  # type: ignore[union-attr]
    before = _snapshot(tmp_path / "vectors")
    reader = Catalog.in_dir(tmp_path, readonly=True)
    index, used, generation = _store(tmp_path, reader, search).open_reader()
    assert (used, generation) == (backend, gen.name) and len(index) == 58
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        got = index.search(q[None, :], 5)[0][0].tolist()
        assert got == _exact_top(cat, mid, q, 5)
        assert not deleted & set(index.search(q[None, :], 58)[0][0].tolist())
    del index
    assert _snapshot(tmp_path / "vectors") == before  # a reader never writes the saved index

    # the writer saves a new generation; the reader then has nothing left to apply
    _store(tmp_path, cat, search).sync()
    new = read_current(tmp_path / "vectors" / f"model-{mid}")
    assert new is not None and new.name != gen.name and new.count == 58
    index, _, generation = _store(tmp_path, reader, search).open_reader()
    assert generation == new.name and len(index) == 58


def test_writer_keeps_one_previous_generation_and_skips_no_ops(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    root = tmp_path / "vectors" / f"model-{mid}"
    search = SearchSettings(ann_backend="hnswlib", ann_threshold=0)
    names = []
    for start in range(0, 40, 10):
        _add(cat, mid, start, 10, rng)
        _store(tmp_path, cat, search).sync()
        gen = read_current(root)
        assert gen is not None
        names.append(gen.name)
    assert len(set(names)) == 4
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(names[-2:])
    mtime = (root / CURRENT).stat().st_mtime_ns
    _store(tmp_path, cat, search).sync()  # nothing changed: no new generation
    assert (root / CURRENT).stat().st_mtime_ns == mtime and read_current(root).name == names[-1]  # type: ignore[union-attr]


def test_a_failed_write_leaves_the_current_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 20, rng)
    search = SearchSettings(ann_backend="exact", ann_threshold=0)
    _store(tmp_path, cat, search).sync()
    root = tmp_path / "vectors" / f"model-{mid}"
    before = read_current(root)
    _add(cat, mid, 20, 5, rng)
    import img_search.search.store as store_module

    def boom(path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "fsync_tree", boom)
    with pytest.raises(OSError, match="disk full"):
        _store(tmp_path, cat, search).sync()
    after = read_current(root)
    assert after == before and not [p for p in root.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    _store(tmp_path, cat, search).sync()
    assert read_current(root).count == 25  # type: ignore[union-attr]


def test_backend_follows_threshold_and_mismatch_builds_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 30, rng)
    assert _store(tmp_path, cat, SearchSettings(ann_backend="hnswlib", ann_threshold=31)).sync() == "exact"
    assert _store(tmp_path, cat, SearchSettings(ann_backend="hnswlib", ann_threshold=30)).sync() == "hnswlib"
    before = _snapshot(tmp_path / "vectors")
    index, backend, generation = _store(tmp_path, cat, SearchSettings(ann_backend="faiss",
                                                                      ann_threshold=0)).open_reader()
    assert (backend, generation, len(index)) == ("faiss", None, 30)  # no saved faiss index: built in memory
    assert _snapshot(tmp_path / "vectors") == before


def test_damaged_saved_index_is_bypassed(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 20, rng)
    search = SearchSettings(ann_backend="hnswlib", ann_threshold=0)
    _store(tmp_path, cat, search).sync()
    gen = read_current(tmp_path / "vectors" / f"model-{mid}")
    assert gen is not None
    for f in (gen.path / "index").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    index, _, generation = _store(tmp_path, cat, search).open_reader()
    assert len(index) == 20 and generation is None
    (gen.path.parent / CURRENT).write_text(json.dumps({"generation": "nonsense"}))
    assert read_current(gen.path.parent) is None
    assert len(_store(tmp_path, cat, search).open_reader()[0]) == 20


def test_default_backend_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import img_search.search.store as store
    from img_search.index import BackendUnavailableError

    search = SearchSettings()
    assert choose_backend(search, 19_999) == "exact"
    assert choose_backend(search, 20_000) == "qdrant_edge"

    def missing(name: str):  # type: ignore[no-untyped-def]
        raise BackendUnavailableError(f"index backend {name!r} needs a library that is not installed")

    monkeypatch.setattr(store, "resolve_backend", missing)
    assert choose_backend(search, 20_000) == "hnswlib"
    assert choose_backend(SearchSettings(ann_backend="faiss"), 20_000) == "faiss"  # an explicit choice is kept


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_reader_on_read_only_bind_mount(tmp_path: Path, read_only_mount) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    cat = Catalog.in_dir(tmp_path / "idx")
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 40, rng)
    search = SearchSettings(ann_backend="qdrant_edge", ann_threshold=0)
    _store(tmp_path / "idx", cat, search).sync()
    _add(cat, mid, 40, 5, rng)  # committed after the save: caught up in memory
    cat.close()
    ro = read_only_mount(tmp_path / "idx")
    reader = Catalog.in_dir(ro, readonly=True)
    index, backend, generation = _store(ro, reader, search).open_reader()
    assert backend == "qdrant_edge" and generation is not None and len(index) == 45


def _writer_process(index_dir: str, n_batches: int, seed: int) -> None:
    """What `index` does, batch after batch: commit vectors to the catalog, then sync the saved index."""
    from img_search.catalog.lock import IndexLock

    rng = np.random.default_rng(seed)
    search = SearchSettings(ann_backend="qdrant_edge", ann_threshold=10, params={"qdrant_edge": {
        "indexing_threshold": 10, "full_scan_threshold": 10}})
    with IndexLock(Path(index_dir)), Catalog.in_dir(Path(index_dir)) as cat:
        mid = cat.get_model("m").id  # type: ignore[union-attr]
        for b in range(n_batches):
            _add_separated(cat, mid, 1000 + 40 * b, 40, rng)
            if b % 3 == 2:
                cat.mark_deleted([f"/p/{1000 + 40 * b}.jpg"])
            _store(Path(index_dir), cat, search).sync()


def _add_separated(cat: Catalog, mid: int, start: int, n: int, rng: np.random.Generator) -> None:
    """Vectors near one of 64 well-separated directions (orthogonal in 64-d), so ANN and exact agree."""
    centres = np.eye(64, dtype=np.float32)
    which = rng.integers(0, 64, n)
    vecs = centres[which] + 0.05 * rng.standard_normal((n, 64)).astype(np.float32)
    recs = [ImageRecord(f"/p/{i}.jpg", 1, 1, i.to_bytes(16, "big"), 1, 1) for i in range(start, start + n)]
    cat.record(recs, model_id=mid, vectors=vecs)


def test_searches_during_an_index_run_leave_the_ann_index_exact(tmp_path: Path) -> None:
    """The case `search_during_index_ann.sh`: readers search while a writer process adds and deletes; afterwards
    the saved ANN index answers like exact search, and no search ever returned a deleted image."""
    import multiprocessing as mp

    rng = np.random.default_rng(6)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=64, logit_scale=1.0, logit_bias=0.0)
    _add_separated(cat, mid, 0, 300, rng)
    search = SearchSettings(ann_backend="qdrant_edge", ann_threshold=10, params={"qdrant_edge": {
        "indexing_threshold": 10, "full_scan_threshold": 10}})
    _store(tmp_path, cat, search).sync()
    writer = mp.get_context("spawn").Process(target=_writer_process, args=(str(tmp_path), 15, 7))
    writer.start()
    reader = Catalog.in_dir(tmp_path, readonly=True)
    searches = 0
    while writer.is_alive() or searches < 3:
        index, backend, _ = _store(tmp_path, reader, search).open_reader()
        q = np.eye(64, dtype=np.float32)[searches % 64][None, :]
        ids = [i for i in index.search(q, 10)[0][0].tolist() if i >= 0]
        assert len(ids) == 10 and backend == "qdrant_edge"
        searches += 1
    writer.join(60)
    assert writer.exitcode == 0 and searches >= 3
    index, backend, generation = _store(tmp_path, reader, search).open_reader()
    assert backend == "qdrant_edge" and generation is not None
    live = cat.live_entries(mid)[0]
    assert len(index) == len(live) == 300 + 15 * 40 - 5
    for centre in range(0, 64, 4):
        q = np.eye(64, dtype=np.float32)[centre]
        ann = index.search(q[None, :], 10)[0][0].tolist()
        assert set(ann) == set(_exact_top_dim(cat, mid, q, 10, 64))
    deleted = {cat.image(f"/p/{1000 + 40 * b}.jpg").id for b in range(2, 15, 3)}  # type: ignore[union-attr]
    assert not deleted & set(index.search(np.eye(64, dtype=np.float32), len(index))[0].reshape(-1).tolist())


def _exact_top_dim(cat: Catalog, mid: int, q: np.ndarray, k: int, dim: int) -> list[int]:
    ids, vecs = cat.load_vectors(mid, dim)
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return ids[np.argsort(-(vecs @ q))[:k]].tolist()


@pytest.mark.parametrize("params", [{"ef": -5}, {"ef": "many"}, {"M": float("inf")}])
def test_a_configured_backend_value_it_refuses_is_a_config_error(tmp_path: Path, params: dict) -> None:
    """[search.params.hnswlib] values the backend cannot take: one ConfigError naming the table (exit 2), no
    TypeError / ValueError traceback, and no generation written."""
    from img_search.errors import ConfigError

    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    _add(cat, mid, 0, 20, np.random.default_rng(0))
    search = SearchSettings(ann_backend="hnswlib", ann_threshold=0, params={"hnswlib": params})
    with pytest.raises(ConfigError, match=r"search\.params\.hnswlib: .*refused"):
        _store(tmp_path, cat, search).sync()
    assert read_current(tmp_path / "vectors" / f"model-{mid}") is None
