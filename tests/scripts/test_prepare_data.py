"""The INQUIRE preparation scripts end to end: a raw release (3 metadata / img_emb shard pairs) -> convert ->
embed the queries with a tiny model -> the evaluation harness (exact + FAISS Flat) on what they wrote."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import pattern

from img_search.errors import DimensionMismatchError, HubPushError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "prepare_data"
SHARD_SIZES = (10, 8, 6)
QUERY_TEXTS = {
    "test": ["a photo of a red dog on the beach", "a small bird in the snow", "a blue car in a city",
             "two horses in a field"],
    "val": ["a green tree near the river", "a cake on a table"],
}


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"prepare_data_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cosine_ranking(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(q @ g.T), axis=1, kind="stable")


class Release:
    """A raw INQUIRE release in clip-retrieval layout, its gallery vectors made by the tiny model."""

    def __init__(self, root: Path, encoder: Any) -> None:
        self.root = root
        n = sum(SHARD_SIZES)
        self.ids = [f"train/{i % 4:05d}_Animalia_Chordata/{i:04d}-5e1c-4f0b-9d33-{i:012d}" for i in range(n)]
        vectors = encoder.encode_images([pattern(100 + i, (40, 32)) for i in range(n)])
        self.gallery = vectors.astype(np.float16)  # the release stores fp16, and so do the converted shards
        (root / "metadata").mkdir(parents=True)
        (root / "img_emb").mkdir()
        start = 0
        for number, size in enumerate(SHARD_SIZES):
            rows = slice(start, start + size)
            pq.write_table(pa.table({"image_path": self.ids[rows], "url": ["x"] * size}),
                           root / "metadata" / f"metadata_{number}.parquet")
            np.save(root / "img_emb" / f"img_emb_{number}.npy", self.gallery[rows])
            start += size

    def args(self, output: Path, *extra: str) -> list[str]:
        return ["--metadata-dir", str(self.root / "metadata"), "--embeddings-dir", str(self.root / "img_emb"),
                "--output-dir", str(output), *extra]


@pytest.fixture()
def release(tmp_path: Path, siglip_encoder: Any) -> Release:
    return Release(tmp_path / "release", siglip_encoder)


def write_query_files(folder: Path, release: Release, encoder: Any) -> dict[str, list[list[str]]]:
    """Query CSVs and annotations whose relevant images are each query's 3 nearest gallery images; the first test
    query also lists the gallery's farthest image. Returns split -> relevant ids per query, in CSV order."""
    folder.mkdir(parents=True, exist_ok=True)
    relevant: dict[str, list[list[str]]] = {}
    annotations = ["query_id,image_id,image_path"]
    query_id = 0
    for split, texts in QUERY_TEXTS.items():
        ranking = cosine_ranking(encoder.encode_texts(texts), release.gallery.astype(np.float32))
        lines = [",query_id,query_text,supercategory,category,iconic_group"]
        relevant[split] = []
        for row, text in enumerate(texts):
            picks = list(ranking[row, :3]) + ([ranking[row, -1]] if (split, row) == ("test", 0) else [])
            relevant[split].append([release.ids[p] for p in picks])
            lines.append(f"{row},{query_id},{text},Appearance,Color,Birds")
            annotations += [f"{query_id},{5000 + p},{release.ids[p]}.jpg" for p in picks]  # with .jpg, as released
            query_id += 1
        (folder / f"inquire_queries_{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "inquire_annotations.csv").write_text("\n".join(annotations) + "\n", encoding="utf-8")
    return relevant


def expected_scores(queries: np.ndarray, release: Release, relevant: list[list[str]]) -> dict[str, float]:
    """INQUIRE's metrics computed here, independently of the harness: recall@5, AP@50, MRR."""
    ranking = cosine_ranking(queries, release.gallery.astype(np.float32))
    recalls, aps, rrs = [], [], []
    for row, rel in enumerate(relevant):
        ranked = [release.ids[p] for p in ranking[row, :50]]
        hits = [i for i, r in enumerate(ranked, 1) if r in rel]
        recalls.append(len(set(ranked[:5]) & set(rel)) / len(rel))
        aps.append(sum((k + 1) / rank for k, rank in enumerate(hits)) / min(len(rel), 50))
        rrs.append(1 / hits[0] if hits else 0.0)
    return {"recall@5": float(np.mean(recalls)), "ap": float(np.mean(aps)), "mrr": float(np.mean(rrs))}


def test_convert_embed_queries_evaluate(tmp_path: Path, release: Release, tiny_siglip: Path, siglip_encoder: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from img_search.search.evaluate import compose_config, evaluate_from_config

    convert, embed_queries = load_script("convert_inquire_to_hf"), load_script("embed_inquire_queries")
    gallery_dir, query_dir = tmp_path / "hf", tmp_path / "query_embeddings"
    model = str(tiny_siglip)
    assert convert.main(release.args(gallery_dir, "--model-name", model, "--dataset-name", "inquire_tiny")) == 0
    shards = sorted(gallery_dir.glob("*.parquet"))
    assert [s.name for s in shards] == [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
    assert [pq.ParquetFile(s).metadata.num_rows for s in shards] == list(SHARD_SIZES)
    table = pq.read_table(shards[0])
    assert table.column_names == ["id", "model_name", "dataset_name", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float16())
    assert pq.ParquetFile(shards[0]).metadata.row_group(0).column(3).compression == "ZSTD"
    assert table.column("id").to_pylist() == release.ids[:10]
    assert set(table.column("model_name").to_pylist()) == {model}
    assert "wrote 24 vectors of 32 dims in 3 shards" in capsys.readouterr().out

    queries_src = tmp_path / "inquire_csv"
    relevant = write_query_files(queries_src, release, siglip_encoder)
    code = embed_queries.main(["--output-dir", str(query_dir), "--dataset-name", "inquire_tiny", "--batch-size", "3",
                               "--chunk-size", "3", "--overwrite", "--splits", "test", "val", "--device", "cpu",
                               "--model-name", model, "--queries-dir", str(queries_src)])
    assert code == 0
    test_shards = sorted((query_dir / "test").glob("*.parquet"))
    assert [pq.ParquetFile(s).metadata.num_rows for s in test_shards] == [3, 1]  # --chunk-size rows per shard
    queries = pq.read_table(query_dir / "test")
    for column in ("query_id", "query_text", "supercategory", "category", "iconic_group", "embedding", "image_id"):
        assert column in queries.column_names
    assert queries.column("image_id").to_pylist() == relevant["test"]  # extension stripped: the gallery's ids
    assert set(queries.column("image_id").to_pylist()[0]) <= set(release.ids)
    np.testing.assert_allclose(np.asarray(queries.column("embedding").to_pylist(), dtype=np.float32),
                               siglip_encoder.encode_texts(QUERY_TEXTS["test"]), atol=1e-5)

    for split in ("test", "val"):
        cfg = compose_config([
            "image_dataset=inquire_local", f"image_dataset.data_files='{gallery_dir}/*.parquet'",
            "query_dataset=inquire_local", f"query_dataset.data_files='{query_dir}/{{split}}/*.parquet'",
            f"query_dataset.split={split}", "evaluation=exact", "evaluation.latency_queries=2",
            "+evaluation.extra_methods.flat={backend: faiss, method: flat, metric: cosine}",
        ])
        report = evaluate_from_config(cfg)
        assert report.n_gallery == 24 and report.dim == 32 and report.model_name == model
        assert [(r.backend, r.status) for r in report.rows] == [("exact", "ok"), ("faiss", "ok")]
        vectors = np.asarray(pq.read_table(query_dir / split).column("embedding").to_pylist(), dtype=np.float32)
        want = expected_scores(vectors, release, relevant[split])
        for row in report.rows:
            assert row.quality is not None
            assert row.quality.recall[5] == pytest.approx(want["recall@5"])
            assert row.quality.average_precision == pytest.approx(want["ap"])
            assert row.quality.mrr == pytest.approx(want["mrr"])
        if split == "val":  # every relevant image is among the 3 nearest
            assert want == {"recall@5": 1.0, "ap": 1.0, "mrr": 1.0}
        else:  # the first query's 4th relevant image is the farthest of 24: recall@5 3/4, AP (3 + 4/24) / 4
            assert want["recall@5"] == pytest.approx((0.75 + 3) / 4)
            assert want["ap"] == pytest.approx(((3 + 4 / 24) / 4 + 3) / 4)


def test_models_must_match(tmp_path: Path, release: Release, tiny_siglip: Path, siglip_encoder: Any) -> None:
    """Gallery labelled as the published checkpoint, queries from the tiny model: the harness refuses."""
    from img_search.search.evaluate import compose_config, evaluate_from_config

    convert, embed_queries = load_script("convert_inquire_to_hf"), load_script("embed_inquire_queries")
    gallery_dir, query_dir = tmp_path / "hf", tmp_path / "q"
    assert convert.main(release.args(gallery_dir, "--model-name", "google/siglip-so400m-patch14-384",
                                     "--dataset-name", "inquire_siglip")) == 0
    write_query_files(tmp_path / "csv", release, siglip_encoder)
    assert embed_queries.main(["--output-dir", str(query_dir), "--splits", "test", "--model-name", str(tiny_siglip),
                               "--queries-dir", str(tmp_path / "csv"), "--device", "cpu"]) == 0
    cfg = compose_config(["image_dataset=inquire_local", f"image_dataset.data_files='{gallery_dir}/*.parquet'",
                          "query_dataset=inquire_local", f"query_dataset.data_files='{query_dir}/{{split}}/*.parquet'",
                          "evaluation=exact"])
    with pytest.raises(DimensionMismatchError, match="google/siglip-so400m-patch14-384"):
        evaluate_from_config(cfg)


def test_mismatched_row_counts_fail_before_writing(tmp_path: Path, release: Release,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    np.save(release.root / "img_emb" / "img_emb_1.npy", np.zeros((9, 32), dtype=np.float16))
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "convert_inquire_to_hf.py"),
                           *release.args(out, "--model-name", "m", "--dataset-name", "d")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "shard 1: metadata_1.parquet has 8 rows but img_emb_1.npy has 9 vectors" in proc.stderr
    assert not out.exists()  # every pair is checked before anything is written


def test_existing_output_needs_overwrite(tmp_path: Path, release: Release, capsys: pytest.CaptureFixture[str]) -> None:
    convert = load_script("convert_inquire_to_hf")
    out = tmp_path / "hf"
    args = release.args(out, "--model-name", "m", "--dataset-name", "d")
    assert convert.main(args) == 0
    assert convert.main(args) == 1
    assert "already holds 3 Parquet files; pass --overwrite" in capsys.readouterr().err
    assert convert.main([*args, "--overwrite"]) == 0


def test_failed_push_is_clear_and_keeps_the_shards(tmp_path: Path, release: Release,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """With HF_HUB_OFFLINE=1 (the tests' environment) huggingface_hub's real client refuses to connect."""
    convert = load_script("convert_inquire_to_hf")
    out = tmp_path / "hf"
    code = convert.main(release.args(out, "--model-name", "m", "--dataset-name", "d", "--push-to-hub",
                                     "--hf-repo-id", "someone/inquire-tiny", "--hf-token", "hf_not_a_real_token"))
    assert code == 1
    err = capsys.readouterr().err
    assert "HubPushError" in err and "someone/inquire-tiny" in err and "local files are intact" in err
    assert [pq.ParquetFile(p).metadata.num_rows for p in sorted(out.glob("*.parquet"))] == list(SHARD_SIZES)


def test_push_network_error_after_repo_creation(tmp_path: Path, release: Release,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload itself fails (the API object patched to raise a network error after creating the repo)."""
    import huggingface_hub

    from img_search.export import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls: list[str] = []
    existing = huggingface_hub.DatasetCard("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                           "    path: data/*.parquet\n---\n# old\n")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: calls.append("create_repo"))
    monkeypatch.setattr(huggingface_hub.DatasetCard, "load", classmethod(lambda cls, *a, **k: existing))

    def upload_folder(self: Any, **kwargs: Any) -> None:
        calls.append("upload_folder")
        raise ConnectionError("Connection reset by peer")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    convert = load_script("convert_inquire_to_hf")
    assert convert.main(release.args(tmp_path / "hf", "--model-name", "m", "--dataset-name", "d")) == 0
    with pytest.raises(HubPushError, match=r"^pushing 3 Parquet files from .*Connection reset by peer.*local files"):
        push_to_hub(tmp_path / "hf", "someone/inquire-tiny", token="hf_x")
    assert calls == ["create_repo", "upload_folder"]
    assert len(list((tmp_path / "hf").glob("*.parquet"))) == 3


def test_repo_card_keeps_other_configurations(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import yaml

    from img_search.export import _card_text

    existing = huggingface_hub.DatasetCard(
        "---\nlicense: cc-by-4.0\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        "    path: data/*.parquet\n- config_name: queries\n  data_files: old\n---\n# INQUIRE SigLIP\n")
    monkeypatch.setattr(huggingface_hub.DatasetCard, "load", classmethod(lambda cls, *a, **k: existing))
    queries = [{"split": "test", "path": "queries/test/*.parquet"},
               {"split": "validation", "path": "queries/val/*.parquet"}]
    text = _card_text(huggingface_hub.HfApi(token="hf_x"), "someone/repo", "queries", queries)
    front = yaml.safe_load(text.split("---")[1])
    assert front["license"] == "cc-by-4.0"
    assert front["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]},
        {"config_name": "queries", "data_files": queries},
    ]
    assert text.rstrip().endswith("# INQUIRE SigLIP")


def test_queries_download_fallback_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import img_search.data.inquire as inquire

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(inquire, "INQUIRE_DATA_URL", "http://127.0.0.1:9/inquire")  # nothing listens: refused
    embed_queries = load_script("embed_inquire_queries")
    assert embed_queries.main(["--output-dir", str(tmp_path / "q"), "--model-name", "unused"]) == 1
    err = capsys.readouterr().err
    assert "could not download http://127.0.0.1:9/inquire/inquire_annotations.csv" in err
    assert "pass the folder holding them with --queries-dir" in err
    assert not list((tmp_path / "cache").rglob("*.part"))
