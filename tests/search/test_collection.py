"""Collection search: ordering, thresholds, CLIP without probability, and reading while an index run writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from img_search.catalog import Catalog, ImageRecord
from img_search.errors import CatalogError, DimensionMismatchError, EmptyCollectionError
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.calibration import Calibration
from img_search.search.collection import Collection, Searcher, resolve_model


def _catalog(tmp_path: Path, vectors: np.ndarray, bias: float | None = -1.0) -> Catalog:
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip" if bias is not None else "clip", dim=vectors.shape[1],
                           logit_scale=np.log(10.0), logit_bias=bias)
    recs = [ImageRecord(f"/p/{i}.jpg", 1, 1, bytes([i]) * 16, 4, 3) for i in range(len(vectors))]
    cat.record(recs, model_id=mid, vectors=vectors.astype(np.float32))
    return cat


def test_hits_are_ranked_with_probability(tmp_path: Path) -> None:
    vecs = np.eye(4, dtype=np.float32)
    cat = _catalog(tmp_path, vecs)
    col = Collection(cat, resolve_model(cat, None))
    q = np.array([[0.9, 0.1, 0.0, 0.0]], np.float32)
    q /= np.linalg.norm(q)
    hits = col.search_vectors(q, limit=3)[0]
    assert [h.path for h in hits] == ["/p/0.jpg", "/p/1.jpg", "/p/2.jpg"]
    expected = Calibration(np.log(10.0), -1.0).probability(np.array([h.cosine for h in hits]))
    np.testing.assert_allclose([h.probability for h in hits], expected)
    only = col.search_vectors(q, limit=3, threshold=float(expected[0]) - 1e-9)[0]
    assert [h.path for h in only] == ["/p/0.jpg"]


def test_clip_threshold_applies_to_cosine(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, np.eye(3, dtype=np.float32), bias=None)
    col = Collection(cat, resolve_model(cat, "m"))
    hits = col.search_vectors(np.array([[1.0, 0.0, 0.0]], np.float32), limit=3, threshold=0.5)[0]
    assert [(h.path, h.probability) for h in hits] == [("/p/0.jpg", None)]


def test_errors(tmp_path: Path) -> None:
    cat = _catalog(tmp_path, np.eye(3, dtype=np.float32))
    with pytest.raises(CatalogError, match="indexed models: m"):
        resolve_model(cat, "other-model")
    col = Collection(cat, resolve_model(cat, "m"))
    with pytest.raises(DimensionMismatchError):
        col.search_vectors(np.ones((1, 5), np.float32))
    empty = Catalog.in_dir(tmp_path / "empty")
    empty.ensure_model("e", family="siglip", dim=3, logit_scale=1.0, logit_bias=0.0)
    with pytest.raises(EmptyCollectionError):
        Collection(empty, resolve_model(empty, "e")).search_vectors(np.ones((1, 3), np.float32))


def test_search_works_while_index_writes(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                         siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    index_folders([str(photo_dir)], idx, IndexOptions(model=str(tiny_siglip), workers=0),
                  encoder_factory=lambda: siglip_encoder)
    writer = Catalog.in_dir(idx)
    writer.db.execute("BEGIN IMMEDIATE")  # an index run in the middle of a batch
    writer.db.execute("UPDATE images SET updated_at = 0")
    try:
        reader = Catalog.in_dir(idx, readonly=True)
        searcher = Searcher(Collection(reader, resolve_model(reader, None)), siglip_encoder)
        assert len(searcher.search_text("a red car", limit=5)) == 5
        similar = searcher.search_image(str(photo_dir / "a" / "img01.jpg"), limit=3)
        assert len(similar) == 3 and all(h.probability is None for h in similar)
        assert str(photo_dir / "a" / "img01.jpg") not in [h.path for h in similar]
    finally:
        writer.db.execute("ROLLBACK")
    with pytest.raises(ValueError, match="empty"):
        searcher.search_text("   ")
