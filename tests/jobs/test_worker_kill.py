"""A real RQ worker process killed with SIGKILL in the middle of a batch: once a worker runs again, the collection
is complete, with no duplicates, and nobody re-enqueued anything by hand (the sweeper of the new worker did)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_support import REDIS_URL, Models, make_photos

from img_search.catalog import Catalog
from img_search.jobs.queue import job_status, open_queue, submit_reembedding
from img_search.jobs.rq_queue import Keys
from img_search.settings import Settings

N = 20
JOB_SIZE = 5
LEASE_S = 2.0


def _siglip_vectors(index_dir: Path, model: str) -> int:
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        row = cat.get_model(model)
        if row is None:
            return 0
        return int(cat.db.execute("SELECT COUNT(*) FROM embeddings WHERE model_id = ?", (row.id,)).fetchone()[0])


@pytest.fixture()
def start_worker(tmp_path: Path, queue_name: str) -> Iterator[Callable[[Path], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(index_dir: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, "IMG_SEARCH_INDEX_DIR": str(index_dir), "IMG_SEARCH_WORKERS": "0",
               "IMG_SEARCH_BATCH_SIZE": "2", "IMG_SEARCH_SERVICE__REDIS_URL": REDIS_URL,
               "IMG_SEARCH_SERVICE__QUEUE_NAME": queue_name, "IMG_SEARCH_SERVICE__JOB_LEASE_S": str(LEASE_S),
               "IMG_SEARCH_SERVICE__SWEEP_INTERVAL_S": "1"}
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115 (kept open for the process)
        proc = subprocess.Popen([sys.executable, "-m", "img_search.jobs.worker"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_sigkilled_worker_mid_batch(tmp_path: Path, models: Models, rq_settings: Callable[..., Settings],
                                    start_worker: Callable[[Path], Any], redis_client: Any) -> None:
    from rq.job import Job, JobStatus

    photos = make_photos(tmp_path / "photos", n=N, size=(1000, 750))  # big enough that a batch takes a while
    index_dir = tmp_path / "index"
    models.index(photos, index_dir, "clip")
    settings = rq_settings(index_dir, job_lease_s=LEASE_S, sweep_interval_s=1.0)
    queue = open_queue(settings)
    siglip = str(models.siglip)
    meta = submit_reembedding(queue, settings, siglip, batch_size=JOB_SIZE)
    keys = Keys(settings.service.queue_name)

    first = start_worker(index_dir)
    # kill it while it holds a batch whose vectors are partly committed (one transaction per forward batch of 2)
    deadline = time.monotonic() + 90
    killed_in: str | None = None
    partial = 0
    while time.monotonic() < deadline:
        leases = list(redis_client.scan_iter(match=keys.lease("*")))
        written = _siglip_vectors(index_dir, siglip)
        if leases and written % JOB_SIZE:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            killed_in, partial = leases[0].decode().removeprefix(keys.lease("")), written
            break
        time.sleep(0.005)
    assert killed_in is not None, (tmp_path / "worker-0.log").read_text()[-3000:]
    snap = queue.snapshot(meta.run_id)
    assert snap is not None and not snap.settled and len(snap.done) < meta.total
    killed_batch = int(killed_in.split("-")[-2])
    assert killed_batch not in snap.done
    assert partial % JOB_SIZE > 0  # the batch died half written
    # RQ itself leaves the dead job "started" (its own clean-up comes after timeout + 60 s, and re-runs nothing)
    assert Job.fetch(killed_in, connection=redis_client).get_status() == JobStatus.STARTED

    start_worker(index_dir)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        snap = queue.snapshot(meta.run_id)  # no sweeping here: only the workers sweep
        if snap is not None and snap.settled and snap.synced:
            break
        time.sleep(0.2)
    assert snap is not None and snap.settled and snap.synced, (tmp_path / "worker-1.log").read_text()[-3000:]
    assert not snap.failed and snap.retries >= 1 and len(snap.done) == meta.total

    status = job_status(queue, settings, run_id=meta.run_id)
    assert status["state"] == "finished" and status["images_done"] == N and status["complete"] is True
    assert status["target_points"] == status["source_points"] == N
    # one vector per content hash: the half-written batch was written again over itself, not beside it
    assert _siglip_vectors(index_dir, siglip) == N
    log = (tmp_path / "worker-1.log").read_text()
    assert f"batch {killed_batch} enqueued again" in log
    queue.close()
