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
from img_search.errors import CatalogError, DimensionMismatchError


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
