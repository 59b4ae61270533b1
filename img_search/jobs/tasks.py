"""What a job does, whichever queue runs it: the task payloads, the worker-side ``Runtime`` and ``execute``.

A task says *what* to compute and is decided by the process that enqueues it (the index directory, the images or
folder, the model, and the settings that define what the index holds: excludes, pixel limit, search backend). The
``Runtime`` of the process that runs it says *how* (device, precision, forward batch size, decode processes) and
keeps loaded encoders between jobs. Tasks are small frozen dataclasses, picklable for RQ.

``TASKS`` maps a task kind to its runner (a registry, as everywhere in img-search).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from img_search.embedding.base import Encoder
from img_search.embedding.precision import TowerChoice
from img_search.errors import CatalogLockedError, CatalogReadOnlyError, UnknownNameError
from img_search.pipeline.progress import LogProgress
from img_search.pipeline.reembed import HashSource
from img_search.settings import SearchSettings, Settings

logger = logging.getLogger(__name__)

# an index job waits this long for another `index` run (which holds the catalog's writer lock) before failing; a
# failed job is retried by the sweeper, so this only bounds how long one attempt blocks a worker
INDEX_LOCK_WAIT_S = 600.0
_LOCK_POLL_S = 0.5


@dataclass(frozen=True)
class ReembedTask:
    """One re-embedding batch: vectors of ``model`` for ``sources`` in the catalog of ``index_dir``."""

    index_dir: str
    model: str  # canonical model name (Hub id or absolute local path)
    sources: tuple[HashSource, ...]
    max_image_pixels: int | None = None
    kind: str = "reembed"

    @property
    def size(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class IndexTask:
    """``index`` of one folder (incremental) with each of ``models``, in the catalog of ``index_dir``."""

    index_dir: str
    folder: str  # canonical path
    models: tuple[str, ...]
    include_hidden: bool = False
    excludes: tuple[str, ...] = ()
    default_excludes: bool = True
    max_image_pixels: int | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    kind: str = "index"

    @property
    def size(self) -> int:
        return 1


Task = ReembedTask | IndexTask


@dataclass
class TaskResult:
    """What one job did: images (or, for index jobs, files) done and failed, and a short summary."""

    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class Runtime:
    """The running process's side of a job: its settings (device, dtype, batch size, decode workers) and its
    encoders, loaded once per model and kept. ``encoders``: a look-up tried first (the service hands in the
    encoders its collections already hold); ``decode_workers``: override of the settings' decode processes
    (the service's in-process worker uses 0: no fork inside a threaded server). Thread-safe."""

    def __init__(self, settings: Settings, *, encoders: Callable[[str], Encoder | None] | None = None,
                 decode_workers: int | None = None) -> None:
        from img_search.pipeline.runner import default_workers

        self.settings = settings
        self._lookup = encoders
        self._cache: dict[str, Encoder] = {}
        self._prepared: dict[tuple[str, str], TowerChoice] = {}
        self._lock = threading.Lock()
        chosen = decode_workers if decode_workers is not None else settings.workers
        self.decode_workers = default_workers() if chosen is None else chosen

    def encoder(self, model: str) -> Encoder:
        """The encoder of ``model`` (canonical name), loaded on first use with the settings' device and dtype."""
        from img_search.search.searcher import encoder_factory

        with self._lock:
            found = self._lookup(model) if self._lookup is not None else None
            if found is not None:
                return found
            if model not in self._cache:
                logger.info("loading model %s for jobs", model)
                self._cache[model] = encoder_factory(model, self.settings)()
            return self._cache[model]


    def prepared(self, index_dir: str, model: str, prepare: Callable[[], TowerChoice]) -> TowerChoice:
        """``prepare()`` (runtimes built, parity checked and recorded in that catalog) once per index directory
        and model in this process; its answer after that."""
        key = (index_dir, model)
        with self._lock:
            if key not in self._prepared:
                self._prepared[key] = prepare()
            return self._prepared[key]


def run_reembed(task: ReembedTask, runtime: Runtime) -> TaskResult:
    """Embed the task's images with its model and upsert the vectors (``pipeline.reembed``)."""
    from img_search.catalog import Catalog
    from img_search.pipeline.reembed import prepare_encoder, reembed, register_model

    t0 = time.monotonic()
    encoder = runtime.encoder(task.model)
    index_dir = Path(task.index_dir)
    with Catalog.in_dir(index_dir) as catalog:
        model_id = register_model(catalog, task.model, encoder.info)
        # a service hands in its collections' LockedEncoders: the precisions are those of the model inside
        inner = getattr(encoder, "inner", encoder)
        choice = runtime.prepared(task.index_dir, task.model, lambda: prepare_encoder(inner, catalog, model_id))
        path = catalog.path
    stats = reembed(list(task.sources), encoder, path, model_id, batch_size=runtime.settings.batch_size,
                    workers=runtime.decode_workers, progress=LogProgress(), max_image_pixels=task.max_image_pixels,
                    choice=choice)
    errors = [f"{i.source.paths[0] if i.source.paths else i.source.content_hash.hex()}: {i.error}"
              for i in stats.failed]
    return TaskResult(stats.embedded, len(stats.failed), errors, time.monotonic() - t0)


def _gone(folder: str) -> bool:
    """True when ``folder`` does not exist (ENOENT); False for any other answer, an I/O error of a failing mount
    included (``index_folders`` then reports it; its images are not marked deleted for it)."""
    try:
        os.stat(folder)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _forget_folder(task: IndexTask) -> TaskResult:
    """The task's folder is gone (deleted, or a watched root removed): mark the live images the catalog holds
    under it deleted, as indexing it empty would, and sync each model's saved index. Raises
    ``CatalogLockedError`` while another ``index`` holds the writer lock."""
    from img_search.catalog import Catalog
    from img_search.catalog.lock import IndexLock
    from img_search.search.store import VectorStore

    t0 = time.monotonic()
    index_dir = Path(task.index_dir)
    with IndexLock(index_dir), Catalog.in_dir(index_dir) as catalog:
        live = [path for path, row in catalog.images_under(task.folder).items() if row.status != "deleted"]
        deleted = catalog.mark_deleted(live) if live else 0
        if deleted:
            for model in task.models:
                row = catalog.get_model(model)
                if row is not None and row.dim is not None:
                    VectorStore(index_dir, catalog, row, task.search).sync()
    logger.warning("folder %s is gone: %d indexed %s under it marked deleted", task.folder, deleted,
                   "image" if deleted == 1 else "images")
    return TaskResult(detail={"folder_gone": True, "deleted": deleted}, seconds=time.monotonic() - t0)


def run_index(task: IndexTask, runtime: Runtime) -> TaskResult:
    """``pipeline.runner.index_folders`` over the task's folder, once per model; waits (up to
    ``INDEX_LOCK_WAIT_S``) while another ``index`` holds the catalog's writer lock. A folder gone since the job was
    submitted (``_forget_folder``): its indexed images are marked deleted."""
    from img_search.pipeline.runner import IndexOptions, index_folders

    t0 = time.monotonic()
    result = TaskResult()
    if _gone(task.folder):
        deadline = time.monotonic() + INDEX_LOCK_WAIT_S
        while True:
            try:
                return _forget_folder(task)
            except CatalogLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_LOCK_POLL_S)
    for model in task.models:
        options = IndexOptions(model=model, batch_size=runtime.settings.batch_size, workers=runtime.decode_workers,
                               max_image_pixels=task.max_image_pixels, include_hidden=task.include_hidden,
                               excludes=task.excludes, default_excludes=task.default_excludes,
                               ocr=runtime.settings.ocr)
        deadline = time.monotonic() + INDEX_LOCK_WAIT_S
        while True:
            try:
                summary = index_folders([task.folder], Path(task.index_dir), options,
                                        encoder_factory=lambda m=model: runtime.encoder(m),  # type: ignore[misc]
                                        progress=LogProgress(), search=task.search)
                break
            except CatalogLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(_LOCK_POLL_S)
        # files, once: each model's run sees the same files (their counts per model are in ``detail``)
        result.ok = max(result.ok, summary.embedded + summary.reused)
        result.failed = max(result.failed, len(summary.failed))
        result.errors += [e for e in (f"{f.path}: {f.reason}" for f in summary.failed[:10]) if e not in result.errors]
        result.detail[model] = {"scanned": summary.scanned, "embedded": summary.embedded, "reused": summary.reused,
                                "unchanged": summary.unchanged, "deleted": summary.deleted,
                                "failed": len(summary.failed)}
    result.seconds = time.monotonic() - t0
    return result


TASKS: dict[str, Callable[[Any, Runtime], TaskResult]] = {"reembed": run_reembed, "index": run_index}


def execute(task: Task, runtime: Runtime) -> TaskResult:
    """Run ``task`` in this process. Raises ``UnknownNameError`` for a kind without a runner, and whatever the
    runner raises (the queue records it and retries the job)."""
    runner = TASKS.get(task.kind)
    if runner is None:
        raise UnknownNameError(f"unknown job kind {task.kind!r}; valid: {', '.join(sorted(TASKS))}")
    return runner(task, runtime)


def finalize_reembedding(index_dir: str, model: str, search: SearchSettings) -> bool:
    """Bring the saved search index of ``model`` up to date with the catalog (``VectorStore.sync``) under the
    catalog's writer lock, taken without waiting. Returns False when another ``index`` holds the lock (the caller
    tries again later; searches catch up in memory meanwhile), or when this process cannot write the index
    directory (a read-only mount: a worker that can write it syncs it; the run stays ``pending`` until then); True
    when synced, or when the model has no vectors at all (nothing to sync)."""
    from img_search.catalog import Catalog
    from img_search.catalog.lock import IndexLock
    from img_search.search.store import VectorStore

    try:
        with IndexLock(Path(index_dir)), Catalog.in_dir(Path(index_dir)) as catalog:
            row = catalog.get_model(model)
            if row is None or row.dim is None:
                return True
            backend = VectorStore(Path(index_dir), catalog, row, search).sync()
    except CatalogLockedError as exc:
        logger.info("saved index of %s not synced yet: %s", model, exc)
        return False
    except CatalogReadOnlyError as exc:
        logger.info("saved index of %s not synced by this process: %s", model, exc)
        return False
    logger.info("saved %s index of %s synced after re-embedding", backend, model)
    return True
