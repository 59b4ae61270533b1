"""Crash driver: run `img-search index` again and again and SIGKILL it at seeded random points.

Usage: ``python crash_driver.py CONFIG.json``. Prints one JSON line per attempt, then one ``{"done": ...}`` line.

Starting a fresh interpreter costs seconds (torch, transformers), so the driver imports them once and forks each
`index` run from itself (a zygote): the child is a complete `img-search index` process (``img_search.cli.main`` with
the same argv, its own catalog connection, writer lock, writer thread and decode worker processes) and is killed
with SIGKILL like any other. Nothing torch-related runs in the driver before a fork.

Each attempt draws from ``random.Random(seed)`` (so a failure reproduces with the seed it prints):

* ``timed``: SIGKILL after a uniform delay over the length of an uninterrupted run (lands in start-up, model load,
  planning, embedding, the saved index's sync, or not at all).
* ``point``: the child stops itself (SIGSTOP) at the n-th occurrence of one event and the driver SIGKILLs it there:
  inside a catalog transaction before or after its COMMIT (a batch of vectors, the run's bookkeeping, migrations),
  before the n-th model forward (earlier batches still queued in the writer thread), or inside the saved search
  index's sync (before its fsync, before the generation's rename, before or after CURRENT is switched, before old
  generations are pruned, or before any ``os.replace`` / ``os.fsync`` of the run: runtime cache, CURRENT).

Attempts alternate between an incremental run and ``--recompute`` (which re-embeds and overwrites every vector), so
there is work for a kill to land in until the end. After every kill, a forked checker verifies ``PRAGMA
integrity_check`` and that a search still works and finds a stored vector's own image first; the decode workers of
the killed run must be gone within 15 s.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

POINT_HOOKS = {
    # event -> the largest n drawn (the attempt is killed at the n-th occurrence, if the run gets that far)
    "before-commit": 40,
    "after-commit": 40,
    "before-encode": 30,
    "before-fsync-tree": 1,
    "before-rename": 1,
    "before-current": 1,
    "after-current": 1,
    "before-prune": 1,
    "before-os-replace": 3,
    "before-os-fsync": 4,
}


def _stop_self() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


def install_hook(name: str, n: int) -> None:
    """In the child: stop this process at the n-th occurrence of event ``name``."""
    count = [0]

    def hit() -> None:
        count[0] += 1
        if count[0] == n:
            _stop_self()

    if name in ("before-commit", "after-commit"):
        from img_search.catalog.catalog import Catalog

        original = Catalog.transaction

        @contextmanager
        def transaction(self: Any) -> Iterator[Any]:
            with original(self) as db:
                yield db
                if name == "before-commit":
                    hit()
            if name == "after-commit":
                hit()

        Catalog.transaction = transaction  # type: ignore[method-assign]
    elif name == "before-encode":
        import img_search.pipeline.loop as loop

        run_loop = loop.run_loop

        class Stopping:
            def __init__(self, inner: Any) -> None:
                self._inner = inner

            def __getattr__(self, attr: str) -> Any:
                return getattr(self._inner, attr)

            def encode_batch(self, pixels: Any) -> Any:
                hit()
                return self._inner.encode_batch(pixels)

        def wrapped(sources: Any, loader: Any, encoder: Any, *args: Any, **kw: Any) -> Any:
            return run_loop(sources, loader, Stopping(encoder), *args, **kw)

        loop.run_loop = wrapped  # type: ignore[assignment]
    elif name in ("before-fsync-tree", "before-current", "after-current", "before-prune", "before-rename"):
        import img_search.search.store as store

        def before(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any, **kw: Any) -> Any:
                hit()
                return fn(*a, **kw)
            return call

        def after(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any, **kw: Any) -> Any:
                out = fn(*a, **kw)
                hit()
                return out
            return call

        if name == "before-fsync-tree":
            store.fsync_tree = before(store.fsync_tree)  # type: ignore[assignment]
        elif name == "before-current":
            store.write_atomic = before(store.write_atomic)  # type: ignore[assignment]
        elif name == "after-current":
            store.write_atomic = after(store.write_atomic)  # type: ignore[assignment]
        elif name == "before-prune":
            store.VectorStore._prune = before(store.VectorStore._prune)  # type: ignore[method-assign]
        else:
            original_rename = Path.rename

            def rename(self: Path, target: Any) -> Any:
                if "vectors" in str(self):
                    hit()
                return original_rename(self, target)

            Path.rename = rename  # type: ignore[method-assign]
    elif name == "before-os-replace":
        replace = os.replace

        def os_replace(*a: Any, **kw: Any) -> None:
            hit()
            replace(*a, **kw)

        os.replace = os_replace
    elif name == "before-os-fsync":
        fsync = os.fsync

        def os_fsync(fd: Any) -> None:
            hit()
            fsync(fd)

        os.fsync = os_fsync
    else:
        raise ValueError(name)


def child(argv: list[str], env: dict[str, str], hook: tuple[str, int] | None, log: Path) -> None:
    """The forked `img-search index`; never returns."""
    code = 70
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(env)
        if hook is not None:
            install_hook(*hook)
        from img_search.cli import main

        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def check_after_kill(index_dir: Path, model: str, ann_threshold: int) -> dict[str, Any]:
    """In a forked checker: integrity_check, and a search by a stored vector (through the saved index, as `index`
    saved it with ``ann_threshold``) finds that vector's image first."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        out: dict[str, Any] = {}
        try:
            import sqlite3

            import numpy as np

            db_path = index_dir / "catalog.sqlite3"
            if not db_path.exists():
                out["state"] = "no catalog yet"
            else:
                with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as db:
                    out["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
                from img_search.catalog import Catalog
                from img_search.search.collection import Collection

                with Catalog.in_dir(index_dir, readonly=True) as cat:
                    row = cat.get_model(model)
                    ids, vecs = (cat.load_vectors(row.id, row.dim) if row is not None and row.dim
                                 else (np.empty(0), None))
                out["vectors"] = len(ids)
                if len(ids):
                    from img_search.settings import SearchSettings

                    collection = Collection.open(index_dir, model, SearchSettings(ann_threshold=ann_threshold))
                    try:
                        pick = len(ids) // 2
                        hits = collection.search(vecs[pick][None, :], limit=3)[0]  # type: ignore[index]
                        out["search_ok"] = bool(hits) and hits[0][0].id == int(ids[pick]) and \
                            abs(hits[0][1] - 1.0) < 1e-4
                        out["collection"] = len(collection)
                        out["backend"] = collection.backend
                        out["generation"] = collection.generation
                    finally:
                        collection.close()
        except BaseException as exc:  # reported, never raised: the driver decides
            out["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while True:
        chunk = os.read(read, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    return result


def ok_images(index_dir: Path) -> int:
    """How many images the catalog holds as indexed (0 before it exists)."""
    import sqlite3

    db_path = index_dir / "catalog.sqlite3"
    if not db_path.exists():
        return 0
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM images WHERE status = 'ok'").fetchone()[0])
        except sqlite3.OperationalError:  # killed before the schema was created
            return 0


def run_attempt(argv: list[str], env: dict[str, str], plan: dict[str, Any], log: Path) -> dict[str, Any]:
    hook = (plan["hook"], plan["n"]) if plan["mode"] == "point" else None
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(argv, env, hook, log)
    out: dict[str, Any] = {"killed": False}
    deadline = t0 + plan["delay"] if plan["mode"] == "timed" else None
    workers: list[Any] = []
    while True:
        done, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        if done:
            if os.WIFSTOPPED(status):  # reached its crash point
                workers = descendants(pid)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                out["killed"] = True
            else:
                out["exit"] = os.waitstatus_to_exitcode(status)
            break
        if deadline is not None and time.monotonic() >= deadline:
            workers = descendants(pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            out["killed"] = True
            break
        time.sleep(0.002)
    out["seconds"] = round(time.monotonic() - t0, 3)
    if workers:
        import psutil

        _, alive = psutil.wait_procs(workers, timeout=15)
        out["orphans"] = [p.pid for p in alive]
        for p in alive:
            p.kill()
    return out


def draw_plan(rng: random.Random, attempt: int, run_seconds: float, filling: bool) -> dict[str, Any]:
    """The next attempt. While the catalog is still filling (``filling``), incremental runs killed after a few
    commits or forwards, so that the first indexing of the folder is spread over several killed runs; then a mix
    with ``--recompute`` (every vector written again) and every crash point."""
    plan: dict[str, Any] = {"attempt": attempt, "workers": rng.choice([0, 1]), "filling": filling}
    plan["recompute"] = False if filling else rng.random() < 0.8
    if attempt == 0 or (not filling and rng.random() < 0.4):
        plan["mode"] = "timed"  # attempt 0: a cold runtime cache, so this lands in start-up or the graphs' export
        plan["delay"] = round(rng.uniform(0.05, run_seconds), 3)
    elif filling:  # a kill after a few commits (a batch each, or the run's bookkeeping) or forwards
        plan["mode"] = "point"
        plan["hook"] = rng.choice(["before-commit", "after-commit", "before-encode"])
        plan["n"] = rng.randint(4, 30)
    else:
        plan["mode"] = "point"
        plan["hook"] = rng.choice(sorted(POINT_HOOKS))
        plan["n"] = rng.randint(1, POINT_HOOKS[plan["hook"]])
    return plan


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    t_start = time.monotonic()
    # warm the zygote: what `index` imports, imported once (nothing is run)
    import onnxruntime  # noqa: F401
    import psutil  # noqa: F401
    import torch  # noqa: F401
    import transformers
    import transformers.models.siglip.modeling_siglip  # noqa: F401
    from transformers import AutoModel, AutoProcessor  # noqa: F401

    import img_search.cli
    import img_search.pipeline.runner
    import img_search.search.store  # noqa: F401

    def emit(record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()

    emit({"warm_seconds": round(time.monotonic() - t_start, 3)})
    logs = Path(cfg["logs"])
    logs.mkdir(parents=True, exist_ok=True)
    base = ["index", cfg["photos"], "--model", cfg["model"], "--batch-size", str(cfg["batch_size"]),
            "--precision", cfg["precision"], "--quiet"]
    env = dict(cfg["env"])

    # the clean reference run, uninterrupted, into its own index dir
    clean = run_attempt([*base, "--index-dir", cfg["clean_index_dir"], "--workers", "0", "--json"],
                        {**env, "XDG_CACHE_HOME": cfg["clean_cache"]}, {"mode": "clean"}, logs / "clean.log")
    emit({"clean": clean})
    if clean.get("exit") != 0:
        emit({"done": False, "reason": "the clean run failed"})
        return

    rng = random.Random(cfg["seed"])
    kills = 0
    filling = True
    env = {**env, "XDG_CACHE_HOME": cfg["crash_cache"]}  # a cold runtime cache: early kills land in its export
    for attempt in range(cfg["max_attempts"]):
        if kills >= cfg["kills"]:
            break
        plan = draw_plan(rng, attempt, cfg.get("run_seconds") or max(clean["seconds"], 0.5), filling)
        argv = [*base, "--index-dir", cfg["index_dir"], "--workers", str(plan["workers"])]
        if plan["recompute"]:
            argv.append("--recompute")
        result = run_attempt(argv, env, plan, logs / f"attempt-{attempt:03d}.log")
        record = {**plan, **result}
        if result["killed"]:
            kills += 1
            record["check"] = check_after_kill(Path(cfg["index_dir"]), cfg["model"],
                                               int(env.get("IMG_SEARCH_SEARCH__ANN_THRESHOLD", "20000")))
        filling = filling and ok_images(Path(cfg["index_dir"])) < cfg["n_images"]
        emit(record)
    emit({"done": True, "kills": kills, "seconds": round(time.monotonic() - t_start, 3)})


if __name__ == "__main__":
    main()
