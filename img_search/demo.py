"""`make demo`: index a generated image folder and search it, end to end, with the default model.

Where the default checkpoint cannot be had (no Hub access and no local copy) the demo says so and
falls back to a small random-weight SigLIP built here, in its own directory (``.demo/random-siglip``)
and its own index (``.demo/index``), never cached or recorded under the real model's id. Rankings
from random weights are meaningless; the pipeline, catalog, calibration and CLI are the real ones.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from img_search.embedding import DEFAULT_MODEL

logger = logging.getLogger(__name__)

DEMO_DIR = Path(".demo")
HUB_HOST = "huggingface.co"
BANNER = (
    "\n" + "!" * 78 + "\n"
    "!! OFFLINE DEMO: {model} could not be fetched (no Hub access, no local copy).\n"
    "!! Using a RANDOM-WEIGHT SigLIP built locally in {path}: the rankings below are MEANINGLESS.\n"
    "!! The pipeline, catalog, calibration and CLI are the real ones. For real results, run where the Hub\n"
    "!! is reachable, or pass a local checkpoint: IMG_SEARCH_MODEL=/path/to/siglip make demo\n" + "!" * 78 + "\n"
)
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
           "black": (15, 15, 15), "white": (245, 245, 245), "orange": (245, 140, 20), "purple": (130, 50, 170)}
SHAPES = ("circle", "square", "triangle", "stripes")


def _draw(shape: str, fg: tuple[int, int, int], bg: tuple[int, int, int], size: tuple[int, int]) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    if shape == "circle":
        d.ellipse(box, fill=fg)
    elif shape == "square":
        d.rectangle(box, fill=fg)
    elif shape == "triangle":
        d.polygon([(w // 2, h // 5), (w // 5, 4 * h // 5), (4 * w // 5, 4 * h // 5)], fill=fg)
    else:
        for x in range(0, w, w // 8):
            d.rectangle((x, 0, x + w // 16, h), fill=fg)
    return img


def make_images(folder: Path) -> int:
    """Write the demo pictures: coloured shapes, plus scikit-image's sample photos when it is installed."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    names = list(COLOURS)
    for i, (colour, shape) in enumerate((c, s) for c in names for s in SHAPES):
        bg = COLOURS[names[(i + 3) % len(names)]]
        path = folder / "shapes" / f"{colour}-{shape}.jpg"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            _draw(shape, COLOURS[colour], bg, (640, 480)).save(path, quality=90)
        n += 1
    try:
        from skimage import data as skdata
    except ImportError:
        return n
    for name in ("astronaut", "cat", "coffee", "chelsea", "rocket", "camera", "horse", "hubble_deep_field",
                 "immunohistochemistry", "motorcycle_left", "retina", "page", "moon"):
        path = folder / "photos" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        if path.exists():
            n += 1
            continue
        try:
            arr = np.asarray(getattr(skdata, name)())
        except Exception:  # some samples need pooch downloads; skip them offline
            continue
        if arr.dtype != np.uint8:
            arr = (255 * (arr.astype(float) / max(float(arr.max()), 1.0))).astype(np.uint8)
        Image.fromarray(arr).save(path)
        n += 1
    return n


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_locally(model: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "config.json")
    return isinstance(found, str)


def choose_model() -> str:
    env_model = os.environ.get("IMG_SEARCH_MODEL")
    if env_model:
        return env_model
    if cached_locally(DEFAULT_MODEL) or hub_reachable():
        return DEFAULT_MODEL
    from img_search.embedding.tiny import TinySpec, build_tiny_model

    path = DEMO_DIR / "random-siglip"
    if not (path / "config.json").exists():
        build_tiny_model(path, TinySpec(family="siglip", image_size=64, patch_size=16, hidden_size=64,
                                        intermediate_size=128, max_text_length=64))
    sys.stderr.write(BANNER.format(model=DEFAULT_MODEL, path=path.resolve()))
    return str(path.resolve())


def run(args: list[str]) -> None:
    exe = Path(sys.executable).with_name("img-search")
    cmd = [str(exe), *args]
    sys.stderr.write(f"\n$ {shlex.join(['img-search', *args])}\n")
    sys.stderr.flush()
    subprocess.run(cmd, check=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    images = DEMO_DIR / "images"
    n = make_images(images)
    logger.info("demo folder %s holds %d images", images.resolve(), n)
    model = choose_model()
    index_dir = str((DEMO_DIR / "index").resolve())
    common = ["--index-dir", index_dir]
    run(["index", str(images.resolve()), "--model", model, *common])
    run(["search", "a red circle", "--limit", "5", *common])
    run(["search", "a photo of a cat", "--limit", "5", *common])
    run(["similar", str((images / "shapes" / "blue-square.jpg").resolve()), "--limit", "5", *common])
    run(["info", *common])


if __name__ == "__main__":
    main()
