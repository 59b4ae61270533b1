"""Mismatches: a collection searched with a model of another dimension, and a catalog written by a newer
img-search. Each is a clear one-line error (exit 1) and never a result: nothing is compared across dimensions and
nothing is read (or written) in a schema this code does not know.

Extends, end to end through the CLI, what the unit tests check one layer at a time: tests/search/test_collection.py
(query vectors of another shape), tests/catalog/test_catalog.py and tests/pipeline/test_writer.py (newer schema at
open), tests/index/test_conformance.py (dimension checks of each backend).
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import make_jpeg
from helpers import run_main as run

from img_search.catalog.schema import SCHEMA_VERSION


def one_line(code: int, out: str, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert out == "" and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


class TorchOnly:
    """An encoder without precisions (float32 torch): `index` exports no runtime for the throwaway checkpoints."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.info, self.device = inner, inner.info, inner.device

    def image_preprocessor(self) -> Any:
        return self.inner.image_preprocessor()

    def encode_batch(self, batch: Any) -> Any:
        return self.inner.encode_batch(batch)


def _build(path: Path, hidden: int) -> Path:
    from img_search.embedding.tiny import TinySpec, build_tiny_model

    shutil.rmtree(path, ignore_errors=True)
    return build_tiny_model(path, TinySpec(family="siglip", hidden_size=hidden, intermediate_size=2 * hidden))


@pytest.fixture()
def indexed(tmp_path: Path, photo_dir: Path) -> dict[str, Path]:
    """photo_dir indexed with a 32-dim checkpoint at ``model``."""
    from img_search.embedding import load_encoder
    from img_search.pipeline.runner import IndexOptions, index_folders

    model = _build(tmp_path / "model", 32)
    idx = tmp_path / "idx"
    index_folders([str(photo_dir)], idx, IndexOptions(model=str(model), workers=0),
                  encoder_factory=lambda: TorchOnly(load_encoder(str(model), device="cpu")))
    return {"model": model, "idx": idx, "photos": photo_dir}


def test_a_checkpoint_of_another_dimension_is_refused_never_compared(indexed: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from img_search.embedding import load_encoder
    from img_search.errors import DimensionMismatchError
    from img_search.search.collection import Collection
    from img_search.search.searcher import Searcher

    model, idx, photos = indexed["model"], indexed["idx"], indexed["photos"]
    code, out, _ = run(capsys, "search", "a dog", "--index-dir", str(idx), "--json")
    assert code == 0 and out.count('"path"') == 10  # the 32-dim checkpoint searches its collection
    _build(model, 48)  # the checkpoint at the same path replaced by one of another dimension
    outside = make_jpeg(tmp_path / "new.jpg", seed=77)

    for args in (("search", "a dog"), ("similar", str(outside))):
        code, out, err = run(capsys, *args, "--index-dir", str(idx), "--model", str(model))
        line = one_line(code, out, err)
        assert code == 1 and "48" in line and "32" in line, line
    # indexing new files with it is refused too (it would mix dimensions): --recompute is the way
    make_jpeg(photos / "c" / "extra.jpg", seed=78)
    code, out, err = run(capsys, "index", str(photos), "--index-dir", str(idx), "--model", str(model), "-q")
    line = one_line(code, out, err)
    assert code == 1 and "--recompute" in line and "32" in line and "48" in line
    # in-process: a Searcher given the other encoder refuses before any query
    with pytest.raises(DimensionMismatchError, match="48-dim"):
        Searcher(Collection.open(idx, str(model)), load_encoder(str(model), device="cpu")).search_text("a dog")


def _newer(idx: Path) -> str:
    db = sqlite3.connect(idx / "catalog.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    return hashlib.sha256((idx / "catalog.sqlite3").read_bytes()).hexdigest()


def test_a_catalog_of_a_newer_schema_is_refused_by_every_command(indexed: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, idx, photos = indexed["model"], indexed["idx"], indexed["photos"]
    digest = _newer(idx)
    commands = [
        ("search", "a dog", "--index-dir", str(idx)),
        ("search", "a dog", "--index-dir", str(idx), "--model", str(model)),
        ("similar", str(photos / "a" / "img01.jpg"), "--index-dir", str(idx)),
        ("info", "--index-dir", str(idx)),
        ("export", "--index-dir", str(idx), "-o", str(tmp_path / "out.parquet")),
        ("index", str(photos), "--index-dir", str(idx), "--model", str(model), "-q"),
    ]
    for args in commands:
        code, out, err = run(capsys, *args)
        line = one_line(code, out, err)
        assert code == 1 and f"schema version {SCHEMA_VERSION + 1}, newer than this img-search" in line, (args, line)
    assert hashlib.sha256((idx / "catalog.sqlite3").read_bytes()).hexdigest() == digest  # nothing written
    assert not (tmp_path / "out.parquet").exists()


def test_an_open_collection_meets_a_newer_schema_on_refresh(indexed: dict[str, Path]) -> None:
    """A long-lived reader (the service) whose catalog is upgraded under it by a newer img-search: the next refresh
    must refuse (CatalogVersionError) instead of reading tables whose meaning may have changed."""
    import numpy as np

    from img_search.errors import CatalogVersionError
    from img_search.search.collection import Collection

    model, idx = indexed["model"], indexed["idx"]
    collection = Collection.open(idx, str(model))
    query = np.ones((1, 32), np.float32)
    before = [row.id for row, _ in collection.search(query, limit=5)[0]]
    _newer(idx)
    with pytest.raises(CatalogVersionError, match="newer than this img-search"):
        collection.refresh()
    assert [row.id for row, _ in collection.search(query, limit=5)[0]] == before  # the view it had, unchanged
    collection.close()
