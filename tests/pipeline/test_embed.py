"""The dataset pipelines: Hydra presets, the Parquet layout, several models in one file, resume after an
interruption (in-process and by SIGKILL), caption embedding, and the entry point's exit statuses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_fixtures import FLICKR_ROWS, CountingFactory, write_captions
from helpers import pattern

from img_search.errors import ModelNotFoundError, UnknownNameError
from img_search.pipeline.embed import EmbedConfigError, EmbedJob, compose_config, run_embed
from img_search.pipeline.parquet_writer import OutputError

REPO = Path(__file__).resolve().parents[2]


def job_for(output: Path, dataset: dict[str, Any], models: list[Path | str], **overrides: Any) -> EmbedJob:
    cfg = compose_config([f"output_path={output}", "tasks.workers=0", "tasks.batch_size=4"])
    cfg["models"] = [{"name": str(m), "encoder": "auto", "kwargs": {"device": "cpu"}} for m in models]
    cfg["datasets"] = dataset
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        cfg[section][name] = value
    return EmbedJob.from_config(cfg)


def folder_dataset(root: Path, name: str = "photos") -> dict[str, Any]:
    return {"type": "image_folder", "name": name, "root": str(root)}


def read_rows(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """(model_name, id) -> vector of a file holding one dataset; fails on any repeated row."""
    table = pq.read_table(path)
    assert table.column_names == ["id", "model_name", "dataset_name", "embedding"]
    assert len(set(table.column("dataset_name").to_pylist())) == 1
    keys = list(zip(table.column("model_name").to_pylist(), table.column("id").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a (model, id) pair is written twice"
    vectors = table.column("embedding").to_pylist()
    return {k: np.asarray(v, dtype=np.float32) for k, v in zip(keys, vectors, strict=True)}


# ---------------------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(("preset", "model_id", "encoder"), [
    ("siglip", "google/siglip-so400m-patch14-384", "siglip"),
    ("siglip_base", "google/siglip-base-patch16-224", "siglip"),
    ("siglip2", "google/siglip2-so400m-patch14-384", "siglip2"),
    ("clip", "openai/clip-vit-base-patch32", "clip"),
    ("jina_v4", "jinaai/jina-embeddings-v4", "jina_v4"),
])
def test_model_presets_compose(preset: str, model_id: str, encoder: str) -> None:
    from img_search.embedding import ENCODERS

    cfg = compose_config([f"models={preset}", "datasets=inquire", "tasks.batch_size=256",
                          "output_path=outputs/inquire/siglip-gallery.parquet", "models.0.kwargs.device=cpu"])
    job = EmbedJob.from_config(cfg)
    (spec,) = job.models
    assert (spec.name, spec.encoder, spec.kwargs["device"]) == (model_id, encoder, "cpu")
    assert encoder in ENCODERS
    assert job.tasks.batch_size == 256 and job.output_path == Path("outputs/inquire/siglip-gallery.parquet")
    assert job.dataset["type"] == "inquire" and job.dataset["id_column"] == "inat24_file_name"
    assert job.dataset["path"] == "evendrow/INQUIRE-Rerank" and job.dataset["splits"] == ["validation", "test"]


def test_config_groups_and_validation() -> None:
    cfg = compose_config(["output=parquet_fp16", "logging.level=DEBUG",
                          "+extra_models.clip={name: openai/clip-vit-base-patch32, encoder: clip}"])
    job = EmbedJob.from_config(cfg)
    assert [m.name for m in job.models] == ["google/siglip-so400m-patch14-384", "openai/clip-vit-base-patch32"]
    assert job.output.dtype == "float16" and job.logging.level == "DEBUG"
    assert str(job.output_path) == "outputs/embeddings/inquire.parquet"
    bad = compose_config(["+tasks.batchsize=3"])
    with pytest.raises(EmbedConfigError, match=r"unknown key batchsize in `tasks`; valid keys: batch_size"):
        EmbedJob.from_config(bad)
    with pytest.raises(EmbedConfigError, match="batch_size must be >= 1"):
        EmbedJob.from_config(compose_config(["tasks.batch_size=0"]))
    with pytest.raises(UnknownNameError, match="unknown embedding dtype 'float8'"):
        EmbedJob.from_config(compose_config(["output.dtype=float8"]))
    text = compose_config(["text_dataset.path=captions.jsonl"], config_name="embed_text_config")
    assert text["text_dataset"]["type"] == "captions_jsonl"
    assert text["output_path"].endswith("flickr30k-captions.parquet")


def test_jina_v4_composes_and_fails_clearly_offline(photo_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(["models=jina_v4", f"output_path={tmp_path / 'out.parquet'}", "datasets=image_folder",
                          f"datasets.root={photo_dir}", "models.0.kwargs.device=cpu"])
    job = EmbedJob.from_config(cfg)
    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"jinaai/jina-embeddings-v4.*HF_HUB_OFFLINE is set"):
        run_embed(job)
    assert time.monotonic() - t0 < 30  # no retries while offline
    assert not (tmp_path / "out.parquet").exists()


def test_entry_point_exit_statuses(photo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from omegaconf import OmegaConf

    from img_search.pipeline import embed

    def run(overrides: list[str]) -> int:
        cfg = OmegaConf.create(compose_config(overrides))
        with pytest.raises(SystemExit) as exited:
            embed._main(cfg)
        return int(exited.value.code or 0)

    base = [f"output_path={tmp_path / 'o.parquet'}", "datasets=image_folder", f"datasets.root={photo_dir}"]
    assert run(["models=jina_v4", *base]) == embed.EXIT_RUNTIME_ERROR
    assert "ModelNotFoundError" in caplog.text
    assert run(["+tasks.nope=1", *base]) == embed.EXIT_CONFIG_ERROR
    assert run(["models=siglip", "datasets=image_folder", f"datasets.root={tmp_path / 'nowhere'}",
                f"output_path={tmp_path / 'o.parquet'}"]) == embed.EXIT_RUNTIME_ERROR
    assert "does not exist" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# the image pipeline


def test_folder_embedding_layout_failures_and_parity(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                    siglip_encoder: Any) -> None:
    from img_search.data.images import load_image

    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out" / "gallery.parquet"
    (summary,) = run_embed(job_for(out, folder_dataset(photo_dir), [tiny_siglip]))
    assert (summary.rows, summary.embedded, summary.already_done) == (13, 12, 0)
    ((failed_id, reason),) = summary.failed
    assert failed_id == "broken.jpg" and reason.startswith(("corrupt or truncated", "not an image", "unreadable"))
    rows = read_rows(out)
    ids = sorted(i for _, i in rows)
    assert ids == sorted(f"{'a' if i % 2 else 'b'}/img{i:02d}.jpg" for i in range(12))
    table = pq.read_table(out)
    assert set(table.column("model_name").to_pylist()) == {str(tiny_siglip)}
    assert set(table.column("dataset_name").to_pylist()) == {"photos"}
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    stored = np.stack([rows[(str(tiny_siglip), i)] for i in ids])
    direct = siglip_encoder.encode_images([load_image(str(photo_dir / i)) for i in ids])
    np.testing.assert_allclose(stored, direct, atol=1e-5)
    assert not Path(str(out) + ".parts").exists()


def test_several_models_append_to_one_file(photo_dir: Path, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "gallery.parquet"
    factory = CountingFactory()
    first = run_embed(job_for(out, folder_dataset(photo_dir), [tiny_models["siglip"], tiny_models["clip"]]),
                      encoder_factory=factory)
    assert [s.embedded for s in first] == [12, 12]
    # a later run with a third model adds its rows to the same file; the first two are complete and not loaded
    second = run_embed(job_for(out, folder_dataset(photo_dir), list(tiny_models.values())), encoder_factory=factory)
    assert [(s.embedded, s.already_done) for s in second] == [(0, 12), (12, 0), (0, 12)]
    assert factory.loads == [str(tiny_models["siglip"]), str(tiny_models["clip"]), str(tiny_models["siglip2"])]
    rows = read_rows(out)
    assert len(rows) == 36
    assert {m for m, _ in rows} == {str(p) for p in tiny_models.values()}
    # the same ids under another dataset name are another table's rows, not duplicates
    run_embed(job_for(out, folder_dataset(photo_dir, "photos_again"), [tiny_models["siglip"]]))
    table = pq.read_table(out, columns=["model_name", "dataset_name", "id"])
    triples = list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    assert len(triples) == len(set(triples)) == 48
    assert set(table.column("dataset_name").to_pylist()) == {"photos", "photos_again"}


def test_interrupted_run_resumes_without_duplicates_or_losses(tmp_path: Path, tiny_siglip: Path,
                                                              siglip_encoder: Any) -> None:
    from img_search.data.images import load_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(22):
        pattern(i, (40, 32)).save(folder / f"{i:03d}.png")
    out = tmp_path / "g.parquet"
    job = job_for(out, folder_dataset(folder), [tiny_siglip], output__rows_per_part=3)
    with pytest.raises(KeyboardInterrupt):
        run_embed(job, encoder_factory=CountingFactory(interrupt_after=3))  # 3 batches of 4 are encoded
    parts = Path(str(out) + ".parts")
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in parts.glob("*.parquet")) == 12
    assert not out.exists()
    (parts / "torn-00099.parquet.tmp").write_bytes(b"PAR1 half a file")  # what a kill during a write leaves

    (summary,) = run_embed(job)
    assert (summary.already_done, summary.embedded) == (12, 10)
    rows = read_rows(out)
    ids = sorted(i for _, i in rows)
    assert ids == [f"{i:03d}.png" for i in range(22)]
    direct = siglip_encoder.encode_images([load_image(str(folder / i)) for i in ids])
    np.testing.assert_allclose(np.stack([rows[(str(tiny_siglip), i)] for i in ids]), direct, atol=1e-5)
    assert not parts.exists()

    # a merge killed after its rename but before the parts were removed: the re-run must not duplicate
    parts.mkdir()
    pq.write_table(pq.read_table(out).slice(0, 5), parts / "left-over-00000.parquet")
    factory = CountingFactory()
    (summary,) = run_embed(job, encoder_factory=factory)
    assert (summary.already_done, summary.embedded, factory.loads) == (22, 0, [])
    assert len(read_rows(out)) == 22


def test_killed_process_resumes(tmp_path: Path, tiny_siglip: Path) -> None:
    folder = tmp_path / "many"
    n = 120
    for i in range(n):
        sub = folder / f"{i // 50:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        pattern(i, (40, 32)).save(sub / f"{i:04d}.png")
    out = tmp_path / "g.parquet"
    cmd = [sys.executable, "-m", "img_search.pipeline.embed", "models=siglip", f"models.0.name={tiny_siglip}",
           "models.0.kwargs.device=cpu", "datasets=image_folder", f"datasets.root={folder}", f"output_path={out}",
           "tasks.batch_size=2", "tasks.workers=1", "output.rows_per_part=4", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = Path(str(out) + ".parts")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("*.parquet"))) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the folder bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = sum(pq.ParquetFile(p).metadata.num_rows for p in parts.glob("*.parquet"))
    assert 0 < committed < n

    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming, {committed} of {n} rows already in" in done.stderr
    rows = read_rows(out)
    assert sorted(i for _, i in rows) == sorted(f"{i // 50:02d}/{i:04d}.png" for i in range(n))


def test_existing_file_of_another_layout_and_overwrite(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> None:
    out = tmp_path / "taken.parquet"
    pq.write_table(pa.table({"something": [1, 2]}), out)
    with pytest.raises(OutputError, match="is not a gallery embedding table"):
        run_embed(job_for(out, folder_dataset(photo_dir), [tiny_siglip]))
    (summary,) = run_embed(job_for(out, folder_dataset(photo_dir), [tiny_siglip], output__overwrite=True))
    assert summary.embedded == 12 and len(read_rows(out)) == 12


def test_float16_output(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> None:
    out = tmp_path / "half.parquet"
    run_embed(job_for(out, folder_dataset(photo_dir), [tiny_siglip], output__dtype="float16"))
    assert pq.read_schema(out).field("embedding").type == pa.list_(pa.float16())


# ---------------------------------------------------------------------------------------------------------------
# captions


def test_caption_pipeline(tmp_path: Path, tiny_siglip: Path, siglip_encoder: Any) -> None:
    from img_search.pipeline.embed_text import run_embed_text

    captions = write_captions(tmp_path / "flickr30k.jsonl", FLICKR_ROWS)
    cfg = compose_config([f"text_dataset.path={captions}", f"output_path={tmp_path / 'captions.parquet'}",
                          f"models.0.name={tiny_siglip}", "models.0.encoder=auto", "tasks.batch_size=4"],
                         config_name="embed_text_config")
    job = EmbedJob.from_config(cfg, dataset_key="text_dataset")
    (summary,) = run_embed_text(job)
    assert (summary.rows, summary.embedded, summary.failed) == (6, 6, [])
    table = pq.read_table(tmp_path / "captions.parquet")
    assert table.column_names == ["caption_id", "image_id", "caption", "model_name", "dataset_name", "embedding"]
    assert table.column("caption_id").to_pylist()[:3] == ["1000092795.jpg#0", "1000092795.jpg#1", "10002456.jpg#0"]
    assert table.column("image_id").to_pylist()[2] == "10002456.jpg"
    assert set(table.column("dataset_name").to_pylist()) == {"flickr30k"}
    texts = table.column("caption").to_pylist()
    assert texts[1] == "a dog runs on the beach"
    stored = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(stored, siglip_encoder.encode_texts(texts), atol=1e-5)
    (again,) = run_embed_text(job)
    assert (again.already_done, again.embedded) == (6, 0)


def test_literal_accelerate_cpu_launch(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> None:
    """The command of the docs: `accelerate launch --cpu --num_processes 2 -m img_search.pipeline.embed ...`.

    Accelerate's --cpu launcher starts one process unless an MPI launcher is configured (checked with
    accelerate 1.x); tests/pipeline/test_distributed.py runs two real processes.
    """
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None
    out = tmp_path / "out" / "gallery.parquet"
    proc = subprocess.run(
        [accelerate, "launch", "--cpu", "--num_processes", "2", "-m", "img_search.pipeline.embed", "models=siglip",
         f"models.0.name={tiny_siglip}", "models.0.kwargs.device=cpu", "datasets=image_folder",
         f"datasets.root={photo_dir}", "tasks.batch_size=4", f"output_path={out}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_rows(out)) == 12
    assert "12 embedded, 0 already present, 0 failed" in proc.stderr
