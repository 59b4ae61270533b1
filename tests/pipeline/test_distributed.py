"""Distribution: two real processes under `accelerate launch` (gloo on CPU), main-process-first building with
retries, and the contexts' collectives."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from dataset_fixtures import CountingFactory
from helpers import pattern

from img_search.errors import DatasetError, UnknownNameError
from img_search.pipeline.distributed import (
    AccelerateContext,
    LocalContext,
    main_process_first,
    make_context,
    with_retries,
)


def test_two_processes_gather_every_row_once(tmp_path: Path, tiny_siglip: Path, siglip_encoder: Any) -> None:
    """11 sources (10 images + 1 broken file), 2 already embedded by an interrupted run: the 9 left are not a
    multiple of the world size (2) nor of the batch size (2), so the last share is padded with a repeat."""
    from img_search.data.images import load_image
    from img_search.pipeline.embed import EmbedJob, compose_config, run_embed

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(10):
        pattern(i, (40, 32)).save(folder / f"{i:02d}.png")
    (folder / "99-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out" / "gallery.parquet"
    overrides = ["models=siglip", f"models.0.name={tiny_siglip}", "datasets=image_folder", f"datasets.root={folder}",
                 f"output_path={out}", "tasks.batch_size=2", "tasks.workers=1", "output.rows_per_part=2"]
    with pytest.raises(KeyboardInterrupt):
        run_embed(EmbedJob.from_config(compose_config(overrides)), encoder_factory=CountingFactory(interrupt_after=1))

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None
    proc = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "-m", "img_search.pipeline.embed", *overrides,
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "running on 2 processes" in proc.stderr
    assert "resuming, 2 of 11 rows already in" in proc.stderr
    assert "8 embedded, 2 already present, 1 failed" in proc.stderr
    assert proc.stderr.count("skipped 99-broken.png") == 1  # reported once, by the main process

    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == [f"{i:02d}.png" for i in range(10)] and len(ids) == len(set(ids))
    stored = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    direct = siglip_encoder.encode_images([load_image(str(folder / i)) for i in ids])
    np.testing.assert_allclose(stored, direct, atol=1e-5)


def test_retries_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("the Hub hiccuped")
        return "built"

    assert with_retries(flaky, what="x", attempts=3, backoff=0.5, sleep=sleeps.append) == "built"
    assert len(calls) == 3 and sleeps == [0.5, 1.0]

    calls.clear()
    with pytest.raises(ConnectionError):
        with_retries(lambda: flaky() if len(calls) < 5 else "", what="x", attempts=2, backoff=0.5,
                     sleep=sleeps.append)
    assert len(calls) == 2

    def typo() -> None:
        calls.append(1)
        raise UnknownNameError("unknown encoder 'sigclip'")

    calls.clear()
    with pytest.raises(UnknownNameError):
        with_retries(typo, what="x", attempts=3, backoff=0.0, sleep=sleeps.append)
    assert len(calls) == 1  # not a network error: no retry


def test_no_retries_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: list[int] = []

    def offline() -> None:
        calls.append(1)
        raise DatasetError("Hub unreachable")

    with pytest.raises(DatasetError, match="Hub unreachable"):
        main_process_first(LocalContext(), offline, what="the dataset", attempts=5, backoff=10.0)
    assert len(calls) == 1


def test_contexts() -> None:
    assert isinstance(make_context(), LocalContext)
    with pytest.raises(UnknownNameError, match="unknown distributor 'slurm'; valid names: accelerate, local"):
        make_context("slurm")
    local = LocalContext()
    assert local.split([1, 2, 3]) == [1, 2, 3] and local.broadcast("x") == "x"
    # Accelerate in a process that no launcher started: a world of one, every collective the identity
    ctx = make_context("accelerate")
    assert isinstance(ctx, AccelerateContext)
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.device) == (0, 1, True, "cpu")
    assert ctx.split([1, 2, 3]) == [1, 2, 3] and ctx.gather_objects({"a": 1}) == [{"a": 1}]
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(ctx.gather_vectors(vectors), vectors)
    assert main_process_first(ctx, lambda: 42, what="x") == 42
