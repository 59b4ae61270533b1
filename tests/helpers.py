"""Shared test helpers: real encoded images generated with Pillow, and the command line run as a user runs it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pattern(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A deterministic, textured RGB picture (gradients + blocks), distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = rng.uniform(0, 255, size=(1, 1, 3))
    img = base * (0.5 + 0.5 * x) * (0.6 + 0.4 * y) + rng.normal(0, 20, size=(h, w, 3))
    bx, by = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[by : by + h // 3, bx : bx + w // 3] = rng.uniform(0, 255, size=3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (96, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern(seed, size).save(path, "JPEG", quality=90)
    return path


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[None]:
    """``mount --bind source target`` for the block (we run as root); skips the test where it is not permitted."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"bind mounts are not permitted here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


CLI = (sys.executable, "-m", "img_search")


def cli(*args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 300,
        prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``img-search ARGS`` in a fresh interpreter (the user's path), ``env`` laid over this process's environment.

    ``check`` asserts exit 0 (showing stderr); ``prefix`` runs it under another command (``setpriv ...``); undecodable
    output bytes are kept as surrogates. Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    proc = subprocess.run([*prefix, *CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, errors="surrogateescape")
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``img-search ARGS`` in this process through ``img_search.cli.main``: (exit code, stdout, stderr)."""
    from img_search.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def catalog_at_version(index_dir: Path, version: int, paths: Sequence[bytes] = (b"/photos/holidays/bakery_sign.jpg",)
                       ) -> None:
    """A catalog as a release with schema ``version`` wrote it: its migrations only, model 1 ('m', 2-d), and one ok
    image per path (content hash ``bytes([i + 1]) * 16``) with the vector [1, 1]."""
    import sqlite3

    from img_search.catalog.schema import MIGRATIONS

    db = sqlite3.connect(index_dir / "catalog.sqlite3", isolation_level=None)
    for target in range(version):
        db.execute("BEGIN IMMEDIATE")
        MIGRATIONS[target](db)
        db.execute(f"PRAGMA user_version = {target + 1}")
        db.execute("COMMIT")
    db.execute("INSERT INTO models (name, family, dim, logit_scale, logit_bias, created_at) VALUES "
               "('m', 'siglip', 2, 1.0, 0.0, 0)")
    for i, path in enumerate(paths):
        digest = bytes([i + 1]) * 16
        db.execute("INSERT INTO images (path, size, mtime_ns, content_hash, status, updated_at) VALUES "
                   "(?, 1, 1, ?, 'ok', 0)", (path, digest))
        db.execute("INSERT INTO embeddings (content_hash, model_id, vector, created_at) VALUES (?, 1, ?, 0)",
                   (digest, np.ones(2, np.float32).tobytes()))
    db.close()


@contextlib.contextmanager
def tmpfs(target: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of ``size_bytes`` mounted at ``target`` for the block (needs root and mount(8); skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip(f"a size-limited tmpfs needs root (mount -t tmpfs); running as uid {os.geteuid()}")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def run_measuring_peak(code: str, *args: str) -> tuple[str, int]:
    """Run ``code`` (Python source) in a fresh interpreter with ``args``; returns (its stdout, its own peak resident
    memory in MiB). The peak is the child's VmHWM, read after ``code`` ran: ``ru_maxrss`` keeps the forking pytest
    process's peak across exec, which made every child of a big test process look big."""
    peak = "\nprint(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) // 1024)\n"
    out = subprocess.run([sys.executable, "-c", code + peak, *args], capture_output=True, text=True,
                         check=True).stdout
    body, _, last = out.rstrip("\n").rpartition("\n")
    return body, int(last)
