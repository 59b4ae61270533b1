"""Runs and their progress, the same for every queue backend.

A *run* is one request (a full re-embedding, an index of a folder) split into numbered batches, each one job on
the queue. A backend records, per run, its ``RunMeta``, which batches are done (``BatchDone``), which failed for
good (after ``service.job_max_attempts``), which are running, and whether the saved search index was synced after
a re-embedding. ``RunSnapshot`` is that record at one instant; ``run_status`` turns it into what the admin status
routes answer: queued, running, done, failed, percent, images/s, ETA, and whether the target collection holds as
many points as its source.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from img_search.settings import Settings

KINDS = ("reembed", "index")
MAX_REPORTED_ERRORS = 10


def latest_key(index_dir: str, key: str) -> str:
    """``JobQueue.latest``'s key: a model or folder within one index directory. Services of several index
    directories may share a queue (the default ``service.queue_name``); each sees its own runs only."""
    return f"{index_dir}\t{key}"


@dataclass(frozen=True)
class RunMeta:
    """A run as it was submitted. ``model``: the target model of a re-embedding (canonical name), None for index
    runs; ``folder``: the folder of an index run; ``sizes[n]``: images in batch n (1 for an index job)."""

    run_id: str
    kind: str
    index_dir: str
    created_at: float
    sizes: tuple[int, ...]
    model: str | None = None
    folder: str | None = None
    search: dict[str, Any] = field(default_factory=dict)  # SearchSettings.model_dump() for the final sync

    @property
    def total(self) -> int:
        return len(self.sizes)

    @property
    def latest_key(self) -> str:
        """The key under which this run is the latest of its kind (``latest_key``): its index directory and model
        (re-embedding) or folder (index)."""
        return latest_key(self.index_dir, self.model or self.folder or "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMeta:
        return cls(**{**data, "sizes": tuple(data["sizes"])})


@dataclass(frozen=True)
class BatchDone:
    """One finished batch: images embedded and failed (unreadable, changed since indexing), when it ran."""

    ok: int
    failed: int
    started_at: float
    finished_at: float
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchDone:
        return cls(**{**data, "errors": tuple(data.get("errors", ()))})


@dataclass
class RunSnapshot:
    """A run's state at one instant: ``done`` and ``failed`` (batch -> BatchDone / final error), ``running``
    (batches a live worker holds), ``retries`` (extra attempts made), ``synced`` (re-embedding: the saved search
    index was synced after the last batch; None while not tried)."""

    meta: RunMeta
    done: dict[int, BatchDone] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)
    retries: int = 0
    synced: bool | None = None
    workers: int | None = None

    @property
    def settled(self) -> bool:
        """Every batch is done or failed for good."""
        return len(self.done) + len(self.failed) >= self.meta.total


def _counts(settings: Settings, index_dir: str, model: str | None) -> dict[str, Any]:
    """Points of the target model's collection and of its source (the CLIP collection when the target is another
    model and CLIP is indexed; else every live image), by the catalog's counts of live images with a vector."""
    from img_search.catalog import Catalog
    from img_search.embedding.hf import canonical_model_id
    from img_search.errors import CatalogNotFoundError

    svc = settings.service
    out: dict[str, Any] = {"target_points": 0, "source_collection": None, "source_points": 0, "complete": False}
    try:
        catalog = Catalog.in_dir(Path(index_dir), readonly=True)
    except CatalogNotFoundError:
        return out
    with catalog, catalog.snapshot():
        models = {m.name: m for m in catalog.models()}
        counts = catalog.embedding_counts()
        live = catalog.status_counts().get("ok", 0)
    target = models.get(model) if model is not None else None
    out["target_points"] = counts.get(target.id, 0) if target is not None else 0
    clip = models.get(canonical_model_id(svc.clip_model))
    if clip is not None and clip.name != model:
        out["source_collection"], out["source_points"] = svc.clip_collection, counts.get(clip.id, 0)
    else:
        out["source_collection"], out["source_points"] = "catalog (live images)", live
    out["complete"] = out["source_points"] > 0 and out["target_points"] == out["source_points"]
    return out


def collection_name(settings: Settings, model: str | None) -> str | None:
    """The service's name for the collection of ``model`` (settings' CLIP / SigLIP names), else None."""
    from img_search.embedding.hf import canonical_model_id

    if model is None:
        return None
    svc = settings.service
    names = {canonical_model_id(svc.clip_model): svc.clip_collection,
             canonical_model_id(svc.siglip_model): svc.siglip_collection}
    return names.get(model)


def run_status(snapshot: RunSnapshot | None, settings: Settings, *, backend: str, model: str | None = None,
               now: float | None = None) -> dict[str, Any]:
    """The status of a run (None: no run yet for ``model``): the ``JobStatus`` schema of the service.

    ``percent``: images done / images in the run x 100; ``images_per_second``: images done / seconds since the
    first batch started; ``eta_seconds``: images left / that rate (None before a batch finished, and once settled).
    """
    now = time.time() if now is None else now
    meta = snapshot.meta if snapshot is not None else None
    model = meta.model if meta is not None else model
    status: dict[str, Any] = {
        "run_id": None, "kind": meta.kind if meta else "reembed", "backend": backend, "model": model,
        "collection": collection_name(settings, model), "folder": meta.folder if meta else None, "state": "idle",
        "total": 0, "queued": 0, "running": 0, "done": 0, "failed": 0, "retries": 0, "images_total": 0,
        "images_done": 0, "images_failed": 0, "percent": 0.0, "images_per_second": None, "eta_seconds": None,
        "created_at": None, "started_at": None, "finished_at": None, "saved_index": None, "errors": [],
        "workers": snapshot.workers if snapshot is not None else None,
    }
    if model is not None or (meta is not None and meta.kind == "reembed"):
        status.update(_counts(settings, meta.index_dir if meta else str(settings.index_dir), model))
    else:
        status.update({"target_points": None, "source_collection": None, "source_points": None, "complete": None})
    if snapshot is None or meta is None:
        return status
    done = snapshot.done
    images_total = sum(meta.sizes)
    images_ok = sum(d.ok for d in done.values())
    images_failed = sum(d.failed for d in done.values()) + sum(meta.sizes[n] for n in snapshot.failed)
    finished = images_ok + images_failed if meta.kind == "reembed" else len(done) + len(snapshot.failed)
    whole = images_total if meta.kind == "reembed" else meta.total
    running = len(snapshot.running - set(done) - set(snapshot.failed))
    started = min((d.started_at for d in done.values()), default=None)
    last = max((d.finished_at for d in done.values()), default=None)
    status.update({
        "run_id": meta.run_id, "total": meta.total, "done": len(done), "failed": len(snapshot.failed),
        "running": running, "queued": max(0, meta.total - len(done) - len(snapshot.failed) - running),
        "retries": snapshot.retries, "images_total": images_total if meta.kind == "reembed" else None,
        "images_done": images_ok, "images_failed": images_failed, "created_at": meta.created_at,
        "started_at": started, "percent": round(100.0 * finished / whole, 2) if whole else 100.0,
        "errors": ([e for d in done.values() for e in d.errors] + list(snapshot.failed.values()))[
            :MAX_REPORTED_ERRORS],
    })
    if snapshot.settled:
        status["state"] = "failed" if snapshot.failed else "finished"
        status["finished_at"] = last
    else:
        status["state"] = "running" if (done or running) else "queued"
    if started is not None and last is not None and images_ok:
        rate = images_ok / max(last - started, 1e-6) if meta.kind == "reembed" else None
        status["images_per_second"] = round(rate, 3) if rate else None
        if rate and not snapshot.settled:
            status["eta_seconds"] = round((images_total - finished) / rate, 1)
    if meta.kind == "reembed":
        status["saved_index"] = ("synced" if snapshot.synced else "pending") if snapshot.settled else "pending"
    else:
        status["saved_index"] = "synced by the index run"
    return status
