"""Image makers for tests: real encoded files generated with Pillow."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
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
