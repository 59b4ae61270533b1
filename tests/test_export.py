"""`img-search export --format parquet`: a folder index's vectors in the harness's gallery layout, evaluated."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import cli

from img_search.catalog import Catalog
from img_search.errors import CatalogError
from img_search.export import export_catalog
from img_search.pipeline.runner import IndexOptions, index_folders


@pytest.fixture()
def indexed(photo_dir: Path, tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    from img_search.embedding import load_encoder

    idx = tmp_path / "my-photos-index"
    for family in ("siglip", "clip"):
        model = str(tiny_models[family])
        index_folders([str(photo_dir)], idx, IndexOptions(model=model, batch_size=4, workers=0),
                      encoder_factory=partial(load_encoder, model, device="cpu"))
    return idx


def test_export_layout_equals_the_catalog(indexed: Path, photo_dir: Path, tmp_path: Path,
                                          tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "export" / "photos.parquet"
    out.parent.mkdir()  # export refuses a missing folder (tests/test_optional_and_output_paths.py)
    summary = export_catalog(indexed, out)
    assert summary.rows == 24 and summary.dataset_name == "my-photos-index"
    assert [(m["name"], m["dim"], m["rows"]) for m in summary.models] == [
        (str(tiny_models["siglip"]), 32, 12), (str(tiny_models["clip"]), 32, 12)]
    table = pq.read_table(out)
    assert table.column_names == ["id", "model_name", "dataset_name", "embedding"]
    with Catalog.in_dir(indexed, readonly=True) as catalog:
        for row in catalog.models():
            image_ids, vectors = catalog.load_vectors(row.id, 32)
            paths = [catalog.images_by_id([i])[i].path for i in image_ids.tolist()]
            mask = [m == row.name for m in table.column("model_name").to_pylist()]
            ids = [i for i, keep in zip(table.column("id").to_pylist(), mask, strict=True) if keep]
            stored = [v for v, keep in zip(table.column("embedding").to_pylist(), mask, strict=True) if keep]
            assert ids == paths and all(p.startswith(str(photo_dir)) for p in ids)
            np.testing.assert_array_equal(np.asarray(stored, dtype=np.float32), vectors)

    only = export_catalog(indexed, tmp_path / "clip.parquet", model=str(tiny_models["clip"]), dataset_name="mine")
    assert only.rows == 12
    assert set(pq.read_table(tmp_path / "clip.parquet").column("dataset_name").to_pylist()) == {"mine"}


def test_the_harness_evaluates_an_exported_collection(indexed: Path, tmp_path: Path, tiny_siglip: Path) -> None:
    """Image -> image over the user's own photos: each query is an image's own vector, relevant to that image."""
    from img_search.pipeline.parquet_writer import QUERIES, make_table
    from img_search.search.evaluate import compose_config, evaluate_from_config

    out = tmp_path / "gallery.parquet"
    export_catalog(indexed, out, model=str(tiny_siglip), dataset_name="mine")
    gallery = pq.read_table(out)
    paths = gallery.column("id").to_pylist()[:4]
    vectors = np.asarray(gallery.column("embedding").to_pylist()[:4], dtype=np.float32)
    n = len(paths)
    columns: dict[str, list[Any]] = {
        "query_id": list(range(n)), "query_text": [f"like {p}" for p in paths], "supercategory": ["-"] * n,
        "category": ["-"] * n, "iconic_group": ["-"] * n, "model_name": [str(tiny_siglip)] * n,
        "dataset_name": ["mine"] * n, "image_id": [[p] for p in paths],
    }
    (tmp_path / "queries" / "test").mkdir(parents=True)
    pq.write_table(make_table(QUERIES, columns, vectors, "float32"), tmp_path / "queries" / "test" / "q.parquet")
    cfg = compose_config(["image_dataset=inquire_local", f"image_dataset.data_files='{out}'",
                          "query_dataset=inquire_local",
                          f"query_dataset.data_files='{tmp_path}/queries/{{split}}/*.parquet'",
                          "evaluation=exact", "+evaluation.extra_methods.flat={backend: faiss, method: flat}"])
    report = evaluate_from_config(cfg)
    assert report.n_gallery == 12 and report.n_queries == 4 and report.model_name == str(tiny_siglip)
    assert [(r.backend, r.status) for r in report.rows] == [("exact", "ok"), ("faiss", "ok")]
    for row in report.rows:
        assert row.quality is not None
        assert row.quality.mrr == pytest.approx(1.0) and row.quality.recall[1] == pytest.approx(1.0)


def test_export_command(indexed: Path, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "cli.parquet"
    done = cli("export", "--index-dir", str(indexed), "--format", "parquet", "-o", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows"] == 24 and summary["output"] == str(out)
    assert pq.ParquetFile(out).metadata.num_rows == 24

    human = cli("export", "--index-dir", str(indexed), "-o", str(tmp_path / "h.parquet"), "-m",
                str(tiny_models["clip"]))
    assert human.returncode == 0 and "wrote 12 vectors to" in human.stdout

    bad = cli("export", "--index-dir", str(indexed), "--format", "csv", "-o", str(tmp_path / "x.csv"))
    assert bad.returncode == 2 and "unknown export format 'csv'; valid names: parquet" in bad.stderr
    missing = cli("export", "--index-dir", str(tmp_path / "none"), "-o", str(tmp_path / "y.parquet"))
    assert missing.returncode == 1 and "no catalog at" in missing.stderr
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.parquet").exists()


def test_export_of_an_empty_catalog_writes_nothing(tmp_path: Path) -> None:
    Catalog.in_dir(tmp_path / "empty").close()
    with pytest.raises(CatalogError, match="holds no model"):
        export_catalog(tmp_path / "empty", tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
