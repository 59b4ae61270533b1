"""The in-process queue: one worker thread in this process, for a service without Redis (``service.redis_url``
unset). Same runs, batches, retries and status as the RQ backend; state lives in memory and ends with the process
(a run cut short by a restart is finished by asking for it again: the batches are idempotent, and
``missing_only`` re-embeds only what is missing)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from img_search.jobs.status import BatchDone, RunMeta, RunSnapshot
from img_search.jobs.tasks import Runtime, Task, execute, finalize_reembedding
from img_search.settings import SearchSettings, Settings

logger = logging.getLogger(__name__)

_STOP = None
CLOSE_WAIT_S = 60.0  # a shutting-down service waits this long for the job in progress


@dataclass
class _Run:
    meta: RunMeta
    tasks: list[Task]
    done: dict[int, BatchDone] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)
    synced: bool | None = None


class InProcessJobQueue:
    """``JobQueue`` backed by a thread of this process (started on the first submit)."""

    backend = "inprocess"

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or Runtime(settings, decode_workers=0)
        self._runs: dict[str, _Run] = {}
        self._latest: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    # ------------------------------------------------------------------ JobQueue
    def submit(self, meta: RunMeta, tasks: Sequence[Task]) -> None:
        with self._lock:
            self._runs[meta.run_id] = _Run(meta, list(tasks), attempts={n: 1 for n in range(len(tasks))})
            self._latest[(meta.kind, meta.latest_key)] = meta.run_id
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="img-search-jobs", daemon=True)
                self._thread.start()
        for n in range(len(tasks)):
            self._queue.put((meta.run_id, n))
        if not tasks:
            self._settle(meta.run_id)

    def snapshot(self, run_id: str) -> RunSnapshot | None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return None
            retries = sum(a - 1 for a in run.attempts.values())
            return RunSnapshot(run.meta, dict(run.done), dict(run.failed), set(run.running), retries, run.synced,
                               workers=1)

    def latest(self, kind: str, key: str) -> str | None:
        with self._lock:
            return self._latest.get((kind, key))

    def reconcile(self) -> int:
        """Nothing is ever lost in one process; retries the saved-index sync of settled re-embeddings that found
        the writer lock taken. Returns 0 (no batch re-enqueued)."""
        with self._lock:
            pending = [r.meta.run_id for r in self._runs.values() if r.synced is False]
        for run_id in pending:
            self._settle(run_id)
        return 0

    def close(self) -> None:
        """Stop the worker thread: the job it runs finishes (waited for up to ``CLOSE_WAIT_S``), queued ones are
        dropped (their runs stay incomplete: submit again, with ``missing_only`` for a re-embedding)."""
        if self._thread is not None:
            self._closing.set()
            self._queue.put(_STOP)
            self._thread.join(timeout=CLOSE_WAIT_S)
            self._thread = None

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._closing.is_set():
                if item is _STOP:
                    return
                continue
            run_id, n = item
            with self._lock:
                run = self._runs[run_id]
                task = run.tasks[n]
                run.running.add(n)
            started = time.time()
            try:
                result = execute(task, self.runtime)
            except Exception as exc:  # recorded and retried; a job must never end the worker
                logger.warning("job %s/%d failed (attempt %d): %s", run_id, n, run.attempts[n], exc, exc_info=True)
                with self._lock:
                    run.running.discard(n)
                    if run.attempts[n] >= self.settings.service.job_max_attempts:
                        run.failed[n] = f"batch {n}: {type(exc).__name__}: {exc}"
                    else:
                        run.attempts[n] += 1
                        self._queue.put((run_id, n))
                        continue
            else:
                with self._lock:
                    run.running.discard(n)
                    run.done[n] = BatchDone(result.ok, result.failed, started, time.time(), tuple(result.errors))
            self._settle(run_id)

    def _settle(self, run_id: str) -> None:
        with self._lock:
            run = self._runs[run_id]
            settled = len(run.done) + len(run.failed) >= run.meta.total
            if not settled or run.synced or run.meta.kind != "reembed" or run.meta.model is None:
                return
            meta = run.meta
        assert meta.model is not None
        synced = finalize_reembedding(meta.index_dir, meta.model, SearchSettings(**meta.search))
        with self._lock:
            run.synced = synced
