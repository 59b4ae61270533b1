"""The RQ backend: batches are RQ jobs on ``service.queue_name`` over Redis (``service.redis_url``).

What RQ does not do, and this module does:

* **Bookkeeping per run** in Redis, under ``img-search:<queue>:`` (``Keys``): the run's meta, the done batches
  with their counts and times, batches failed for good, the current job of each batch and its attempts.
* **Leases.** RQ does not run a job again when the worker running it dies (SIGKILL, OOM, a lost machine): the
  job stays "started" until RQ's own clean-up, long after (timeout + 60 s), moves it to the failed registry, and
  nothing re-runs it. Here a job holds a lease (a Redis key with a TTL of ``service.job_lease_s``), renewed by a
  thread every third of it while the job runs. ``reconcile`` (the sweeper) enqueues a new attempt of every batch
  whose job failed, vanished, or is "started" without a live lease, up to ``service.job_max_attempts``; it runs in
  every worker between jobs (``worker.ImgSearchWorker``, every ``service.sweep_interval_s``) and on each status
  request, under a Redis lock so one sweeper acts at a time. Batches are idempotent (vectors upserted by content
  hash), so a batch run twice, by a slow worker and its replacement, leaves the same catalog as run once.
* **The end of a run**: the job that settles the last batch syncs the saved search index (``finalize``); when
  another ``index`` holds the writer lock, the sweeper tries again later.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from img_search.errors import ImgSearchError, UnavailableError
from img_search.jobs.status import BatchDone, RunMeta, RunSnapshot
from img_search.jobs.tasks import Runtime, Task, execute, finalize_reembedding
from img_search.settings import SearchSettings, Settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "img-search"
SWEEP_LOCK_S = 60  # a sweeper that died holding the lock frees it after this long
RESULT_TTL_S = 24 * 3600  # how long RQ keeps a finished job (ours: the bookkeeping keeps what matters)
RUN_TTL_S = 30 * 24 * 3600  # bookkeeping of a run is kept this long after its last change

_runtime: Runtime | None = None  # the worker process's runtime (worker.work sets it)


def set_runtime(runtime: Runtime | None) -> None:
    """Install the runtime jobs of this process run with (``worker.work`` does; tests may)."""
    global _runtime
    _runtime = runtime


def current_runtime() -> Runtime:
    """This process's runtime; a plain ``rq worker`` gets one from the environment (``load_service_settings``)."""
    global _runtime
    if _runtime is None:
        from img_search.service.config import load_service_settings

        _runtime = Runtime(load_service_settings())
    return _runtime


@dataclass(frozen=True)
class Keys:
    """Redis keys of one queue's bookkeeping (everything under ``img-search:<queue>:``)."""

    queue: str

    @property
    def prefix(self) -> str:
        return f"{KEY_PREFIX}:{self.queue}:"

    def run(self, run_id: str, part: str = "") -> str:
        return f"{self.prefix}run:{run_id}" + (f":{part}" if part else "")

    def latest(self, kind: str, key: str) -> str:
        return f"{self.prefix}latest:{kind}:{key}"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}lease:{job_id}"

    @property
    def active(self) -> str:
        return f"{self.prefix}active"

    @property
    def sweep_lock(self) -> str:
        return f"{self.prefix}sweep"


def connect(url: str) -> Any:
    """A Redis client for ``url`` (checked with a PING); ``UnavailableError`` when Redis cannot be reached."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise UnavailableError(f"cannot reach Redis at {url} (service.redis_url / REDIS_URL): {exc}") from None
    return client


def job_id(queue: str, run_id: str, batch: int, attempt: int) -> str:
    """RQ job ids name their queue, run, batch and attempt (and so can be found and cleaned up by queue)."""
    return f"{queue}-{run_id}-{batch}-{attempt}"


class _Lease:
    """Holds ``key`` in Redis while the job runs: SET with a TTL, renewed every third of it by a daemon thread.
    A killed process renews nothing: the key lapses after ``ttl`` seconds and the sweeper takes the batch back."""

    def __init__(self, client: Any, key: str, ttl: float) -> None:
        self.client, self.key, self.ttl = client, key, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="img-search-lease", daemon=True)

    def _set(self) -> None:
        self.client.set(self.key, f"{socket.gethostname()}:{os.getpid()}", px=max(1, int(self.ttl * 1000)))

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._set()
            except Exception as exc:  # Redis briefly away: try again at the next tick
                logger.warning("cannot renew the job lease %s: %s", self.key, exc)

    def __enter__(self) -> _Lease:
        self._set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.delete(self.key)


def perform(queue: str, run_id: str, batch: int, task: Task, lease_s: float) -> dict[str, Any]:
    """The RQ job: run batch ``batch`` of run ``run_id`` under a lease, record it done, settle the run.

    Idempotent: a batch already recorded done returns at once; its vectors are upserts either way.
    """
    from rq import get_current_job

    job = get_current_job()
    assert job is not None, "perform runs inside an RQ worker"
    client = job.connection
    keys = Keys(queue)
    recorded = client.hget(keys.run(run_id, "done"), str(batch))
    if recorded is not None:
        logger.info("batch %d of run %s is already done; nothing to do", batch, run_id)
        return dict(json.loads(recorded))
    started = time.time()
    with _Lease(client, keys.lease(job.id), lease_s):
        result = execute(task, current_runtime())
    done = BatchDone(result.ok, result.failed, started, time.time(), tuple(result.errors))
    pipe = client.pipeline()
    pipe.hset(keys.run(run_id, "done"), str(batch), json.dumps(done.to_dict()))
    pipe.expire(keys.run(run_id, "done"), RUN_TTL_S)
    pipe.execute()
    settle(client, keys, run_id)
    return done.to_dict()


def settle(client: Any, keys: Keys, run_id: str) -> None:
    """Once every batch of a run is done or failed: sync the saved index (re-embedding) and retire the run.
    One process does it (a SET NX claim); when the writer lock is taken the claim is dropped and the sweeper
    calls this again later."""
    raw = client.get(keys.run(run_id))
    if raw is None:
        return
    meta = RunMeta.from_dict(json.loads(raw))
    settled = client.hlen(keys.run(run_id, "done")) + client.hlen(keys.run(run_id, "failed")) >= meta.total
    if not settled or not client.set(keys.run(run_id, "settling"), "1", nx=True, ex=SWEEP_LOCK_S):
        return
    try:
        synced = True
        if meta.kind == "reembed" and meta.model is not None:
            synced = finalize_reembedding(meta.index_dir, meta.model, SearchSettings(**meta.search))
            client.set(keys.run(run_id, "synced"), "1" if synced else "0", ex=RUN_TTL_S)
        if synced:
            client.srem(keys.active, run_id)
    finally:
        client.delete(keys.run(run_id, "settling"))


class RQJobQueue:
    """``JobQueue`` over RQ (see the module docstring). Raises ``UnavailableError`` when Redis is unreachable."""

    backend = "rq"

    def __init__(self, settings: Settings, runtime: Runtime | None = None, *, client: Any = None) -> None:
        from rq import Queue

        svc = settings.service
        if svc.redis_url is None and client is None:
            raise UnavailableError("the RQ queue needs service.redis_url (REDIS_URL)")
        self.settings = settings
        self.client = client if client is not None else connect(str(svc.redis_url))
        self.keys = Keys(svc.queue_name)
        self.queue = Queue(svc.queue_name, connection=self.client)

    # ------------------------------------------------------------------ JobQueue
    def submit(self, meta: RunMeta, tasks: Sequence[Task]) -> None:
        keys, run_id = self.keys, meta.run_id
        pipe = self.client.pipeline()
        pipe.set(keys.run(run_id), json.dumps(meta.to_dict()), ex=RUN_TTL_S)
        pipe.set(keys.latest(meta.kind, meta.latest_key), run_id, ex=RUN_TTL_S)
        if tasks:
            pipe.hset(keys.run(run_id, "tasks"), mapping={str(n): _dump(t) for n, t in enumerate(tasks)})
            pipe.hset(keys.run(run_id, "attempts"), mapping={str(n): 1 for n in range(len(tasks))})
            pipe.hset(keys.run(run_id, "jobs"), mapping={str(n): job_id(self.queue.name, run_id, n, 1)
                                                          for n in range(len(tasks))})
            for part in ("tasks", "attempts", "jobs"):
                pipe.expire(keys.run(run_id, part), RUN_TTL_S)
        pipe.sadd(keys.active, run_id)
        pipe.execute()
        self.queue.enqueue_many([self._job_data(run_id, n, task, 1) for n, task in enumerate(tasks)])
        if not tasks:
            settle(self.client, keys, run_id)

    def _job_data(self, run_id: str, batch: int, task: Task, attempt: int) -> Any:
        from rq import Queue

        svc = self.settings.service
        return Queue.prepare_data(perform, args=(self.queue.name, run_id, batch, task, svc.job_lease_s),
                                  job_id=job_id(self.queue.name, run_id, batch, attempt),
                                  timeout=svc.job_timeout_s, result_ttl=RESULT_TTL_S, failure_ttl=RUN_TTL_S,
                                  description=f"img-search {task.kind} run {run_id} batch {batch}")

    def snapshot(self, run_id: str) -> RunSnapshot | None:
        keys = self.keys
        pipe = self.client.pipeline()
        pipe.get(keys.run(run_id))
        pipe.hgetall(keys.run(run_id, "done"))
        pipe.hgetall(keys.run(run_id, "failed"))
        pipe.hgetall(keys.run(run_id, "attempts"))
        pipe.hgetall(keys.run(run_id, "jobs"))
        pipe.get(keys.run(run_id, "synced"))
        raw, done, failed, attempts, jobs, synced = pipe.execute()
        if raw is None:
            return None
        meta = RunMeta.from_dict(json.loads(raw))
        done_map = {int(n): BatchDone.from_dict(json.loads(v)) for n, v in done.items()}
        failed_map = {int(n): v.decode() for n, v in failed.items()}
        pending = {int(n): j.decode() for n, j in jobs.items() if int(n) not in done_map and int(n) not in failed_map}
        leases = self.client.mget([keys.lease(j) for j in pending.values()]) if pending else []
        running = {n for (n, _), lease in zip(pending.items(), leases, strict=True) if lease is not None}
        return RunSnapshot(meta, done_map, failed_map, running, sum(int(a) - 1 for a in attempts.values()),
                           None if synced is None else synced == b"1", workers=self.workers())

    def latest(self, kind: str, key: str) -> str | None:
        found = self.client.get(self.keys.latest(kind, key))
        return found.decode() if found is not None else None

    def workers(self) -> int:
        """RQ workers currently registered on this queue."""
        from rq import Worker

        return int(Worker.count(queue=self.queue))

    def reconcile(self) -> int:
        """The sweeper: re-enqueue every lost batch of every active run (see the module docstring), settle the
        runs that are complete. Returns the number of batches enqueued again (0 when another sweeper is busy)."""
        if not self.client.set(self.keys.sweep_lock, f"{socket.gethostname()}:{os.getpid()}", nx=True,
                               ex=SWEEP_LOCK_S):
            return 0
        try:
            requeued = 0
            for raw in self.client.smembers(self.keys.active):
                run_id = raw.decode()
                try:
                    requeued += self._reconcile_run(run_id)
                    settle(self.client, self.keys, run_id)
                except ImgSearchError as exc:  # one run's trouble (its index dir gone, ...) must not stop the rest
                    logger.warning("sweeper: run %s left as it is: %s", run_id, exc)
            return requeued
        finally:
            self.client.delete(self.keys.sweep_lock)

    def _reconcile_run(self, run_id: str) -> int:
        from rq.job import Job

        keys = self.keys
        pipe = self.client.pipeline()
        pipe.hkeys(keys.run(run_id, "done"))
        pipe.hkeys(keys.run(run_id, "failed"))
        pipe.hgetall(keys.run(run_id, "jobs"))
        pipe.hgetall(keys.run(run_id, "attempts"))
        done, failed, jobs, attempts = pipe.execute()
        if not jobs and self.client.get(keys.run(run_id)) is None:
            self.client.srem(keys.active, run_id)  # its bookkeeping expired
            return 0
        settled = {int(n) for n in done} | {int(n) for n in failed}
        pending = {int(n): j.decode() for n, j in jobs.items() if int(n) not in settled}
        if not pending:
            return 0
        found = Job.fetch_many(list(pending.values()), connection=self.client)
        leases = self.client.mget([keys.lease(j) for j in pending.values()])
        requeued = 0
        for (batch, jid), job, lease in zip(pending.items(), found, leases, strict=True):
            lost = self._lost(job, lease)
            if lost is None:
                continue
            attempt = int(attempts.get(str(batch).encode(), b"1"))
            if attempt >= self.settings.service.job_max_attempts:
                logger.error("run %s batch %d failed for good after %d attempts: %s", run_id, batch, attempt, lost)
                self.client.hset(keys.run(run_id, "failed"), str(batch), f"batch {batch}: {lost}")
                self.client.expire(keys.run(run_id, "failed"), RUN_TTL_S)
                continue
            self._requeue(run_id, batch, attempt + 1, lost, jid)
            requeued += 1
        return requeued

    def _lost(self, job: Any, lease: bytes | None) -> str | None:
        """Why a pending batch's job will never finish (None: it is queued, or running under a live lease)."""
        from rq.job import JobStatus

        if job is None:
            return "its job vanished from Redis"
        status = job.get_status(refresh=False)
        if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.CREATED,
                      JobStatus.RATE_LIMITED, JobStatus.READY_TO_ENQUEUE):
            return None
        if status == JobStatus.STARTED:
            if lease is not None:
                return None
            since = job.started_at.timestamp() if job.started_at is not None else 0.0
            if time.time() - since < self.settings.service.job_lease_s:
                return None  # dequeued a moment ago: the job sets its lease first thing
            return "its worker stopped renewing the job's lease (killed, or cut off from Redis)"
        if status == JobStatus.FINISHED:
            return "its job finished without recording the batch"
        exc = (job.latest_result().exc_string if job.latest_result() is not None else None) or ""
        return f"its job {status.value}" + (f": {exc.strip().splitlines()[-1]}" if exc.strip() else "")

    def _requeue(self, run_id: str, batch: int, attempt: int, why: str, old_job: str) -> None:
        task = _load(self.client.hget(self.keys.run(run_id, "tasks"), str(batch)))
        new_id = job_id(self.queue.name, run_id, batch, attempt)
        pipe = self.client.pipeline()
        pipe.hset(self.keys.run(run_id, "attempts"), str(batch), attempt)
        pipe.hset(self.keys.run(run_id, "jobs"), str(batch), new_id)
        pipe.execute()
        self.queue.enqueue_many([self._job_data(run_id, batch, task, attempt)])
        logger.warning("run %s batch %d enqueued again as %s (attempt %d): %s (was %s)", run_id, batch, new_id,
                       attempt, why, old_job)

    def close(self) -> None:
        self.client.close()


def _dump(task: Task) -> bytes:
    import pickle

    return pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)


def _load(raw: bytes | None) -> Task:
    import pickle

    if raw is None:
        raise UnavailableError("the batch's task expired from Redis")
    task: Task = pickle.loads(raw)
    return task


def new_run_id() -> str:
    """A short unique run id (hex)."""
    return uuid.uuid4().hex[:12]
