"""End-to-end `img-search index` throughput vs model-only forward throughput, and the no-op re-run time.

Run: .venv/bin/python bench/embed_throughput.py [--images 500] [--batch-size 32] [--noop-files 10000]

1. Builds the real google/siglip-base-patch16-224 architecture with random weights (same FLOPs as the
   real model; no download) and a folder of real-size JPEGs (1024x768, photo content from scikit-image's
   samples with random crops, flips, colour shifts and sensor noise).
2. Measures, in one run: the model alone on pre-made pixel tensors at the same batch size (before and
   after the end-to-end run, averaged, to cancel drift), and `img-search index` on the folder (a fresh
   subprocess; its embed-loop rate and its whole-process rate, start-up and model load included).
3. Builds a 10,000-file catalog with a tiny model and times a no-op `img-search index` re-run as a whole
   process (start-up included).
Figures go to stdout as a Markdown table; copy them into docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "_data"
ARCH = "google/siglip-base-patch16-224"


def photo_sources() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "retina", "immunohistochemistry",
                 "hubble_deep_field", "cat"):
        try:
            arr = np.asarray(getattr(data, name)())
        except Exception:
            continue
        if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
            out.append(arr)
    return out


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = (1024, 768)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return folder
    rng = np.random.default_rng(0)
    sources = photo_sources()
    for i in range(len(existing), n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y : y + ch, x : x + cw].astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop *= rng.uniform(0.8, 1.2, size=3)
        img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.float32) + rng.normal(0, 4, size=(size[1], size[0], 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"photo_{i:05d}.jpg", quality=90)
    return folder


def build_model(path: Path) -> Path:
    from img_search.embedding.tiny import ARCHITECTURES, build_tiny_model

    if not (path / "config.json").exists():
        build_tiny_model(path, ARCHITECTURES[ARCH])
    return path


def model_only(model_dir: Path, batch_size: int, batches: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of the model on pre-made tensors (no decode, no resize)."""
    import torch

    from img_search.embedding import load_encoder

    enc = load_encoder(str(model_dir), device="cpu")
    size = enc.processor.image_processor.size
    pixels = np.random.default_rng(0).standard_normal((batch_size, 3, size["height"], size["width"])).astype(
        np.float32)
    enc.encode_batch({"pixel_values": pixels})  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        enc.encode_batch({"pixel_values": pixels})
    n = batches * batch_size
    rate, cpu = n / (time.perf_counter() - t0), (time.process_time() - c0) / n
    del enc
    torch.set_num_threads(torch.get_num_threads())
    return rate, cpu


def run_index(folder: Path, model_dir: Path, index_dir: Path, batch_size: int, extra: list[str] | None = None
              ) -> tuple[dict, float, float]:
    """(JSON summary, wall seconds, CPU seconds of the whole process tree: CLI, decode workers, writer)."""
    cmd = [str(ROOT / ".venv" / "bin" / "img-search"), "index", str(folder), "--model", str(model_dir),
           "--index-dir", str(index_dir), "--batch-size", str(batch_size), "--json", "--quiet", *(extra or [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout), wall, cpu


def noop_rerun(n_files: int) -> tuple[float, float, dict]:
    from img_search.embedding.tiny import TinySpec, build_tiny_model

    folder = CACHE / f"noop_{n_files}"
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.rglob("*.png")))
    rng = np.random.default_rng(1)
    for i in range(have, n_files):
        sub = folder / f"{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)).save(sub / f"{i:05d}.png")
    tiny = build_tiny_model(CACHE / "tiny-siglip", TinySpec()) if not (CACHE / "tiny-siglip" / "config.json").exists() \
        else CACHE / "tiny-siglip"
    with tempfile.TemporaryDirectory() as tmp:
        _, first_s, _ = run_index(folder, tiny, Path(tmp), 64)
        times = []
        for _ in range(3):
            summary, secs, _ = run_index(folder, tiny, Path(tmp), 64)
            assert summary["embedded"] == 0 and summary["unchanged"] == n_files, summary
            times.append(secs)
    return first_s, float(np.median(times)), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model-batches", type=int, default=3, help="batches timed for the model-only figure")
    ap.add_argument("--noop-files", type=int, default=10_000)
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    if not args.skip_embed:
        folder = make_jpegs(CACHE / "jpegs_1024x768", args.images)
        files = sorted(folder.glob("*.jpg"))[: args.images]
        if len(files) < len(list(folder.glob("*.jpg"))):
            sub = CACHE / f"jpegs_{args.images}"
            sub.mkdir(exist_ok=True)
            for f in files:
                if not (sub / f.name).exists():
                    os.link(f, sub / f.name)
            folder = sub
        model_dir = build_model(CACHE / "siglip-base-random")
        before, cpu_before = model_only(model_dir, args.batch_size, args.model_batches)
        with tempfile.TemporaryDirectory() as tmp:
            summary, wall, cpu = run_index(folder, model_dir, Path(tmp), args.batch_size)
        after, cpu_after = model_only(model_dir, args.batch_size, args.model_batches)
        model_rate = (before + after) / 2
        model_cpu = (cpu_before + cpu_after) / 2
        loop_rate = summary["images_per_second"]
        rows += [
            ("model only, pre-made tensors (mean of before/after)", f"{model_rate:.2f} images/s",
             f"before {before:.2f}, after {after:.2f}"),
            ("model only, CPU time per image", f"{model_cpu:.3f} s", ""),
            ("`img-search index`, CPU time per image (whole process tree: start-up, model load, decode workers)",
             f"{cpu / summary['embedded']:.3f} s", f"{cpu:.0f} CPU-s"),
            ("ratio of CPU cost per image, model only / index (insensitive to other load on the machine)",
             f"{model_cpu / (cpu / summary['embedded']):.3f}", ""),
            ("`img-search index`, embed loop (decode workers + model + writer)", f"{loop_rate:.2f} images/s",
             f"{summary['embedded']} images, batch {args.batch_size}"),
            ("`img-search index`, whole process (start-up, scan, model load)",
             f"{summary['embedded'] / wall:.2f} images/s", f"{wall:.1f} s wall"),
            ("**ratio embed loop / model only** (target >= 0.9)", f"**{loop_rate / model_rate:.3f}**", ""),
            ("ratio whole process / model only", f"{summary['embedded'] / wall / model_rate:.3f}", ""),
        ]
    first_s, noop_s, summary = noop_rerun(args.noop_files)
    rows += [
        (f"first index of {args.noop_files:,} small files (tiny model)", f"{first_s:.1f} s", ""),
        (f"**no-op re-run over {args.noop_files:,} unchanged files, whole process** (target < 2 s)",
         f"**{noop_s:.2f} s**", "median of 3"),
    ]
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    print("| measurement | value | notes |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
