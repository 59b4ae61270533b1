"""Shared test helpers: real encoded images generated with Pillow, and the command line run as a user runs it."""

from __future__ import annotations

import contextlib
import os
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
