"""What `img-search info` reports, as plain data (the CLI formats it; the service can serve it)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from img_search.catalog.catalog import CATALOG_FILENAME, Catalog
from img_search.catalog.lock import writer_active
from img_search.search.store import read_current


def _when(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else None


def _saved_index(index_dir: Path, model_id: int) -> dict[str, Any] | None:
    gen = read_current(index_dir / "vectors" / f"model-{model_id}")
    if gen is None:
        return None
    size = sum(p.stat().st_size for p in gen.path.rglob("*") if p.is_file())
    return {"backend": gen.backend, "vectors": gen.count, "params": gen.params, "generation": gen.name,
            "size_on_disk_bytes": size}


def _run_status(index_dir: Path, status: str) -> str:
    """A run recorded as ``running`` whose writer no longer holds the index lock was killed: ``interrupted`` (the
    next `index` run records it so; until then only the lock tells)."""
    if status == "running" and writer_active(index_dir) is False:
        return "interrupted"
    return status


def catalog_info(index_dir: Path, *, failures: int = 20) -> dict[str, Any]:
    """What ``index_dir`` holds: schema, counts per status, models with their precisions, decode modes, parity checks
    and saved search index, indexed folders, the last run and up to ``failures`` skipped files. Sizes in bytes,
    times as local ISO 8601. Raises ``CatalogError`` kinds (not found, newer schema)."""
    index_dir = Path(index_dir)
    with Catalog(index_dir / CATALOG_FILENAME, readonly=True) as catalog:
        counts = catalog.embedding_counts()
        size = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
        run = catalog.last_run()
        return {
            "index_dir": str(index_dir),
            "schema_version": catalog.schema_version,
            "read_only": catalog.immutable or not os.access(index_dir, os.W_OK),
            "size_on_disk_bytes": size,
            "images": catalog.status_counts(),
            "models": [
                {"name": m.name, "family": m.family, "dim": m.dim, "logit_scale": m.logit_scale,
                 "logit_bias": m.logit_bias, "images": counts.get(m.id, 0),
                 "search_index": _saved_index(index_dir, m.id),
                 "precisions": [{"precision": pr, "runtime": rt, "images": n}
                                for pr, rt, n in catalog.precision_counts(m.id)],
                 "decode": catalog.decode_counts(m.id),  # live images per decode mode
                 "parity_checks": catalog.parity_checks(m.id)}
                for m in catalog.models()
            ],
            "folders": [{"path": p, "last_indexed": _when(t)} for p, t in catalog.roots()],
            "last_run": None if run is None else {
                "status": _run_status(index_dir, run["status"]), "started": _when(run["started_at"]),
                "finished": _when(run["finished_at"]),
                "stats": run["stats"],
            },
            "failures": [{"path": f.path, "reason": f.error} for f in catalog.failures(limit=failures)],
        }
