"""Collection and Searcher: ordering, calibration, thresholds, limits served by what exists, threads, refresh, and
reading while an index run writes."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from img_search.catalog import Catalog, ImageRecord
from img_search.errors import (
    CatalogNotFoundError,
    DimensionMismatchError,
    EmptyCollectionError,
    InvalidInputError,
)
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.calibration import Calibration
from img_search.search.collection import Collection, resolve_model
from img_search.search.searcher import Searcher, open_searcher
from img_search.settings import SearchSettings, load_settings


class _NoEncoder:
    """Stands in for an encoder where a test searches by vector only (any use is a test failure)."""

    def __call__(self) -> None:
        raise AssertionError("the encoder must not be loaded")


def _catalog(tmp_path: Path, vectors: np.ndarray, bias: float | None = -1.0) -> Catalog:
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip" if bias is not None else "clip", dim=vectors.shape[1],
                           logit_scale=np.log(10.0), logit_bias=bias)
    recs = [ImageRecord(f"/p/{i}.jpg", 1, 1, bytes([i]) * 16, 4, 3) for i in range(len(vectors))]
    cat.record(recs, model_id=mid, vectors=vectors.astype(np.float32))
    return cat


def _searcher(tmp_path: Path, model: str | None = None) -> Searcher:
    return Searcher(Collection.open(tmp_path, model), _NoEncoder())  # type: ignore[arg-type]


def test_hits_are_ranked_with_probability(tmp_path: Path) -> None:
    _catalog(tmp_path, np.eye(4, dtype=np.float32))
    searcher = _searcher(tmp_path)
    q = np.array([[0.9, 0.1, 0.0, 0.0]], np.float32)
    q /= np.linalg.norm(q)
    hits = searcher.search_vectors(q, limit=3)[0]
    assert [h.path for h in hits] == ["/p/0.jpg", "/p/1.jpg", "/p/2.jpg"]
    expected = Calibration(np.log(10.0), -1.0).probability(np.array([h.cosine for h in hits]))
    np.testing.assert_allclose([h.probability for h in hits], expected)
    only = searcher.search_vectors(q, limit=3, threshold=float(expected[0]) - 1e-9)[0]
    assert [h.path for h in only] == ["/p/0.jpg"]


def test_clip_threshold_applies_to_cosine(tmp_path: Path) -> None:
    _catalog(tmp_path, np.eye(3, dtype=np.float32), bias=None)
    hits = _searcher(tmp_path, "m").search_vectors(np.array([[1.0, 0.0, 0.0]], np.float32), limit=3, threshold=0.5)
    assert [(h.path, h.probability) for h in hits[0]] == [("/p/0.jpg", None)]


def test_limit_beyond_the_collection_returns_what_exists(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _catalog(tmp_path, rng.standard_normal((100, 8)).astype(np.float32))
    searcher = _searcher(tmp_path)
    q = rng.standard_normal((1, 8)).astype(np.float32)
    assert len(searcher.search_vectors(q, limit=2**31 - 1)[0]) == 100
    assert len(searcher.search_vectors(q, limit=10**18)[0]) == 100
    for bad in (0, -5, 1.5, "3", True):
        with pytest.raises(InvalidInputError, match="limit"):
            searcher.search_vectors(q, limit=bad)  # type: ignore[arg-type]
    for bad_t in (float("nan"), float("inf"), "x"):
        with pytest.raises(InvalidInputError, match="threshold"):
            searcher.search_vectors(q, threshold=bad_t)  # type: ignore[arg-type]
    for out_of_range in (1.5, -0.1):
        with pytest.raises(InvalidInputError, match=r"within \[0, 1\]"):
            searcher.search_vectors(q, threshold=out_of_range)


def test_huge_limit_costs_what_the_collection_costs(tmp_path: Path) -> None:
    """Peak memory of a search follows the collection, not --limit (issue 7: at most 1.1x that of limit 10)."""
    import tracemalloc

    rng = np.random.default_rng(7)
    _catalog(tmp_path, rng.standard_normal((100, 64)).astype(np.float32))
    searcher = _searcher(tmp_path)
    q = rng.standard_normal((1, 64)).astype(np.float32)
    searcher.search_vectors(q, limit=100)  # warm caches (per-thread connection, lazy imports)

    def peak(limit: int) -> int:
        tracemalloc.start()
        hits = searcher.search_vectors(q, limit=limit)[0]
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(hits) == min(limit, 100)
        return size

    assert peak(2**31 - 1) <= 1.1 * max(peak(100), 1)
    assert peak(2**31 - 1) < 1_000_000  # bytes: nothing sized by the option


def test_errors(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, np.eye(3, dtype=np.float32))
    with pytest.raises(CatalogNotFoundError, match="indexed models: m"):
        resolve_model(cat, "other-model")
    with pytest.raises(DimensionMismatchError):
        _searcher(tmp_path, "m").search_vectors(np.ones((1, 5), np.float32))
    empty = Catalog.in_dir(tmp_path / "empty")
    empty.ensure_model("e", family="siglip", dim=3, logit_scale=1.0, logit_bias=0.0)
    with pytest.raises(EmptyCollectionError):
        _searcher(tmp_path / "empty", "e").search_vectors(np.ones((1, 3), np.float32))
    with pytest.raises(CatalogNotFoundError, match="run `img-search index FOLDER` first"):
        Collection.open(tmp_path / "nothing-here")


def test_deleted_images_never_appear_even_before_refresh(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cat = _catalog(tmp_path, rng.standard_normal((20, 8)).astype(np.float32))
    searcher = _searcher(tmp_path)
    q = rng.standard_normal((1, 8)).astype(np.float32)
    top = searcher.search_vectors(q, limit=3)[0][0]
    cat.mark_deleted([top.path])
    hits = searcher.search_vectors(q, limit=20)[0]
    assert top.path not in [h.path for h in hits] and len(hits) == 19


def test_refresh_picks_up_commits_and_threads_share_a_collection(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    cat = _catalog(tmp_path, rng.standard_normal((10, 8)).astype(np.float32))
    searcher = _searcher(tmp_path)
    assert len(searcher.collection) == 10 and searcher.refresh() is False
    mid = cat.get_model("m").id  # type: ignore[union-attr]
    new = rng.standard_normal((5, 8)).astype(np.float32)
    cat.record([ImageRecord(f"/q/{i}.jpg", 1, 1, bytes([100 + i]) * 16, 4, 3) for i in range(5)], model_id=mid,
               vectors=new)
    assert searcher.refresh() is True and len(searcher.collection) == 15
    errors: list[BaseException] = []
    found: list[str] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                hit = searcher.search_vectors(new[i % 5][None, :], limit=1)[0][0]
                found.append(hit.path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(found) == 160
    assert set(found) == {f"/q/{i}.jpg" for i in range(5)}


def test_search_works_while_index_writes(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                         siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    index_folders([str(photo_dir)], idx, IndexOptions(model=str(tiny_siglip), workers=0),
                  encoder_factory=lambda: siglip_encoder)
    writer = Catalog.in_dir(idx)
    writer.db.execute("BEGIN IMMEDIATE")  # an index run in the middle of a batch
    writer.db.execute("UPDATE images SET updated_at = 0")
    try:
        searcher = open_searcher(load_settings(idx), encoder=siglip_encoder)
        assert len(searcher.search_text("a red car", limit=5)) == 5
        similar = searcher.search_image(str(photo_dir / "a" / "img01.jpg"), limit=3)
        assert len(similar) == 3 and all(h.probability is None for h in similar)
        assert str(photo_dir / "a" / "img01.jpg") not in [h.path for h in similar]
    finally:
        writer.db.execute("ROLLBACK")
    with pytest.raises(InvalidInputError, match="empty"):
        searcher.search_text("   ")


def test_searcher_calibration_comes_from_the_loaded_model(tmp_path: Path, siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    dim = siglip_encoder.info.dim
    _catalog(tmp_path, np.eye(dim, dtype=np.float32)[:4])
    collection = Collection.open(tmp_path, None, SearchSettings())
    searcher = Searcher(collection, lambda: siglip_encoder)
    assert searcher.calibration == Calibration(np.log(10.0), -1.0)  # the catalog's copy, before any model load
    searcher.search_text("anything", limit=1)
    info = siglip_encoder.info
    assert searcher.calibration == Calibration(info.logit_scale, info.logit_bias)


def test_similar_through_a_symlinked_folder_leaves_the_file_out(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                                siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    index_folders([str(photo_dir)], idx, IndexOptions(model=str(tiny_siglip), workers=0),
                  encoder_factory=lambda: siglip_encoder)
    link = tmp_path / "link-to-photos"
    link.symlink_to(photo_dir, target_is_directory=True)
    searcher = open_searcher(load_settings(idx), encoder=siglip_encoder)
    hits = searcher.search_image(str(link / "a" / "img01.jpg"), limit=20)
    assert len(hits) == 11 and str(photo_dir / "a" / "img01.jpg") not in [h.path for h in hits]
