"""Embedding tables from local Parquet shards, saved datasets and (offline) the Hub."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from img_search.data.embeddings import (
    EmbeddingDatasetError,
    EmbeddingDatasetSpec,
    load_embeddings,
    load_gallery,
    load_queries,
    memmap_file,
    resolve_data_files,
    split_candidates,
)

DIM = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _write_gallery(path: Path, ids: list[str], vectors: np.ndarray, *, model: str = "m", fp16: bool = True) -> None:
    value_type = pa.float16() if fp16 else pa.float32()
    cast = vectors.astype(np.float16 if fp16 else np.float32)
    table = pa.table(
        {
            "id": ids,
            "model_name": [model] * len(ids),
            "dataset_name": ["d"] * len(ids),
            "embedding": pa.array(list(cast), type=pa.list_(value_type)),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_queries(path: Path, n: int, relevant: list[list[str]], *, seed: int = 1) -> np.ndarray:
    vectors = _vectors(n, seed)
    table = pa.table(
        {
            "query_id": list(range(n)),
            "query_text": [f"query {i}" for i in range(n)],
            "supercategory": ["Plantae"] * n,
            "category": ["Flowers"] * n,
            "iconic_group": ["Plants"] * n,
            "embedding": pa.array(list(vectors), type=pa.list_(pa.float32(), DIM)),  # fixed-size list
            "image_id": relevant,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return vectors


@pytest.fixture()
def gallery_dir(tmp_path: Path) -> tuple[Path, np.ndarray]:
    vectors = _vectors(25)
    ids = [f"img{i:03d}" for i in range(25)]
    _write_gallery(tmp_path / "gallery" / "part-0.parquet", ids[:10], vectors[:10])
    _write_gallery(tmp_path / "gallery" / "part-1.parquet", ids[10:], vectors[10:])
    return tmp_path / "gallery", vectors


def test_parquet_shards_fp16_in_batches(gallery_dir: tuple[Path, np.ndarray]) -> None:
    folder, vectors = gallery_dir
    table = load_gallery(EmbeddingDatasetSpec(data_files=str(folder / "*.parquet"), read_batch_size=4))
    assert table.ids == [f"img{i:03d}" for i in range(25)]
    assert table.vectors.dtype == np.float32
    assert table.vectors.shape == (25, DIM)
    np.testing.assert_allclose(table.vectors, vectors.astype(np.float16).astype(np.float32))
    assert table.model_name == "m"
    assert table.relevant is None
    # a directory stands for every Parquet file below it; path="parquet" is the datasets builder name
    again = load_gallery(EmbeddingDatasetSpec(path="parquet", data_files=str(folder)))
    assert again.ids == table.ids


def test_the_files_read_are_counted_in_words(gallery_dir: tuple[Path, np.ndarray],
                                             caplog: pytest.LogCaptureFixture) -> None:
    folder, _ = gallery_dir
    with caplog.at_level(logging.INFO, logger="img_search.data.embeddings"):
        load_gallery(EmbeddingDatasetSpec(data_files=str(folder / "part-0.parquet")))
        load_gallery(EmbeddingDatasetSpec(data_files=str(folder / "*.parquet")))
    reading = [r.getMessage().split(" for ")[0] for r in caplog.records if r.getMessage().startswith("reading ")]
    assert reading == ["reading 1 Parquet file", "reading 2 Parquet files"]


def test_memmap_extraction(gallery_dir: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder, vectors = gallery_dir
    spec = EmbeddingDatasetSpec(
        data_files=str(folder / "*.parquet"), memmap_path=str(tmp_path / "mm"), read_batch_size=3
    )
    table = load_gallery(spec)
    assert isinstance(table.vectors, np.memmap)
    target = memmap_file(spec)
    assert target.parent == tmp_path / "mm" and target.suffix == ".npy"
    on_disk = np.load(target, mmap_mode="r")
    np.testing.assert_array_equal(on_disk, table.vectors)
    np.testing.assert_allclose(on_disk, vectors.astype(np.float16).astype(np.float32))
    # a .npy path is used as is
    exact_file = tmp_path / "vectors.npy"
    load_gallery(EmbeddingDatasetSpec(data_files=str(folder / "*.parquet"), memmap_path=str(exact_file)))
    assert np.load(exact_file).shape == (25, DIM)


def test_queries_with_relevance_and_texts(tmp_path: Path) -> None:
    vectors = _write_queries(tmp_path / "q" / "test" / "part-0.parquet", 3, [["a.jpg", "b"], [], ["c"]])
    spec = EmbeddingDatasetSpec(
        data_files=str(tmp_path / "q" / "{split}" / "*.parquet"),
        split="test",
        id_column="query_id",
        relevance_column="image_id",
        text_column="query_text",
    )
    table = load_queries(spec)
    assert table.ids == ["0", "1", "2"]
    assert table.relevant == [["a.jpg", "b"], [], ["c"]]
    assert table.texts == ["query 0", "query 1", "query 2"]
    assert table.model_name is None  # no model column and none declared
    np.testing.assert_allclose(table.vectors, vectors)
    with pytest.raises(EmbeddingDatasetError, match="relevance_column"):
        load_queries(EmbeddingDatasetSpec(data_files=spec.data_files, id_column="query_id"))


@pytest.mark.parametrize(("folder", "asked"), [("val", "validation"), ("validation", "val")])
def test_val_and_validation_are_one_split(tmp_path: Path, folder: str, asked: str) -> None:
    _write_queries(tmp_path / folder / "part-0.parquet", 2, [["a"], ["b"]])
    common: dict[str, Any] = {"id_column": "query_id", "relevance_column": "image_id", "split": asked}
    placeholder = EmbeddingDatasetSpec(data_files=str(tmp_path / "{split}" / "*.parquet"), **common)
    assert load_queries(placeholder).ids == ["0", "1"]
    mapping = EmbeddingDatasetSpec(data_files={folder: str(tmp_path / folder / "*.parquet")}, **common)
    assert load_queries(mapping).ids == ["0", "1"]
    assert split_candidates(asked)[:2] == [asked, folder]


def test_saved_dataset_dict_split_alias(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["x", "y"], "embedding": _vectors(2).tolist()})
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
    table = load_embeddings(EmbeddingDatasetSpec(load_from_disk=str(tmp_path / "saved"), split="val"))
    assert table.ids == ["x", "y"]
    assert table.vectors.shape == (2, DIM)
    with pytest.raises(EmbeddingDatasetError, match="split 'test' not in the saved dataset"):
        load_embeddings(EmbeddingDatasetSpec(load_from_disk=str(tmp_path / "saved"), split="test"))


def test_hub_dataset_fails_clearly_offline() -> None:
    # tests/conftest.py sets HF_HUB_OFFLINE=1: the loader must fail at once, naming the local alternatives
    spec = EmbeddingDatasetSpec(path="pufanyi/inquire-siglip-so400m-14-384", name="queries", split="test")
    with pytest.raises(EmbeddingDatasetError, match="inquire_local") as info:
        load_embeddings(spec)
    assert "pufanyi/inquire-siglip-so400m-14-384" in str(info.value)


def test_model_filter_and_mixed_models(tmp_path: Path) -> None:
    _write_gallery(tmp_path / "g" / "a.parquet", ["a0", "a1"], _vectors(2), model="siglip")
    _write_gallery(tmp_path / "g" / "b.parquet", ["b0"], _vectors(1), model="clip")
    glob = str(tmp_path / "g" / "*.parquet")
    with pytest.raises(EmbeddingDatasetError, match="mixes vectors of several models"):
        load_gallery(EmbeddingDatasetSpec(data_files=glob))
    picked = load_gallery(EmbeddingDatasetSpec(data_files=glob, model_name="clip"))
    assert picked.ids == ["b0"] and picked.model_name == "clip"
    with pytest.raises(EmbeddingDatasetError, match=r"no vectors of model 'jina'.*clip, siglip"):
        load_gallery(EmbeddingDatasetSpec(data_files=glob, model_name="jina"))


def test_missing_files_columns_and_splits(gallery_dir: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    folder, _ = gallery_dir
    with pytest.raises(EmbeddingDatasetError, match="no Parquet files match"):
        load_gallery(EmbeddingDatasetSpec(data_files=str(tmp_path / "nothing" / "*.parquet")))
    with pytest.raises(EmbeddingDatasetError, match=r"lacks column vec .*it has: id, model_name"):
        load_gallery(EmbeddingDatasetSpec(data_files=str(folder / "*.parquet"), embedding_column="vec"))
    with pytest.raises(EmbeddingDatasetError, match="not among the data_files splits"):
        resolve_data_files({"test": str(folder / "*.parquet")}, "train")


def test_null_empty_and_ragged_rows_are_refused(tmp_path: Path) -> None:
    good = [[0.1] * DIM, [0.2] * DIM]
    cases = {
        "null_vector": ({"id": ["a", "b"], "embedding": [good[0], None]}, r": 1 row has no embedding \(id b\)"),
        "null_vectors": ({"id": ["a", "b"], "embedding": [None, None]}, r": 2 rows have no embedding \(ids a, b\)"),
        "ragged": ({"id": ["a", "b"], "embedding": [good[0], [0.1] * (DIM - 1)]}, "ragged vectors"),
        "null_id": ({"id": ["a", None], "embedding": good}, ": 1 row near row 0 has no id in `id`"),
        "empty_id": ({"id": ["a", ""], "embedding": good}, "empty id"),
        "nan": ({"id": ["a", "b"], "embedding": [good[0], [float("nan")] * DIM]}, "non-finite values in .* b"),
    }
    for name, (columns, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table(columns), path)
        with pytest.raises(EmbeddingDatasetError, match=message):
            load_gallery(EmbeddingDatasetSpec(data_files=str(path)))


def test_spec_validation() -> None:
    with pytest.raises(EmbeddingDatasetError, match="needs a source"):
        EmbeddingDatasetSpec()
    with pytest.raises(EmbeddingDatasetError, match="load_from_disk"):
        EmbeddingDatasetSpec(load_from_disk="x", path="org/repo")
    with pytest.raises(EmbeddingDatasetError, match="set `data_files`"):
        EmbeddingDatasetSpec(path="parquet")
    with pytest.raises(EmbeddingDatasetError, match="unknown embedding dataset key"):
        EmbeddingDatasetSpec.from_config({"data_files": "x", "dataset_name": "y"})
    spec = EmbeddingDatasetSpec.from_config({"data_files": ("a", "b"), "split": "val"})
    assert spec.data_files == ["a", "b"]
    assert spec.is_local_parquet
