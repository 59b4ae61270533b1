"""Jobs of the service (issue 10, seed 002's Phase 3): re-embedding and index runs on a queue, and the watcher.

A *run* (a full re-embedding of the catalog with a model, or an index of one folder) is split into batches, one
job each, on RQ over Redis when ``service.redis_url`` (or the seed's ``REDIS_URL``) is set and on a worker thread
of the service otherwise. Modules, by role:

* ``tasks``     what a job does (``ReembedTask``, ``IndexTask``, the ``TASKS`` registry) and the worker's
                ``Runtime`` (settings, loaded encoders); ``finalize_reembedding`` syncs the saved search index.
* ``queue``     the ``JobQueue`` interface, the ``QUEUES`` registry, ``submit_reembedding``, ``submit_index``,
                ``job_status``, ``check_folder``, and the seed's ``enqueue_full_reembedding(batch_size=100)``.
* ``rq_queue``  the RQ backend: bookkeeping in Redis, leases, the sweeper that re-enqueues lost batches.
* ``inprocess`` the in-process backend.
* ``status``    runs, their snapshots and the status the admin routes answer.
* ``worker``    ``run_workers(settings, n)``: the body of ``img-search worker``.
* ``watch``     ``Watcher`` / ``watch(settings, folders)``: index jobs for changed folders (watchdog), with
                periodic rescans where the OS cannot watch.

Importing this package loads neither RQ, Redis, watchdog nor a model. See docs/SERVICE.md, "Jobs".
"""

from __future__ import annotations

from img_search.jobs.queue import (
    JobQueue,
    enqueue_full_reembedding,
    job_status,
    open_queue,
    submit_index,
    submit_reembedding,
)

__all__ = ["JobQueue", "enqueue_full_reembedding", "job_status", "open_queue", "submit_index", "submit_reembedding"]
