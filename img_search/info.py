"""What `img-search info` reports, as plain data (the CLI formats it; the service can serve it)."""

from __future__ import annotations

import datetime as dt
import os
import shlex
from collections.abc import Callable, Sequence
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


def finish_command(index_dir: str, model: str, folders: Sequence[str], *,
                   quote: Callable[[str], str] = shlex.quote) -> str:
    """The `img-search index` command that finishes a model's unfinished ``--recompute`` over ``folders``: without
    ``--recompute`` (a run continues the recompute in its own decode mode; with the flag and another decode setting it
    would start over), naming the model and the index directory (``index`` defaults to neither). ``quote`` makes
    each argument one shell word (the CLI passes one that also keeps control characters off the terminal)."""
    words = [*folders, "--model", model, "--index-dir", index_dir]
    return "img-search index " + " ".join(quote(w) for w in words)


def _outermost(folders: Sequence[str]) -> list[str]:
    """``folders`` (sorted) without those inside another of them."""
    out: list[str] = []
    for folder in folders:
        if not any(folder == o or folder.startswith(o.rstrip(os.sep) + os.sep) for o in out):
            out.append(folder)
    return out


def _recompute(catalog: Catalog, index_dir: Path, model_id: int, model: str,
               roots: Sequence[str]) -> dict[str, Any] | None:
    """The model's unfinished ``index --recompute`` (``catalog.recompute``), or None: the decode mode it embeds with,
    when it started, its files (``files`` = ``done`` + ``left``; deleted ones not counted), the indexed folders holding
    the files it has left with how many each (all indexed folders when none is left: the recompute ends with the next
    run that walks a folder to its end), the command that finishes it, and whether an `index` holds the writer lock
    now (``running``: it may be the run doing it)."""
    state = catalog.recompute_state(model_id)
    if state is None:
        return None
    left = catalog.recompute_folders_left(model_id) or dict.fromkeys(_outermost(roots), 0)
    return {"decode": state.decode, "started": _when(state.started_at), "files": state.files,
            "done": state.files - state.left, "left": state.left,
            "folders": [{"path": p, "left": n} for p, n in left.items()],
            "command": finish_command(str(index_dir), model, list(left)),
            "running": writer_active(index_dir) is True}


def _run_status(index_dir: Path, status: str) -> str:
    """A run recorded as ``running`` whose writer no longer holds the index lock was killed: ``interrupted`` (the
    next `index` run records it so; until then only the lock tells)."""
    if status == "running" and writer_active(index_dir) is False:
        return "interrupted"
    return status


def catalog_info(index_dir: Path, *, failures: int = 20) -> dict[str, Any]:
    """What ``index_dir`` holds: schema, counts per status, models with their precisions, decode modes, parity checks,
    saved search index and unfinished ``--recompute`` (``recompute``: None or ``_recompute``'s dict), indexed folders,
    the last run and up to ``failures`` skipped files. Sizes in bytes, times as local ISO 8601. Raises
    ``CatalogError`` kinds (not found, newer schema)."""
    index_dir = Path(index_dir)
    with Catalog(index_dir / CATALOG_FILENAME, readonly=True) as catalog:
        counts = catalog.embedding_counts()
        size = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
        run = catalog.last_run()
        roots = catalog.roots()
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
                 "parity_checks": catalog.parity_checks(m.id),
                 "recompute": _recompute(catalog, index_dir, m.id, m.name, [p for p, _ in roots])}
                for m in catalog.models()
            ],
            "folders": [{"path": p, "last_indexed": _when(t)} for p, t in roots],
            "last_run": None if run is None else {
                "status": _run_status(index_dir, run["status"]), "started": _when(run["started_at"]),
                "finished": _when(run["finished_at"]),
                "stats": run["stats"],
            },
            "failures": [{"path": f.path, "reason": f.error} for f in catalog.failures(limit=failures)],
        }
