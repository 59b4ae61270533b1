"""Dataset adapters and their registries: INQUIRE on a local table of its schema, image folders, Parquet image
tables, captions JSONL, the INQUIRE release and query files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_fixtures import FLICKR_ROWS, inquire_file_name, jpeg_bytes, write_captions, write_inquire_split
from helpers import make_jpeg

from img_search.data import (
    DATASETS,
    TEXT_DATASETS,
    CaptionRecord,
    ImageDataset,
    TextDataset,
    create_dataset,
    create_text_dataset,
)
from img_search.data.images import decode_image
from img_search.errors import DatasetError, ImageDecodeError, UnknownNameError


def test_registries_list_every_adapter_and_reject_unknown_names() -> None:
    assert DATASETS.names() == ["image_folder", "inquire", "parquet_images"]
    assert TEXT_DATASETS.names() == ["captions_jsonl"]
    with pytest.raises(UnknownNameError, match=r"unknown image dataset 'flickr'.*valid names: image_folder, inquire"):
        create_dataset({"type": "flickr", "name": "x"})
    with pytest.raises(UnknownNameError, match=r"takes no parameter.*rooot.*valid: name, root"):
        create_dataset({"type": "image_folder", "name": "x", "rooot": "/tmp"})
    with pytest.raises(UnknownNameError, match="needs a `type`"):
        create_text_dataset({"name": "x"})


def test_package_import_is_light() -> None:
    code = ("import sys, img_search.data as d; d.DATASETS.names(); "
            "print(sorted(m for m in ('torch', 'datasets', 'pyarrow', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture()
def inquire_files(tmp_path: Path) -> dict[str, str]:
    # seed 3 is judged for two queries (two rows, in both splits); seed 5's bytes are not an image
    validation = write_inquire_split(tmp_path / "inquire" / "validation-00000.parquet", [0, 1, 2, 3])
    test = write_inquire_split(tmp_path / "inquire" / "test-00000.parquet", [3, 4, 5, 3], query="a heron",
                               corrupt=frozenset({5}))
    return {"validation": str(validation), "test": str(test)}


def test_inquire_on_a_local_table_of_the_hub_schema(inquire_files: dict[str, str], tmp_path: Path) -> None:
    dataset = create_dataset({"type": "inquire", "data_files": inquire_files, "cache_dir": str(tmp_path / "cache")})
    assert isinstance(dataset, ImageDataset) and dataset.name == "inquire"
    with pytest.raises(DatasetError, match="not built yet"):
        dataset.length()
    dataset.build()
    dataset.build()  # idempotent
    # 8 rows, 6 distinct images: ids are inat24_file_name, first row wins, splits in the configured order
    assert [r.id for r in dataset.refs()] == [inquire_file_name(s) for s in (0, 1, 2, 3, 4, 5)]
    assert [r.index for r in dataset.refs()] == [0, 1, 2, 3, 5, 6]
    assert dataset.length() == len(dataset) == 6
    image = dataset.image(dataset.refs()[1].index)
    assert image.mode == "RGB" and image.size == (48, 40)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(decode_image(jpeg_bytes(1))))  # row 1's own bytes
    with pytest.raises(ImageDecodeError, match="not an image"):
        dataset.image(dataset.refs()[5].index)


def test_inquire_iteration_and_single_split(inquire_files: dict[str, str], tmp_path: Path) -> None:
    dataset = create_dataset({"type": "inquire", "name": "inq_val", "data_files": {"validation":
                              inquire_files["validation"]}, "splits": ["validation"],
                              "cache_dir": str(tmp_path / "cache")})
    dataset.build()
    examples = list(dataset)
    assert [e.id for e in examples] == [inquire_file_name(s) for s in range(4)]
    assert {e.image.size for e in examples} == {(48, 40)}


def test_inquire_hub_offline_fails_clearly(tmp_path: Path) -> None:
    dataset = create_dataset({"type": "inquire", "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(DatasetError, match=r"evendrow/INQUIRE-Rerank.*point `data_files` at its Parquet files"):
        dataset.build()


def test_parquet_table_without_hf_metadata_and_without_ids(tmp_path: Path) -> None:
    path = write_inquire_split(tmp_path / "plain.parquet", [7, 8, 9], hf_features=False)
    assert b"huggingface" not in (pq.read_schema(path).metadata or {})
    dataset = create_dataset({"type": "parquet_images", "name": "plain", "data_files": str(path),
                              "cache_dir": str(tmp_path / "cache")})
    dataset.build()
    assert [r.id for r in dataset.refs()] == ["train-0", "train-1", "train-2"]
    assert dataset.image(2).size == (48, 40)


def test_parquet_table_errors(tmp_path: Path) -> None:
    path = write_inquire_split(tmp_path / "t.parquet", [1])
    with pytest.raises(DatasetError, match="needs a source"):
        create_dataset({"type": "parquet_images", "name": "x"})
    missing = create_dataset({"type": "parquet_images", "name": "x", "data_files": str(path), "id_column": "nope",
                              "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(DatasetError, match=r"lacks column.*nope"):
        missing.build()


def test_image_folder_ids_are_relative_paths(photo_dir: Path) -> None:
    (photo_dir / ".hidden.jpg").write_bytes((photo_dir / "a" / "img01.jpg").read_bytes())
    make_jpeg(photo_dir / "c" / "deep" / "z.jpg", seed=40)
    dataset = create_dataset({"type": "image_folder", "name": "photos", "root": str(photo_dir)})
    dataset.build()
    ids = [r.id for r in dataset.refs()]
    assert ids[:2] == ["a/img01.jpg", "a/img03.jpg"] and "c/deep/z.jpg" in ids and len(ids) == 13
    assert ".hidden.jpg" not in ids
    assert dataset.image(0).size == (96, 64)
    with pytest.raises(DatasetError, match="does not exist"):
        create_dataset({"type": "image_folder", "name": "x", "root": str(photo_dir / "missing")}).build()


def test_captions_jsonl_records_have_stable_ids(tmp_path: Path) -> None:
    path = write_captions(tmp_path / "captions.jsonl", FLICKR_ROWS)
    dataset = create_text_dataset({"type": "captions_jsonl", "name": "flickr30k", "path": str(path)})
    assert isinstance(dataset, TextDataset)
    dataset.build()
    records = list(dataset)
    assert len(records) == dataset.length() == 6
    assert records[0] == CaptionRecord("1000092795.jpg#0", "1000092795.jpg", "two young guys with shaggy hair")
    assert records[2] == CaptionRecord("10002456.jpg#0", "10002456.jpg", "a red car in the city")
    assert [r.caption_id for r in records[3:]] == [f"1000268201.jpg#{i}" for i in range(3)]
    again = create_text_dataset({"type": "captions_jsonl", "name": "flickr30k", "path": str(path)})
    again.build()
    assert again.records() == records  # same file, same ids


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "line 2 is not valid JSON"),
    (json.dumps({"image": "a.jpg"}), "line 2 lacks field.*caption"),
    (json.dumps({"image": "a.jpg", "caption": [1, 2]}), "must be a string or a list of strings"),
    (json.dumps(["a"]), "line 2 is not a JSON object"),
])
def test_captions_jsonl_bad_lines(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(FLICKR_ROWS[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        create_text_dataset({"type": "captions_jsonl", "name": "x", "path": str(path)}).build()


def test_captions_of_one_image_on_two_lines_keep_unique_ids(tmp_path: Path) -> None:
    # the same image on two lines continues its numbering: ids stay unique
    path = write_captions(tmp_path / "c.jsonl", [{"image": "a", "caption": "x"}, {"image": "a", "caption": "y"}])
    dataset = create_text_dataset({"type": "captions_jsonl", "name": "x", "path": str(path)})
    dataset.build()
    assert [r.caption_id for r in dataset] == ["a#0", "a#1"]


def test_release_pairs_and_row_counts(tmp_path: Path) -> None:
    from img_search.data.inquire import read_release_shard, release_shards

    meta, emb = tmp_path / "metadata", tmp_path / "img_emb"
    meta.mkdir()
    emb.mkdir()
    for n, rows in ((0, 3), (1, 2), (10, 1)):
        pq.write_table(pa.table({"image_path": [f"train/x/{n}-{i}" for i in range(rows)]}),
                       meta / f"metadata_{n}.parquet")
        np.save(emb / f"img_emb_{n}.npy", np.full((rows, 4), n, dtype=np.float16))
    shards = release_shards(meta, emb)
    assert [(s.number, s.rows, s.dim) for s in shards] == [(0, 3, 4), (1, 2, 4), (10, 1, 4)]  # numeric order
    chunks = list(read_release_shard(shards[0], chunk_rows=2))
    assert [c[0] for c in chunks] == [["train/x/0-0", "train/x/0-1"], ["train/x/0-2"]]
    assert chunks[0][1].dtype == np.float16 and chunks[0][1].shape == (2, 4)

    np.save(emb / "img_emb_1.npy", np.zeros((5, 4), dtype=np.float16))
    with pytest.raises(DatasetError, match=r"shard 1: metadata_1.parquet has 2 rows but img_emb_1.npy has 5"):
        release_shards(meta, emb)
    (emb / "img_emb_1.npy").unlink()
    with pytest.raises(DatasetError, match=r"shard number 1 has a metadata file or an embedding file but not both"):
        release_shards(meta, emb)


def test_queries_and_annotations(tmp_path: Path) -> None:
    from img_search.data.inquire import read_queries, strip_image_extension

    (tmp_path / "inquire_queries_test.csv").write_text(
        ",query_id,query_text,supercategory,category,iconic_group\n"
        '0,5,"a heron, fishing",Behavior,Feeding,Birds\n1,7,a fern,Appearance,Color,Plants\n', encoding="utf-8")
    (tmp_path / "inquire_queries_val.csv").write_text(
        ",query_id,query_text,supercategory,category,iconic_group\n0,9,a fox,Context,Habitat,Mammals\n",
        encoding="utf-8")
    (tmp_path / "inquire_annotations.csv").write_text(
        "query_id,image_id,image_path\n5,11,train/a/x.jpg\n5,12,train/a/y.JPG\n5,11,train/a/x.jpg\n9,13,train/b/z\n",
        encoding="utf-8")
    queries = read_queries(tmp_path, ["test", "validation"])
    test, val = queries["test"], queries["validation"]
    assert test[0].query_id == 5 and test[0].query_text == "a heron, fishing" and test[0].iconic_group == "Birds"
    assert test[0].relevant == ["train/a/x", "train/a/y"] and test[1].relevant == []
    assert val[0].relevant == ["train/b/z"]
    assert read_queries(tmp_path, ["test"], limit=1)["test"] == test[:1]
    assert strip_image_extension("a/b.jpeg") == "a/b" and strip_image_extension("a/b.v2") == "a/b.v2"
    with pytest.raises(DatasetError, match="unknown INQUIRE query split 'train'"):
        read_queries(tmp_path, ["train"])
