"""Crash safety of `img-search index`: SIGKILLed at seeded random points, then run once more, nothing is lost,
duplicated or half-written; and the saved search index always agrees with the catalog's vectors.

The kills are driven by ``crash_driver.py`` (a subprocess that forks each `index` run from a warm interpreter; see
its docstring for the kinds of crash point). Set ``IMG_SEARCH_CRASH_SEED`` to replay a failing seed; the attempt
logs are kept under the test's tmp_path (``logs/attempt-NNN.log``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, make_jpeg, pattern
from reliability_support import catalog_state, check_saved_index, integrity, min_cosine

DRIVER = Path(__file__).with_name("crash_driver.py")
SEED = int(os.environ.get("IMG_SEARCH_CRASH_SEED", "20240611"))
N_IMAGES = 300
MIN_KILLS = 20
BATCH = 4  # 75 batches: kills land between and inside batches
# a saved ANN index (qdrant_edge, else hnswlib) from 100 vectors on, so the kills hit its copy-update-switch path
ENV = {"IMG_SEARCH_SEARCH__ANN_THRESHOLD": "100"}


def _corpus(folder: Path) -> list[str]:
    """300 distinct small pictures in 6 folders, JPEG and PNG."""
    paths = []
    for i in range(N_IMAGES):
        sub = folder / f"{i % 6:02d}"
        if i % 3:
            paths.append(str(make_jpeg(sub / f"{i:04d}.jpg", seed=i, size=(64, 48))))
        else:
            sub.mkdir(parents=True, exist_ok=True)
            pattern(i, (48, 40)).save(sub / f"{i:04d}.png")
            paths.append(str(sub / f"{i:04d}.png"))
    return paths


def _drive(tmp_path: Path, photos: Path, model: Path) -> list[dict[str, Any]]:
    cfg = {
        "photos": str(photos), "model": str(model), "batch_size": BATCH,
        # fp32: vectors must not depend on how the files were split into batches (int8 quantizes activations per
        # batch), so that a crashed-and-resumed run can be held to cosine 1e-5 of the clean one
        "precision": "fp32", "env": ENV, "n_images": N_IMAGES,
        "clean_index_dir": str(tmp_path / "clean"), "clean_cache": os.environ["XDG_CACHE_HOME"],
        "index_dir": str(tmp_path / "idx"), "crash_cache": str(tmp_path / "cold-cache"),
        "logs": str(tmp_path / "logs"), "seed": SEED, "kills": MIN_KILLS + 4, "max_attempts": 60,
    }
    (tmp_path / "crash.json").write_text(json.dumps(cfg))
    done = subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "crash.json")], capture_output=True,
                          text=True, timeout=900)
    (tmp_path / "driver.jsonl").write_text(done.stdout)  # kept for a failure's post-mortem
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_sigkilled_index_runs_then_one_more_run_lose_and_duplicate_nothing(tmp_path: Path, tiny_siglip: Path) -> None:
    photos = tmp_path / "photos"
    paths = _corpus(photos)
    records = _drive(tmp_path, photos, tiny_siglip)
    where = f"(seed {SEED}; logs in {tmp_path / 'logs'})"
    summary = records[-1]
    assert summary.get("done") is True, f"{records[-3:]} {where}"
    assert records[1]["clean"]["exit"] == 0
    attempts = [r for r in records if "attempt" in r]
    killed = [r for r in attempts if r["killed"]]
    assert len(killed) >= MIN_KILLS, f"only {len(killed)} kills {where}"
    # a run that reached none of its crash points finished normally
    assert [r for r in attempts if not r["killed"] and r.get("exit") != 0] == [], where
    # after every kill: the catalog is intact, and a search works and finds a stored vector's own image first
    bad = [r for r in killed if r["check"].get("integrity", "ok") != "ok" or "error" in r["check"]
           or (r["check"].get("vectors") and not r["check"].get("search_ok"))]
    assert bad == [], where
    assert [r for r in killed if r.get("orphans")] == [], f"decode workers outlived a killed run {where}"
    # those checks went through the saved ANN index (once a run had saved one), as every search does
    assert sum(r["check"].get("backend") in ("qdrant_edge", "hnswlib") and r["check"].get("generation") is not None
               for r in killed) >= 5, where
    # the kills spread over the run: the first indexing, re-embedding, and several distinct crash points
    assert sum(r["filling"] for r in killed) >= 3 and sum(r["recompute"] for r in killed) >= 3, where
    kinds = Counter(r.get("hook", "timed") for r in killed)
    assert len(kinds) >= 6, f"{kinds} {where}"

    # one more, uninterrupted run: a fresh `img-search index` process
    idx = tmp_path / "idx"
    final = cli("index", str(photos), "--model", str(tiny_siglip), "--index-dir", str(idx), "--batch-size", str(BATCH),
                "--precision", "fp32", "--workers", "1", "--json", "--quiet",
                env={**ENV, "XDG_CACHE_HOME": str(tmp_path / "cold-cache")})
    assert final.returncode == 0, final.stderr[-3000:]
    done = json.loads(final.stdout)
    assert done["failed"] == [] and done["embedded"] + done["unchanged"] == N_IMAGES
    model = done["model"]

    assert integrity(idx / "catalog.sqlite3") == "ok"
    state = catalog_state(idx, model)
    clean = catalog_state(tmp_path / "clean", model)
    # every image exactly once, every one embedded, one vector per content
    assert state.n_rows == N_IMAGES and sorted(state.statuses) == sorted(paths)
    assert set(state.statuses.values()) == {"ok"} and state.n_embeddings == N_IMAGES
    assert min_cosine(state.vectors, clean.vectors) >= 1 - 1e-5
    # the saved search index is complete, holds exactly the catalog's images and agrees with exact search
    assert check_saved_index(idx, model) in ("qdrant_edge", "hnswlib")
    # and a run after that has nothing left to do
    again = cli("index", str(photos), "--model", str(tiny_siglip), "--index-dir", str(idx), "--json", "--quiet",
                env=ENV)
    assert json.loads(again.stdout)["unchanged"] == N_IMAGES


# -- vectors written again under the same content hash (found by the crash runs' --recompute) ----------------------
class TorchOnly:
    """An encoder without precisions (float32 torch), so that `index` exports no runtime for each checkpoint."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.info, self.device = inner, inner.info, inner.device

    def image_preprocessor(self) -> Any:
        return self.inner.image_preprocessor()

    def encode_batch(self, batch: Any) -> Any:
        return self.inner.encode_batch(batch)


def _rebuild_model(path: Path, seed: int) -> Path:
    from img_search.embedding.tiny import TinySpec, build_tiny_model

    shutil.rmtree(path, ignore_errors=True)
    return build_tiny_model(path, TinySpec(family="siglip", seed=seed))


@pytest.mark.parametrize("backend", ["exact", "hnswlib"])
def test_recompute_after_the_checkpoint_changed_replaces_the_saved_vectors(tmp_path: Path, backend: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`index --recompute` after the checkpoint at the same path changed: the saved search index must hold the new
    vectors (it kept the old ones: same image ids and content hashes, so the sync saw no difference). And when the
    recompute run dies before its sync, the next plain run repairs the saved index."""
    from img_search.embedding import load_encoder
    from img_search.pipeline.runner import IndexOptions, index_folders
    from img_search.search.store import VectorStore
    from img_search.settings import SearchSettings

    photos = tmp_path / "photos"
    for i in range(24):
        make_jpeg(photos / f"{i:02d}.jpg", seed=i)
    model = tmp_path / "model"
    search = SearchSettings(ann_threshold=0, ann_backend=backend) if backend != "exact" else SearchSettings()

    def run(recompute: bool = False) -> None:
        index_folders([str(photos)], tmp_path / "idx", IndexOptions(model=str(model), workers=0, recompute=recompute),
                      encoder_factory=lambda: TorchOnly(load_encoder(str(model), device="cpu")), search=search)

    _rebuild_model(model, seed=0)
    run()
    assert check_saved_index(tmp_path / "idx", str(model)) == backend
    _rebuild_model(model, seed=1)  # fine-tuned in place, same dimension
    run(recompute=True)
    assert check_saved_index(tmp_path / "idx", str(model)) == backend

    _rebuild_model(model, seed=2)
    with monkeypatch.context() as m:
        def killed(self: Any) -> str:
            raise KeyboardInterrupt  # the run stops after committing every vector, before saving the index

        m.setattr(VectorStore, "sync", killed)
        with pytest.raises(KeyboardInterrupt):
            run(recompute=True)
    run()  # nothing to embed; its sync finds the vectors written again
    assert check_saved_index(tmp_path / "idx", str(model)) == backend


# -- a decode worker forked just before its parent was killed (found by the crash runs: one outlived its parent) ----
_WORKER_RACE = """
import os, signal, sys, time
import torch.utils.data
from img_search.pipeline import reader

hooks = []

class Loader:  # stands in for torch's DataLoader: keeps the start-up hook read_batches gives its workers
    def __init__(self, *args, **kwargs):
        hooks.append(kwargs["worker_init_fn"])
    def __iter__(self):
        return iter(())

torch.utils.data.DataLoader = Loader
reader.read_batches(None, batch_size=2, workers=1)  # in the process that forks the workers
child = os.fork()
if child == 0:  # a decode worker: its parent is SIGKILLed before its start-up hook runs
    time.sleep(1.0)
    hooks[0](0)
    open(sys.argv[1], "w").write("still running")
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_decode_worker_whose_parent_died_before_it_started_exits(tmp_path: Path) -> None:
    """The start-up hook read_batches gives its decode workers knows the parent's pid from before the fork; when that
    parent is already gone (the worker now belongs to init or a subreaper), the worker exits instead of waiting
    forever for work (it used to read its parent after the fork, and then took init for it)."""
    import signal

    import psutil

    marker = tmp_path / "running"
    proc = subprocess.run([sys.executable, "-c", _WORKER_RACE, str(marker)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    worker = psutil.Process(int(proc.stdout))
    try:
        gone, _ = psutil.wait_procs([worker], timeout=20)
        exited = bool(gone) or worker.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        exited = True
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    assert exited and not marker.exists()
