"""``img-search worker``: RQ workers for the service's jobs (``run_workers(settings, n)``).

Each worker is an RQ ``SimpleWorker`` (jobs run in the worker process itself, so a model loaded by the first job
stays loaded for the next; a fork per job would load it again every time) with the sweeper of
``jobs.rq_queue`` added to RQ's maintenance tasks, run every ``service.sweep_interval_s``: a batch whose worker
was killed is enqueued again by any live worker, or by the first one started afterwards. ``n`` > 1 runs that
many worker processes under this one, each restarted if it dies; SIGINT / SIGTERM stop them after their job
(a second signal stops them at once, as RQ does).

``python -m img_search.jobs.worker [--index-dir DIR] [-n N] [--burst]`` does the same until the CLI command is
wired.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import socket
import time
import uuid
from typing import Any

from img_search.errors import ImgSearchError, UnavailableError, exit_code
from img_search.jobs.tasks import Runtime
from img_search.settings import Settings

logger = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0  # between restarts of a worker process that died, so a crash loop cannot spin


def _worker_class() -> type[Any]:
    from rq import SimpleWorker

    class ImgSearchWorker(SimpleWorker):
        """An RQ SimpleWorker that also runs img-search's sweeper as a maintenance task."""

        sweeper: Any = None

        def run_maintenance_tasks(self) -> None:
            super().run_maintenance_tasks()
            if self.sweeper is not None:
                try:
                    requeued = self.sweeper.reconcile()
                except Exception as exc:  # the sweeper must never stop the worker
                    self.log.warning("img-search sweeper failed: %s", exc, exc_info=True)
                else:
                    if requeued:
                        self.log.warning("img-search sweeper enqueued %d lost batch(es) again", requeued)

    return ImgSearchWorker


def make_worker(settings: Settings, *, name: str | None = None, runtime: Runtime | None = None) -> Any:
    """An RQ worker on ``service.queue_name`` at ``service.redis_url`` with the sweeper installed, and this
    process's job runtime set (``runtime``, default ``Runtime(settings)``). Raises ``UnavailableError`` without a
    reachable Redis."""
    from img_search.jobs import rq_queue

    svc = settings.service
    if svc.redis_url is None:
        raise UnavailableError("`img-search worker` needs Redis: set REDIS_URL (or service.redis_url)")
    sweeper = rq_queue.RQJobQueue(settings)
    rq_queue.set_runtime(runtime or Runtime(settings))
    # the idle worker wakes every (worker_ttl - 15) s (RQ's dequeue timeout): short enough for the sweeper's interval
    ttl = max(20, math.ceil(svc.sweep_interval_s) + 15)
    worker = _worker_class()([svc.queue_name], connection=sweeper.client,
                             name=name or f"{svc.queue_name}-{socket.gethostname()}-{os.getpid()}-"
                                          f"{uuid.uuid4().hex[:6]}",
                             worker_ttl=ttl, maintenance_interval=max(1, math.ceil(svc.sweep_interval_s)))
    worker.sweeper = sweeper
    return worker


def work(settings: Settings, *, burst: bool = False, logging_level: str = "INFO",
         runtime: Runtime | None = None) -> bool:
    """Run one worker in this process until stopped (``burst``: until the queue is empty). Returns whether it ran
    any job."""
    worker = make_worker(settings, runtime=runtime)
    return bool(worker.work(burst=burst, logging_level=logging_level))


def _child(settings: Settings, burst: bool, logging_level: str) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work(settings, burst=burst, logging_level=logging_level)


def run_workers(settings: Settings, n: int = 1, *, burst: bool = False, logging_level: str = "INFO") -> int:
    """Run ``n`` RQ workers (the body of ``img-search worker``) until SIGINT / SIGTERM (``burst``: until the queue
    is empty). ``n`` = 1 works in this process; more start child processes, each restarted when it dies (unless
    ``burst``). Returns the exit status (0). Raises ``UnavailableError`` without Redis, ``InvalidInputError`` for
    ``n`` < 1."""
    from img_search.errors import InvalidInputError
    from img_search.jobs.rq_queue import connect

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"the number of workers must be a whole number >= 1, got {n!r}")
    if settings.service.redis_url is None:
        raise UnavailableError("`img-search worker` needs Redis: set REDIS_URL (or service.redis_url)")
    connect(settings.service.redis_url).close()  # fail here, in one line, when Redis is not there
    if n == 1:
        work(settings, burst=burst, logging_level=logging_level)
        return 0
    # fork: this process has loaded no model (import-light), so each child starts clean and cheap
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_child, args=(settings, burst, logging_level), name=f"img-search-worker-{i}")
             for i in range(n)]
    for p in procs:
        p.start()
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGKILL if stopping else signal.SIGINT)
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.is_alive() for p in procs) or not (stopping or burst):
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping and not burst:
                    p.join()
                    logger.warning("worker process %d exited (%s); starting another", p.pid, p.exitcode)
                    time.sleep(RESTART_PAUSE_S)
                    procs[i] = ctx.Process(target=_child, args=(settings, burst, logging_level), name=p.name)
                    procs[i].start()
            time.sleep(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:
            p.join()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m img_search.jobs.worker``: settings from the environment (and REDIS_URL)."""
    import argparse

    from img_search.service.config import load_service_settings

    parser = argparse.ArgumentParser(prog="python -m img_search.jobs.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--index-dir", default=None)
    parser.add_argument("-n", "--workers", type=int, default=1)
    parser.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run_workers(load_service_settings(args.index_dir), args.workers, burst=args.burst)
    except ImgSearchError as exc:
        logger.error("%s", exc)
        return exit_code(exc)


if __name__ == "__main__":
    raise SystemExit(main())
