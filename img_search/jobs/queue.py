"""Submitting runs and asking for their status, whichever queue runs them.

``JobQueue`` is the one interface of a queue backend; ``QUEUES`` maps names to them: ``rq`` (RQ over Redis,
``jobs.rq_queue``; chosen when ``service.redis_url`` is set) and ``inprocess`` (a worker thread of this process,
``jobs.inprocess``). ``open_queue(settings)`` picks one. On top of any backend:

* ``submit_reembedding`` splits every live image of the catalog (one per content hash) into batches of
  ``batch_size``, one job each; ``enqueue_full_reembedding(batch_size=100)`` is the seed's entry point.
* ``submit_index`` makes one index job of a folder, for each model of the catalog (or the one named).
* ``job_status`` describes a run (``jobs.status.run_status``), after a ``reconcile`` (the sweeper) pass.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from img_search.errors import InvalidInputError, NotFoundError, UnknownNameError
from img_search.jobs.status import RunMeta, RunSnapshot, latest_key, run_status
from img_search.jobs.tasks import IndexTask, ReembedTask, Runtime, Task
from img_search.settings import DEFAULT_MODEL, Settings

logger = logging.getLogger(__name__)


class JobQueue(Protocol):
    """A queue backend: runs submitted as numbered batches, their state, and the sweeper."""

    backend: str

    def submit(self, meta: RunMeta, tasks: Sequence[Task]) -> None:
        """Record the run and enqueue one job per task (batch n is ``tasks[n]``)."""
        ...

    def snapshot(self, run_id: str) -> RunSnapshot | None:
        """The run's state now (None: unknown run id)."""
        ...

    def latest(self, kind: str, key: str) -> str | None:
        """The id of the last run of ``kind`` for ``key`` (``status.latest_key``: an index directory and the model of
        a re-embedding or the folder of an index)."""
        ...

    def reconcile(self) -> int:
        """Enqueue again the batches whose job was lost; settle finished runs. Returns the batches re-enqueued."""
        ...

    def close(self) -> None: ...


def _rq(settings: Settings, runtime: Runtime | None) -> JobQueue:
    from img_search.jobs.rq_queue import RQJobQueue

    return RQJobQueue(settings, runtime)


def _inprocess(settings: Settings, runtime: Runtime | None) -> JobQueue:
    from img_search.jobs.inprocess import InProcessJobQueue

    return InProcessJobQueue(settings, runtime)


QUEUES: dict[str, Callable[[Settings, Runtime | None], JobQueue]] = {"rq": _rq, "inprocess": _inprocess}


def queue_backend(settings: Settings) -> str:
    """``rq`` when ``service.redis_url`` (or the seed's ``REDIS_URL``) is set, else ``inprocess``."""
    return "rq" if settings.service.redis_url else "inprocess"


def open_queue(settings: Settings, runtime: Runtime | None = None, *, backend: str | None = None) -> JobQueue:
    """The queue for ``settings`` (or the named ``backend``). ``runtime``: how the in-process worker runs jobs
    (default: the settings, decoding in its own thread). Raises ``UnknownNameError`` for an unknown backend and
    ``UnavailableError`` when Redis cannot be reached."""
    name = backend or queue_backend(settings)
    factory = QUEUES.get(name)
    if factory is None:
        raise UnknownNameError(f"unknown job queue {name!r}; valid: {', '.join(sorted(QUEUES))}")
    return factory(settings, runtime)


def _new_run_id() -> str:
    from img_search.jobs.rq_queue import new_run_id

    return new_run_id()


def _catalog_models(settings: Settings) -> list[str]:
    from img_search.catalog import Catalog
    from img_search.errors import CatalogNotFoundError

    try:
        with Catalog.in_dir(settings.index_dir, readonly=True) as catalog:
            return [m.name for m in catalog.models()]
    except CatalogNotFoundError:
        return []


def submit_reembedding(queue: JobQueue, settings: Settings, model: str, *, batch_size: int | None = None,
                       missing_only: bool = False) -> RunMeta:
    """Split every live image of the catalog into batches of ``batch_size`` (default
    ``service.reembed_batch_size``) to embed with ``model`` and submit them. ``missing_only``: leave out images
    whose bytes already have a vector of ``model``. Raises ``CatalogNotFoundError`` (nothing indexed) and
    ``InvalidInputError`` (bad batch size)."""
    from img_search.catalog import Catalog
    from img_search.embedding.hf import canonical_model_id
    from img_search.pipeline.reembed import plan_reembedding

    size = settings.service.reembed_batch_size if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidInputError(f"batch_size must be a whole number >= 1, got {size!r}")
    name = canonical_model_id(model)
    with Catalog.in_dir(settings.index_dir, readonly=True) as catalog:
        row = catalog.get_model(name)
        sources = plan_reembedding(catalog, missing_for=row.id if (missing_only and row is not None) else None)
    batches = [tuple(sources[i:i + size]) for i in range(0, len(sources), size)]
    tasks = [ReembedTask(str(settings.index_dir), name, b, settings.max_image_pixels) for b in batches]
    meta = RunMeta(_new_run_id(), "reembed", str(settings.index_dir), time.time(), tuple(len(b) for b in batches),
                   model=name, search=settings.search.model_dump())
    queue.submit(meta, tasks)
    logger.info("re-embedding run %s: %d images with %s in %d jobs of up to %d (%s queue)", meta.run_id,
                len(sources), name, len(tasks), size, queue.backend)
    return meta


def submit_index(queue: JobQueue, settings: Settings, folder: str, *, model: str | None = None) -> RunMeta:
    """One index job of ``folder`` (a canonical path: callers check it) with ``model``, else with every model of
    the catalog (so each collection stays complete), else with ``settings.model`` or the default model."""
    from img_search.embedding.hf import canonical_model_id

    models = ([canonical_model_id(model)] if model is not None else _catalog_models(settings)
              or [canonical_model_id(settings.model or DEFAULT_MODEL)])
    task = IndexTask(str(settings.index_dir), folder, tuple(models), include_hidden=settings.include_hidden,
                     excludes=settings.exclude, default_excludes=settings.default_excludes,
                     max_image_pixels=settings.max_image_pixels, search=settings.search)
    meta = RunMeta(_new_run_id(), "index", str(settings.index_dir), time.time(), (1,), folder=folder)
    queue.submit(meta, [task])
    logger.info("index run %s: %s with %s (%s queue)", meta.run_id, folder, ", ".join(models), queue.backend)
    return meta


def job_status(queue: JobQueue, settings: Settings, *, run_id: str | None = None, model: str | None = None,
               kind: str = "reembed") -> dict[str, Any]:
    """The status of run ``run_id``, or of the last ``kind`` run of ``model`` (``jobs.status.run_status``), after
    one sweeper pass; only runs of ``settings.index_dir`` (a queue may serve several). Raises ``NotFoundError`` for
    an unknown run id or a run of another index directory."""
    from img_search.embedding.hf import canonical_model_id

    queue.reconcile()
    name = canonical_model_id(model) if model is not None else None
    if run_id is None and name is not None:
        run_id = queue.latest(kind, latest_key(str(settings.index_dir), name))
        if run_id is None:
            return run_status(None, settings, backend=queue.backend, model=name)
    if run_id is None:
        raise InvalidInputError("name a run id or a model")
    snapshot = queue.snapshot(run_id)
    if snapshot is None:
        raise NotFoundError(f"no job run {run_id!r} (runs are kept 30 days on Redis, until restart in process)")
    if snapshot.meta.index_dir != str(settings.index_dir):
        raise NotFoundError(f"job run {run_id!r} is a run of the index directory {snapshot.meta.index_dir}, not of "
                            f"{settings.index_dir} (they share the queue {settings.service.queue_name!r})")
    return run_status(snapshot, settings, backend=queue.backend)


def enqueue_full_reembedding(batch_size: int = 100, *, model: str | None = None, settings: Settings | None = None,
                             queue: JobQueue | None = None, missing_only: bool = False) -> str:
    """Seed 002's Phase 3: re-embed every image of the catalog with ``model`` (default ``service.siglip_model``),
    ``batch_size`` images per job, on RQ when ``service.redis_url`` / ``REDIS_URL`` is set, else in this process.
    Settings default to the environment (``service.config.load_service_settings``). Returns the run id; follow it
    with ``job_status`` or ``GET /api/v1/admin/siglip/status``."""
    if settings is None:
        from img_search.service.config import load_service_settings

        settings = load_service_settings()
    own = queue is None
    q = queue if queue is not None else open_queue(settings)
    try:
        meta = submit_reembedding(q, settings, model or settings.service.siglip_model, batch_size=batch_size,
                                  missing_only=missing_only)
        if own and q.backend == "inprocess":
            _wait_in_process(q, meta.run_id)
        return meta.run_id
    finally:
        if own:
            q.close()


def _wait_in_process(queue: JobQueue, run_id: str) -> None:
    """An in-process queue dies with its process: a caller without a service waits for its run."""
    while True:
        snapshot = queue.snapshot(run_id)
        if snapshot is None or (snapshot.settled and snapshot.synced is not None) or (
                snapshot.settled and snapshot.meta.kind != "reembed"):
            return
        time.sleep(0.2)


def check_folder(folder: str, allowed_roots: Sequence[str]) -> str:
    """``folder`` canonicalised (``data.paths.canonical_folder``: ``~``, ``..``, symlinks and bind mounts
    resolved) if it is one of ``allowed_roots`` (canonicalised the same way) or inside one; raises
    ``FolderNotAllowedError`` otherwise (also when no roots are allowed), ``InvalidInputError`` for a relative path
    or one with a NUL byte, ``NotFoundError`` for an allowed path that does not exist or is not a folder."""
    from img_search.data.paths import canonical_folder

    if "\x00" in folder or not folder.strip():
        raise InvalidInputError("the folder path is empty or holds a NUL byte")
    if not Path(folder).expanduser().is_absolute():
        raise InvalidInputError(f"the folder must be an absolute path (got {folder!r})")
    if not allowed_roots:
        raise FolderNotAllowedError("no folder may be indexed through the API: service.allowed_roots is empty")
    path = canonical_folder(folder)
    roots = [canonical_folder(r) for r in allowed_roots]
    if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
        raise FolderNotAllowedError(f"{folder!r} (that is {path}) is not inside the allowed roots "
                                    f"(service.allowed_roots: {', '.join(roots)})")
    try:
        is_dir = os.path.isdir(path)  # os.path: False for every OSError (a name too long, a loop)
    except ValueError:
        is_dir = False
    if not is_dir:
        raise NotFoundError(f"{folder!r} is not an existing folder")
    return path


class FolderNotAllowedError(InvalidInputError):
    """A folder outside ``service.allowed_roots`` was asked to be indexed (HTTP 403 at the service's edge)."""
