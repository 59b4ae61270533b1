"""Helpers of the reliability tests (tests/reliability): running the CLI as users do, the checks every fault test
ends with (catalog integrity, each image exactly once, the saved search index against exact search), and the
environments the faults need (a size-limited tmpfs, a process without root's permission override).

A module of its own name (not ``conftest``): the test modules import it; fixtures live in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from img_search.catalog import Catalog
from img_search.search.store import CURRENT, read_current


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line a failed command must print (asserts there is exactly one and no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


# -- checks ------------------------------------------------------------------------------------------------------
def integrity(db_path: Path) -> str:
    """``PRAGMA integrity_check`` of a catalog, opened read-only (the WAL is read, nothing is written)."""
    uri = "file:" + str(db_path) + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        return "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))


@dataclass(frozen=True)
class CatalogState:
    """What one model's part of a catalog holds, keyed by path (surrogate-escaped str)."""

    statuses: dict[str, str]
    errors: dict[str, str]
    vectors: dict[str, np.ndarray]
    n_rows: int
    n_embeddings: int


def catalog_state(index_dir: Path, model: str) -> CatalogState:
    from img_search.catalog.catalog import fs_str

    with Catalog.in_dir(index_dir, readonly=True) as cat:
        row = cat.get_model(model)
        assert row is not None and row.dim is not None, f"no model {model} in {index_dir}"
        statuses, errors, vectors = {}, {}, {}
        n_rows = 0
        for path, status, error, digest in cat.db.execute("SELECT path, status, error, content_hash FROM images"):
            n_rows += 1
            name = fs_str(path)
            statuses[name] = status
            if error is not None:
                errors[name] = error
            if status == "ok":
                vec = cat.vector_for(row.id, digest)
                assert vec is not None, f"{name} is ok but has no vector"
                vectors[name] = vec
        n_embeddings = cat.db.execute("SELECT COUNT(*) FROM embeddings WHERE model_id = ?", (row.id,)).fetchone()[0]
    return CatalogState(statuses, errors, vectors, n_rows, int(n_embeddings))


def min_cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The lowest cosine between the vectors of the same path in ``a`` and ``b`` (which must name the same paths)."""
    assert sorted(a) == sorted(b)
    x = np.stack([a[p] for p in sorted(a)]).astype(np.float64)
    y = np.stack([b[p] for p in sorted(a)]).astype(np.float64)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(cos.min())


def check_generations(index_dir: Path, model_id: int) -> None:
    """Nothing half-written under the model's saved index: ``CURRENT`` names a generation with every file that
    loads read-only, no temporary directory or file is left, and besides it at most the previous generation, also
    complete. (It need not be in step with the catalog: a failed run may have committed more than it saved.)"""
    from img_search.index import open_reader

    root = Path(index_dir) / "vectors" / f"model-{model_id}"
    gen = read_current(root)
    assert gen is not None, f"{root / CURRENT} names no readable generation"
    others = sorted(p.name for p in root.iterdir() if p.name not in (CURRENT, gen.name))
    assert len(others) <= 1 and all(not n.startswith(".") for n in others), f"leftovers beside {gen.name}: {others}"
    for name in (gen.name, *others):
        for part in ("state.json", "ids.npy", "hashes.npy", "index"):
            assert (root / name / part).exists(), f"{root / name} lacks {part}"
    reader = open_reader(gen.backend, gen.path / "index")
    try:
        assert len(reader) == gen.count == len(gen.entries()[0])
    finally:
        close = getattr(reader, "close", None)
        if callable(close):
            close()


def check_saved_index(index_dir: Path, model: str, *, n_queries: int = 40, k: int = 10) -> str:
    """The model's saved search index is complete and agrees with exact search over the catalog's vectors.

    Asserts: ``CURRENT`` names a generation with every file (state.json, ids.npy, hashes.npy, index/); no temporary
    or half-written directory is left; at most the current and the previous generation exist; the generation holds
    exactly the catalog's live (id, content hash) pairs; and for ``n_queries`` stored vectors as queries, the saved
    index (opened read-only) returns the exact top-``k`` ids, with scores within 1e-4 of the exact cosines. Returns
    the generation's backend.
    """
    from img_search.index import open_reader

    with Catalog.in_dir(index_dir, readonly=True) as cat:
        row = cat.get_model(model)
        assert row is not None and row.dim is not None
        ids, hashes = cat.live_entries(row.id)
        vecs = cat.vectors_for_ids(row.id, row.dim, ids.tolist())
    root = Path(index_dir) / "vectors" / f"model-{row.id}"
    gen = read_current(root)
    assert gen is not None, f"{root / CURRENT} names no readable generation"
    for part in ("state.json", "ids.npy", "hashes.npy", "index"):
        assert (gen.path / part).exists(), f"{gen.path} lacks {part}"
    others = sorted(p.name for p in root.iterdir() if p.name not in (CURRENT, gen.name))
    assert len(others) <= 1 and all(not n.startswith(".") and (root / n / "state.json").exists() for n in others), \
        f"leftovers beside {gen.name}: {others}"
    saved_ids, saved_hashes = gen.entries()
    assert gen.count == len(ids)
    assert sorted(zip(saved_ids.tolist(), saved_hashes.tolist(), strict=True)) == \
        sorted(zip(ids.tolist(), hashes.tolist(), strict=True))
    reader = open_reader(gen.backend, gen.path / "index")
    try:
        rng = np.random.default_rng(0)
        picks = rng.choice(len(ids), size=min(n_queries, len(ids)), replace=False)
        unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        queries = unit[picks]
        kk = min(k, len(ids))
        found_ids, found_scores = reader.search(queries, kk)
        exact = queries @ unit.T
        for qi in range(len(picks)):
            order = np.argsort(-exact[qi], kind="stable")[:kk]
            want = ids[order]
            assert set(found_ids[qi].tolist()) == set(want.tolist()), (qi, found_ids[qi], want)
            np.testing.assert_allclose(found_scores[qi], exact[qi][order], atol=1e-4)
    finally:
        close = getattr(reader, "close", None)
        if callable(close):
            close()
    return gen.backend


# -- environments --------------------------------------------------------------------------------------------------
def is_root() -> bool:
    return os.geteuid() == 0


def no_dac_override_prefix() -> list[str]:
    """A command prefix that runs a program without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so that as root a file
    with mode 000 is unreadable as it is for any user; ``[]`` when not root (permissions already apply) or when
    setpriv cannot drop them here (then a mode-000 file stays readable, and callers must expect that)."""
    if not is_root():
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
              "-dac_override,-dac_read_search"]
    done = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if done.returncode == 0 else []


def can_read(path: Path, prefix: Sequence[str]) -> bool:
    """Whether a process started with ``prefix`` can read ``path``."""
    done = subprocess.run([*prefix, sys.executable, "-c", "import sys; open(sys.argv[1], 'rb').read(1)", str(path)],
                          capture_output=True)
    return done.returncode == 0


def resize_tmpfs(target: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(target)], check=True, capture_output=True)


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout)
    return out
