"""What `img-search info` reports, as plain data (the CLI formats it; the service can serve it)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from img_search.catalog.catalog import CATALOG_FILENAME, Catalog


def _when(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts).isoformat(timespec="seconds") if ts else None


def catalog_info(index_dir: Path, *, failures: int = 20) -> dict[str, Any]:
    index_dir = Path(index_dir)
    with Catalog(index_dir / CATALOG_FILENAME, readonly=True) as catalog:
        counts = catalog.embedding_counts()
        size = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
        run = catalog.last_run()
        return {
            "index_dir": str(index_dir),
            "schema_version": catalog.schema_version,
            "size_on_disk_bytes": size,
            "images": catalog.status_counts(),
            "models": [
                {"name": m.name, "family": m.family, "dim": m.dim, "logit_scale": m.logit_scale,
                 "logit_bias": m.logit_bias, "images": counts.get(m.id, 0)}
                for m in catalog.models()
            ],
            "folders": [{"path": p, "last_indexed": _when(t)} for p, t in catalog.roots()],
            "last_run": None if run is None else {
                "status": run["status"], "started": _when(run["started_at"]), "finished": _when(run["finished_at"]),
                "stats": run["stats"],
            },
            "failures": [{"path": f.path, "reason": f.error} for f in catalog.failures(limit=failures)],
        }
