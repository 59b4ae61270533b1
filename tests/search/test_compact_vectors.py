"""The int8 first pass of exact filtered search (search/compact.py): the same ids and the same float32 cosines as the
float32-only path on clustered data, with and without numkong, on a generation saved without the int8 copy, and
through a reader with changes committed after the saved generation."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from img_search.catalog import Catalog, ImageRecord
from img_search.search import compact as compact_mod
from img_search.search import store as store_mod
from img_search.search.collection import Collection
from img_search.search.compact import CompactVectors, candidate_count, quantize
from img_search.search.store import VectorLookup, VectorStore
from img_search.settings import SearchSettings

DIM = 96
N = 6000
K = 10


def _clustered(n: int, rng: np.random.Generator, n_clusters: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(n, DIM) float32 rows around ``n_clusters`` unit centres (cosine to the centre ~0.75), of lengths 0.5-2 (the
    catalog's vectors need not be unit), and the centres."""
    centres = rng.standard_normal((n_clusters, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = centres[rng.integers(0, n_clusters, n)] + rng.standard_normal((n, DIM)) * 0.9 / np.sqrt(DIM)
    rows *= rng.uniform(0.5, 2.0, (n, 1))
    return rows.astype(np.float32), centres


def _queries(centres: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    q = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, DIM)) * 0.5 / np.sqrt(DIM)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def no_numkong(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """numkong not importable (a default install without the ``ann`` extra)."""
    compact_mod.kernel.cache_clear()
    monkeypatch.setitem(sys.modules, "numkong", None)  # `import numkong` raises ImportError
    yield
    compact_mod.kernel.cache_clear()


def _needs_numkong() -> None:
    if compact_mod.kernel() is None:
        pytest.skip("numkong not installed")


@pytest.fixture
def small_min_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 pass from 64 rows on (512 by default), so that small filters of these small collections take it."""
    monkeypatch.setattr(compact_mod, "MIN_ROWS", 64)


@pytest.fixture(params=[True, False], ids=["faiss-simd", "numpy"])
def float_kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 pass with faiss's SIMD inner products, or with numpy's einsum."""
    if not request.param:
        monkeypatch.setattr(store_mod, "_faiss", lambda: None)
    elif store_mod._faiss() is None:
        pytest.skip("faiss not installed")


def test_quantize_rows_and_approximate_cosines() -> None:
    rng = np.random.default_rng(0)
    rows, centres = _clustered(500, rng)
    rows[7] = 0.0
    codes, scales = quantize(rows)
    assert codes.dtype == np.int8 and codes.shape == rows.shape and scales.shape == (500,)
    assert np.abs(codes.astype(np.int16)).max() == 127 and codes.min() >= -127
    assert (codes[7] == 0).all() and scales[7] == 0
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(codes * scales[:, None], unit, atol=float(scales.max()) / 2 + 1e-7)
    _needs_numkong()
    q = _queries(centres, 1, rng)[0]
    approx = CompactVectors(codes, scales).scores(q, np.arange(500))
    assert approx.dtype == np.float32 and approx[7] == 0
    # each component of row and query is off by at most half a step: the cosine by a few hundredths at most
    np.testing.assert_allclose(approx, unit @ q, atol=0.03)
    assert not np.array_equal(approx, (unit @ q).astype(np.float32))  # it is an approximation, not the cosine


def test_missing_or_mismatched_copy_is_not_loaded(tmp_path: Path) -> None:
    rows = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
    assert CompactVectors.load(tmp_path, 20, DIM) is None and not compact_mod.exists(tmp_path)
    compact_mod.save(tmp_path, rows)
    assert compact_mod.exists(tmp_path)
    loaded = CompactVectors.load(tmp_path, 20, DIM)
    assert loaded is not None and isinstance(loaded.codes, np.memmap)
    assert CompactVectors.load(tmp_path, 21, DIM) is None and CompactVectors.load(tmp_path, 20, DIM + 1) is None
    (tmp_path / compact_mod.SCALES_FILE).write_bytes(b"not an npy file")  # damaged: not used, no error
    assert CompactVectors.load(tmp_path, 20, DIM) is None


def _lookup_pair(rng: np.random.Generator) -> tuple[VectorLookup, VectorLookup, np.ndarray, np.ndarray]:
    """The same live vectors (saved rows, some removed, some added after) with and without the int8 copy; allowed
    ids; centres."""
    ids = np.arange(0, 2 * N, 2, dtype=np.int64)
    matrix, centres = _clustered(N, rng)
    extra_rows, _ = _clustered(30, rng)
    extra = {int(i): v for i, v in zip(range(1, 61, 2), extra_rows, strict=True)}
    removed = ids[rng.choice(N, 40, replace=False)]
    codes, scales = quantize(matrix)
    with_copy = VectorLookup(ids, matrix, extra, removed, CompactVectors(codes, scales))
    without = VectorLookup(ids, matrix, extra, removed)
    return with_copy, without, centres, removed


@pytest.fixture()
def int8_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row count of every int8 pass (``CompactVectors.scores``) made during the test, in order."""
    calls: list[int] = []
    original = CompactVectors.scores

    def counting(self: CompactVectors, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        calls.append(rows.size)
        return original(self, q, rows)

    monkeypatch.setattr(CompactVectors, "scores", counting)
    return calls


@pytest.mark.parametrize("share", [0.02, 0.05, 0.3])
def test_int8_pass_gives_the_float32_ids_and_cosines(
    share: float, float_kernel: None, small_min_rows: None, int8_calls: list[int]
) -> None:
    _needs_numkong()
    rng = np.random.default_rng(int(share * 100))
    with_copy, without, centres, removed = _lookup_pair(rng)
    all_ids = np.union1d(with_copy.ids, list(with_copy.extra))
    queries = _queries(centres, 40, rng)
    for i, q in enumerate(queries):
        allowed = np.sort(rng.choice(all_ids, size=int(share * all_ids.size), replace=False))
        allowed = np.union1d(allowed, removed[:3])
        k = K if i % 2 else 25
        got_ids, got_scores = with_copy.top_k(q[None], allowed, k)
        want_ids, want_scores = without.top_k(q[None], allowed, k)
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_array_equal(got_scores, want_scores)  # bit for bit: the same float32 kernel on the rows
        assert not np.isin(got_ids, removed).any()
    assert len(int8_calls) == len(queries) and min(int8_calls) > candidate_count(25)  # int8 pass every query


def test_int8_pass_skipped_below_min_rows(int8_calls: list[int]) -> None:
    _needs_numkong()
    rng = np.random.default_rng(6)
    with_copy, without, centres, _ = _lookup_pair(rng)
    q = _queries(centres, 1, rng)
    for m in (compact_mod.MIN_ROWS - 1, compact_mod.MIN_ROWS + 50):
        allowed = np.sort(rng.choice(with_copy.ids, size=m, replace=False))
        np.testing.assert_array_equal(with_copy.top_k(q, allowed, K)[1], without.top_k(q, allowed, K)[1])
    assert int8_calls and min(int8_calls) >= compact_mod.MIN_ROWS and len(int8_calls) == 1


def test_without_numkong_the_float32_path_answers(no_numkong: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert compact_mod.kernel() is None
    rng = np.random.default_rng(5)
    with_copy, without, centres, _ = _lookup_pair(rng)

    def fail(*args: object) -> np.ndarray:
        raise AssertionError("the int8 pass ran without numkong")

    monkeypatch.setattr(CompactVectors, "scores", fail)
    allowed = np.sort(rng.choice(with_copy.ids, size=600, replace=False))
    for q in _queries(centres, 5, rng):
        got = with_copy.top_k(q[None], allowed, K)
        want = without.top_k(q[None], allowed, K)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def _catalog(tmp_path: Path, rng: np.random.Generator) -> tuple[np.ndarray, VectorStore]:
    """A catalog of N clustered images, synced (exact backend); returns the centres and the store."""
    rows, centres = _clustered(N, rng)
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=0.0)
    recs = [ImageRecord(f"/p/{i}.jpg", 1, 1, i.to_bytes(16, "big"), 1, 1) for i in range(N)]
    cat.record(recs, model_id=mid, vectors=rows)
    model = cat.get_model("m")
    assert model is not None
    store = VectorStore(tmp_path, cat, model, SearchSettings(ann_backend="exact", ann_threshold=0))
    store.sync()
    return centres, store


def _compare(collection: Collection, queries: np.ndarray, shares: tuple[float, ...], rng: np.random.Generator) -> None:
    """The collection's exact filtered hits with the int8 pass on and off: the same images and cosines."""
    lookup = collection._view.vectors
    assert lookup is not None
    collection.filter_strategy = "exact"
    live = collection.allowed_ids(None)
    all_ids = np.arange(1, N + 100, dtype=np.int64) if live is None else live
    for share in shares:
        allowed = np.sort(rng.choice(all_ids, size=int(share * all_ids.size), replace=False))
        for q in queries:
            lookup.use_compact = True
            got = collection.search(q[None], limit=K, allowed=allowed)[0]
            lookup.use_compact = False
            want = collection.search(q[None], limit=K, allowed=allowed)[0]
            lookup.use_compact = True
            assert [(r.id, c) for r, c in got] == [(r.id, c) for r, c in want]
            assert len(got) == K


def test_generation_keeps_the_copy_and_a_reader_with_later_changes_agrees(tmp_path: Path, small_min_rows: None) -> None:
    _needs_numkong()
    rng = np.random.default_rng(7)
    centres, store = _catalog(tmp_path, rng)
    gen = store.current()
    assert gen is not None and compact_mod.exists(gen.path)
    assert np.load(gen.path / compact_mod.CODES_FILE, mmap_mode="r").shape == (N, DIM)
    # changes committed after the saved generation: 80 new images, 30 deleted, one re-embedded
    cat = store.catalog
    mid = store.model.id
    new_rows, _ = _clustered(80, rng)
    cat.record(
        [ImageRecord(f"/p/{i}.jpg", 1, 1, i.to_bytes(16, "big"), 1, 1) for i in range(N, N + 80)],
        model_id=mid,
        vectors=new_rows,
    )
    cat.mark_deleted([f"/p/{i}.jpg" for i in range(0, 3000, 100)])
    cat.record([ImageRecord("/p/5.jpg", 2, 2, b"\x99" * 16, 1, 1)], model_id=mid, vectors=new_rows[:1] * -1)
    collection = Collection.open(tmp_path, "m", SearchSettings(ann_backend="exact", ann_threshold=0))
    assert collection.generation == gen.name
    lookup = collection._view.vectors
    assert lookup is not None and lookup.compact is not None and lookup.extra and lookup.removed.size
    _compare(collection, _queries(centres, 15, rng), (0.03, 0.2), rng)
    collection.close()
    cat.close()


def test_generation_without_the_copy_falls_back_and_sync_adds_it(tmp_path: Path, small_min_rows: None) -> None:
    rng = np.random.default_rng(8)
    centres, store = _catalog(tmp_path, rng)
    old = store.current()
    assert old is not None
    (old.path / compact_mod.CODES_FILE).unlink()  # as saved before the int8 copy was kept
    (old.path / compact_mod.SCALES_FILE).unlink()
    settings = SearchSettings(ann_backend="exact", ann_threshold=0)
    collection = Collection.open(tmp_path, "m", settings)
    assert collection.generation == old.name
    lookup = collection._view.vectors
    assert lookup is not None and lookup.compact is None
    queries = _queries(centres, 5, rng)
    allowed = np.sort(rng.choice(np.arange(1, N + 1, dtype=np.int64), size=N // 10, replace=False))
    collection.filter_strategy = "exact"
    before = [[(r.id, c) for r, c in collection.search(q[None], limit=K, allowed=allowed)[0]] for q in queries]
    collection.close()
    # the writer copies the generation once, with the int8 copy added, though nothing changed
    store.sync()
    new = store.current()
    assert new is not None and new.name != old.name and compact_mod.exists(new.path)
    store.sync()
    assert store.current() == new  # and then leaves it alone
    if compact_mod.kernel() is None:
        store.catalog.close()
        return
    collection = Collection.open(tmp_path, "m", settings)
    assert collection.generation == new.name and collection._view.vectors.compact is not None  # type: ignore[union-attr]
    collection.filter_strategy = "exact"
    after = [[(r.id, c) for r, c in collection.search(q[None], limit=K, allowed=allowed)[0]] for q in queries]
    assert after == before
    collection.close()
    store.catalog.close()


def test_planner_counts_the_int8_pass() -> None:
    from img_search.search.collection import plan_filtered_search

    def plan(m: int, **kw: object) -> str:
        args = {"has_vectors": True, "backend": "qdrant_edge", "compact": True} | kw
        return plan_filtered_search(100_000, m, 10, 768, **args)  # type: ignore[arg-type]

    # without the int8 pass exact stops near 10 % (test_filtered_planner); with it, it goes further
    assert plan(12_000) == "exact" and plan(12_000, compact=False) == "overfetch"
    assert plan(50_026) == "overfetch"
    # the int8 copy does not help a view that reads the catalog
    assert plan(5_072, has_vectors=False) == "overfetch"
