"""One conformance suite for every job queue backend (``jobs.queue.QUEUES``): the in-process worker and RQ on the
real Redis (jobs run by an RQ worker in this process, in burst mode)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_jpeg
from jobs_support import Models, job_settings, make_photos

from img_search.catalog import Catalog
from img_search.errors import NotFoundError
from img_search.jobs.queue import QUEUES, JobQueue, job_status, open_queue, submit_index, submit_reembedding
from img_search.jobs.tasks import Runtime
from img_search.search.store import VectorStore
from img_search.settings import Settings


@dataclass
class Backend:
    settings: Settings
    queue: JobQueue
    drain: Callable[[str], None]


@pytest.fixture(params=sorted(QUEUES))
def make_backend(request: pytest.FixtureRequest, models: Models,
                 rq_settings: Callable[..., Settings]) -> Iterator[Callable[..., Backend]]:
    made: list[JobQueue] = []

    def make(index_dir: Path, *, model: str | None = None, **service: Any) -> Backend:
        if request.param == "rq":
            from img_search.jobs.worker import work

            settings = rq_settings(index_dir, model=model, **service)
            queue = open_queue(settings)

            def drain(run_id: str) -> None:
                for _ in range(10):  # a failed batch comes back through the sweeper: work until settled
                    work(settings, burst=True, logging_level="WARNING", runtime=Runtime(settings,
                                                                                       encoders=models.lookup))
                    queue.reconcile()
                    snap = queue.snapshot(run_id)
                    if snap is not None and snap.settled and not (snap.meta.kind == "reembed" and not snap.synced):
                        return
                raise AssertionError(f"run {run_id} did not settle")
        else:
            settings = job_settings(index_dir, models, model=model, **service)
            queue = open_queue(settings, Runtime(settings, encoders=models.lookup, decode_workers=0))

            def drain(run_id: str) -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    snap = queue.snapshot(run_id)
                    if snap is not None and snap.settled and (snap.meta.kind != "reembed" or snap.synced):
                        return
                    time.sleep(0.05)
                raise AssertionError(f"run {run_id} did not settle")
        assert queue.backend == request.param
        made.append(queue)
        return Backend(settings, queue, drain)

    yield make
    for queue in made:
        queue.close()


def _vectors(index_dir: Path, model: str) -> dict[bytes, np.ndarray]:
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        row = cat.get_model(model)
        assert row is not None
        rows = cat.db.execute("SELECT content_hash, vector FROM embeddings WHERE model_id = ?", (row.id,)).fetchall()
    return {h: np.frombuffer(v, np.float32) for h, v in rows}


def test_full_reembedding_completes_the_collection(make_backend: Callable[..., Backend], models: Models,
                                                   source_index: tuple[Path, Path], tmp_path: Path) -> None:
    photos, index_dir = source_index
    be = make_backend(index_dir)
    siglip = str(models.siglip)
    before = job_status(be.queue, be.settings, model=siglip)
    assert before["state"] == "idle" and before["target_points"] == 0 and before["source_points"] == 12
    assert before["complete"] is False and before["source_collection"] == "image_assets"

    meta = submit_reembedding(be.queue, be.settings, siglip, batch_size=5)
    assert meta.sizes == (5, 5, 2)
    be.drain(meta.run_id)

    status = job_status(be.queue, be.settings, model=siglip)
    assert status["run_id"] == meta.run_id and status["state"] == "finished"
    assert (status["total"], status["done"], status["failed"], status["queued"], status["running"]) == (3, 3, 0, 0, 0)
    assert status["images_done"] == 12 and status["images_failed"] == 0 and status["percent"] == 100.0
    assert status["target_points"] == status["source_points"] == 12 and status["complete"] is True
    assert status["collection"] == "image_assets_siglip" and status["saved_index"] == "synced"
    assert status["images_per_second"] is not None and status["images_per_second"] > 0
    assert status["eta_seconds"] is None

    # the same vectors `index` computes with that model, one per content hash
    reference = tmp_path / "reference"
    models.index(photos, reference, "siglip")
    got, want = _vectors(index_dir, siglip), _vectors(reference, siglip)
    assert got.keys() == want.keys() and len(got) == 12
    for h in want:
        np.testing.assert_allclose(got[h], want[h], atol=1e-5)

    # recorded as `index` records them: how each vector was computed (precision, runtime)
    with Catalog.in_dir(index_dir, readonly=True) as ours, Catalog.in_dir(reference, readonly=True) as theirs:
        a, b = ours.get_model(siglip), theirs.get_model(siglip)
        assert a is not None and b is not None
        assert ours.precision_counts(a.id) == theirs.precision_counts(b.id)
        assert ours.decode_counts(a.id) == theirs.decode_counts(b.id) == {"reduced-1x": 12}  # decoded alike

    # the saved search index was synced once the last batch was done
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        row = cat.get_model(siglip)
        assert row is not None
        current = VectorStore(index_dir, cat, row, be.settings.search).current()
    assert current is not None and current.count == 12

    # idempotent: running it all again changes nothing and duplicates nothing
    again = submit_reembedding(be.queue, be.settings, siglip, batch_size=4)
    be.drain(again.run_id)
    redone = _vectors(index_dir, siglip)
    assert redone.keys() == got.keys()
    for h in got:
        np.testing.assert_allclose(redone[h], got[h], atol=1e-5)  # other batches: other float sums
    # missing_only: nothing is missing, so no batch
    none_missing = submit_reembedding(be.queue, be.settings, siglip, missing_only=True)
    assert none_missing.sizes == ()


def test_changed_files_are_reported_not_embedded(make_backend: Callable[..., Backend], models: Models,
                                                 source_index: tuple[Path, Path]) -> None:
    photos, index_dir = source_index
    be = make_backend(index_dir)
    changed = sorted(photos.rglob("*.jpg"))[0]
    make_jpeg(changed, seed=999)  # other bytes than the catalog recorded
    meta = submit_reembedding(be.queue, be.settings, str(models.siglip), batch_size=100)
    be.drain(meta.run_id)
    status = job_status(be.queue, be.settings, run_id=meta.run_id)
    assert status["state"] == "finished" and status["images_done"] == 11 and status["images_failed"] == 1
    assert status["target_points"] == 11 and status["source_points"] == 12 and status["complete"] is False
    assert any(str(changed) in e and "changed since it was indexed" in e for e in status["errors"])


def test_index_job_and_failed_batches(make_backend: Callable[..., Backend], models: Models, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    photos = make_photos(tmp_path / "photos", n=4)
    # an empty catalog: the index job uses settings.model (here the tiny SigLIP) ...
    be = make_backend(index_dir, model=str(models.siglip), job_max_attempts=2)
    meta = submit_index(be.queue, be.settings, str(photos))
    be.drain(meta.run_id)
    status = job_status(be.queue, be.settings, run_id=meta.run_id)
    assert status["kind"] == "index" and status["state"] == "finished" and status["images_done"] == 4
    assert status["folder"] == str(photos)
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        assert cat.status_counts() == {"ok": 4}
    # ... then every model of the catalog; a job that raises is tried job_max_attempts times, then failed for good
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("x")
    failing = submit_index(be.queue, be.settings, str(not_a_folder))
    be.drain(failing.run_id)
    status = job_status(be.queue, be.settings, run_id=failing.run_id)
    assert status["state"] == "failed" and status["failed"] == 1 and status["retries"] == 1
    assert any("is not a folder" in e for e in status["errors"]), status["errors"]


def test_unknown_backend_and_run(models: Models, tmp_path: Path) -> None:
    from img_search.errors import NotFoundError, UnknownNameError

    settings = job_settings(tmp_path, models)
    with pytest.raises(UnknownNameError, match="valid: inprocess, rq"):
        open_queue(settings, backend="celery")
    queue = open_queue(settings)
    with pytest.raises(NotFoundError, match="no job run"):
        job_status(queue, settings, run_id="abc")


def test_run_on_read_only_index_dir_fails_without_breaking_the_sweeper(
        models: Models, source_index: tuple[Path, Path], rq_settings: Callable[..., Settings],
        read_only_mount: Callable[[Path], Path]) -> None:
    """A re-embedding whose index directory is read-only fails (its jobs cannot write); settling it cannot sync
    the saved index either. The sweeper must go on: it raised CatalogReadOnlyError, so every status request of the
    queue (each runs the sweeper) answered 503 and the worker's sweep failed at every tick for the run's 30 days."""
    from img_search.jobs.worker import work

    _, index_dir = source_index
    settings = rq_settings(read_only_mount(index_dir), model=str(models.siglip), job_max_attempts=1)
    queue = open_queue(settings)
    try:
        meta = submit_reembedding(queue, settings, str(models.siglip))
        work(settings, burst=True, logging_level="WARNING", runtime=Runtime(settings, encoders=models.lookup))
        queue.reconcile()
        status = job_status(queue, settings, run_id=meta.run_id)
        assert status["state"] == "failed" and status["failed"] == 1 and status["saved_index"] == "pending"
        assert any("read-only" in e for e in status["errors"]), status["errors"]
        assert job_status(queue, settings, model=str(models.clip))["state"] == "idle"
    finally:
        queue.close()


def test_services_of_two_index_dirs_sharing_a_queue_see_their_own_runs(
        make_backend: Callable[..., Backend], models: Models, source_index: tuple[Path, Path],
        tmp_path: Path) -> None:
    """Two libraries served with the default queue name: the status of one never shows the other's run (the last
    re-embedding of a model was looked up by model alone, so a service reported another library's run, with its
    own collection's points, and answered /jobs/{run_id} for it)."""
    _, index_a = source_index
    index_b = tmp_path / "index-b"
    models.index(make_photos(tmp_path / "photos-b", n=3), index_b, "clip")
    siglip = str(models.siglip)
    a, b = make_backend(index_a), make_backend(index_b)
    meta = submit_reembedding(b.queue, b.settings, siglip)
    b.drain(meta.run_id)
    assert job_status(b.queue, b.settings, model=siglip)["run_id"] == meta.run_id
    mine = job_status(a.queue, a.settings, model=siglip)
    assert mine["run_id"] is None and mine["state"] == "idle" and mine["target_points"] == 0
    with pytest.raises(NotFoundError):  # on RQ: "... is a run of the index directory .../index-b"
        job_status(a.queue, a.settings, run_id=meta.run_id)


def test_index_job_of_a_folder_gone_since_marks_its_images_deleted(
        make_backend: Callable[..., Backend], models: Models, source_index: tuple[Path, Path]) -> None:
    """A folder deleted between the request (or the watcher's event) and the job: its images leave the collection.
    The job failed ('folder ... does not exist'), was retried job_max_attempts times, and the images stayed live
    in search results for good (the watcher of a removed root kept submitting it)."""
    import shutil

    photos, index_dir = source_index
    be = make_backend(index_dir, model=str(models.clip))
    gone = photos / "a"
    shutil.rmtree(gone)
    meta = submit_index(be.queue, be.settings, str(gone))
    be.drain(meta.run_id)
    status = job_status(be.queue, be.settings, run_id=meta.run_id)
    assert status["state"] == "finished" and status["failed"] == 0 and status["retries"] == 0, status
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        assert cat.status_counts() == {"ok": 6, "deleted": 6}
        row = cat.get_model(str(models.clip))
        assert row is not None and row.dim is not None
        saved = VectorStore(index_dir, cat, row, be.settings.search).current()
    assert saved is not None and saved.count == 6  # the saved search index synced without them


def test_index_job_with_two_models_counts_each_file_once(make_backend: Callable[..., Backend], models: Models,
                                                          source_index: tuple[Path, Path]) -> None:
    """An index job runs once per model of the catalog; its status counts files (3 new photos: 3 done, not 6)."""
    photos, index_dir = source_index
    models.index(photos, index_dir, "siglip")
    make_photos(photos, n=3, start=12)
    (photos / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    be = make_backend(index_dir)
    meta = submit_index(be.queue, be.settings, str(photos))
    be.drain(meta.run_id)
    status = job_status(be.queue, be.settings, run_id=meta.run_id)
    assert status["state"] == "finished" and status["images_done"] == 3 and status["images_failed"] == 1, status
    assert len(status["errors"]) == 1 and "broken.jpg" in status["errors"][0], status["errors"]


def test_a_folder_that_fails_to_stat_is_not_taken_for_gone(models: Models, source_index: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder whose stat fails otherwise than ENOENT (EIO of a failing network mount) is not "gone": the index
    job fails (and is retried) and its images stay as they were, not marked deleted."""
    import errno
    import os

    from img_search.errors import ImgSearchError
    from img_search.jobs.tasks import IndexTask, run_index

    photos, index_dir = source_index
    failing = str(photos / "a")
    real_stat = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(path) == failing:
            raise OSError(errno.EIO, "Input/output error", failing)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    settings = job_settings(index_dir, models, model=str(models.clip))
    with pytest.raises(ImgSearchError):
        run_index(IndexTask(str(index_dir), failing, (str(models.clip),)), Runtime(settings, encoders=models.lookup))
    with Catalog.in_dir(index_dir, readonly=True) as cat:
        assert cat.status_counts() == {"ok": 12}
