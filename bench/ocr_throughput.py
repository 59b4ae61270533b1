"""Text in images (`img-search index --ocr`): OCR images/s on photo-sized pictures with and without text.

Run: .venv/bin/python bench/ocr_throughput.py [--images 8] [--rounds 3] [--size 4000x3000]

1. Builds photo-sized JPEGs (default 4000x3000, 12 MP, a phone photo) from scikit-image's sample photographs
   (scaled up, random crops, colour shifts and sensor noise); half of them get a sign pasted in (a plate with
   "BAKERY" / "Old Town Bakery" / ... in DejaVu or Pillow's default font, text 60-250 px tall, some rotated).
2. Per picture, in this process, one thread of ONNX Runtime and then all cores: Pillow decoding (what the decode
   workers do anyway) and ``data.ocr.OcrReader`` (scale to ``OCR_MAX_SIDE``, RapidOCR detection + classification +
   recognition, line assembly): seconds per picture, images/s, CPU seconds per picture (getrusage, the figure least
   sensitive to other load on the machine). Rounds alternate the order of the configurations; medians are reported.
3. The longest-side sweep (960 / 1280 / 1600 / 2000 px) on signs of text 24-100 px tall in the same photo size:
   seconds per picture and whether the sign's word was read, to show what ``OCR_MAX_SIDE`` trades.
4. End to end: ``pipeline.runner.index_folders`` on the folder with a tiny random-weight SigLIP (so the figure is
   decoding + OCR + catalog, not embedding) with and without ``ocr=True``, default decode workers, after a warm-up
   run (graph exports, parity checks); the loop's rate (``IndexSummary.images_per_second``) and the whole run's.

JSON to bench/results/ocr_throughput.json; a Markdown summary on stdout for docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIGNS = ["BAKERY", "Old Town Bakery", "Fresh bread - bakery", "BAKERY & CAFE", "bakery open 7-19"]


def _photos() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "retina", "cat", "hubble_deep_field"):
        try:
            arr = np.asarray(getattr(data, name)())
        except Exception:
            continue
        if arr.ndim == 3 and arr.shape[2] == 3:
            out.append(arr)
    return out


def _fonts() -> list[Any]:
    paths = sorted(glob.glob("/usr/share/fonts/**/DejaVu*.ttf", recursive=True))
    return [*paths[:6], None]  # None: Pillow's bundled default font


def _font(path: str | None, size: int) -> Any:
    return ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)


def _sign(text: str, font: Any, angle: float) -> Image.Image:
    left, top, right, bottom = font.getbbox(text)
    pad = max(8, (bottom - top) // 3)
    sign = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (245, 240, 225, 255))
    ImageDraw.Draw(sign).text((pad - left, pad - top), text, font=font, fill=(30, 30, 30))
    return sign.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC) if angle else sign


def make_photo(rng: np.random.Generator, photos: list[np.ndarray], size: tuple[int, int], text: str | None,
               text_px: int, font: str | None, angle: float) -> bytes:
    """One JPEG (quality 90) of ``size``: a sample photo scaled up with a random crop, colour shift and noise, and
    optionally a sign with ``text`` about ``text_px`` tall."""
    src = photos[int(rng.integers(len(photos)))]
    h, w = src.shape[:2]
    cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = Image.fromarray(src[y : y + ch, x : x + cw]).resize(size, Image.Resampling.BICUBIC)
    arr = np.asarray(img, np.float32) * rng.uniform(0.85, 1.15, 3) + rng.normal(0, 6, (size[1], size[0], 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if text is not None:
        sign = _sign(text, _font(font, text_px), angle)
        px = int(rng.integers(0, max(1, size[0] - sign.width)))
        py = int(rng.integers(0, max(1, size[1] - sign.height)))
        img.paste(sign, (px, py), sign)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def time_reader(reader: Any, images: list[Image.Image]) -> dict[str, float]:
    t0, c0 = time.perf_counter(), _cpu()
    for n, img in enumerate(images):
        reader(img, n.to_bytes(8, "big") + os.urandom(8))
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"s_per_image": wall / len(images), "images_per_s": len(images) / wall, "cpu_s_per_image": cpu / len(images)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="pictures per kind (with text, without)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--only-e2e", action="store_true", help="only part 4 (merged into the existing JSON)")
    ap.add_argument("--e2e-workers", default="1,2", help="decode workers of the end-to-end runs")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    assert len(size) == 2

    from img_search.data.images import decode_image
    from img_search.data.ocr import OCR_MAX_SIDE, OcrReader, RapidOcrEngine

    rng = np.random.default_rng(0)
    photos, fonts = _photos(), _fonts()
    with_text = [make_photo(rng, photos, size, SIGNS[i % len(SIGNS)], int(rng.integers(60, 250)),
                            fonts[i % len(fonts)], float(rng.choice([0, 0, 8, -12]))) for i in range(args.images)]
    plain = [make_photo(rng, photos, size, None, 0, None, 0) for _ in range(args.images)]
    out = ROOT / "bench" / "results" / "ocr_throughput.json"
    workers = [int(w) for w in args.e2e_workers.split(",")]
    if args.only_e2e:
        result = json.loads(out.read_text())
        result["end_to_end"] = end_to_end(with_text[: args.images // 2] + plain[: args.images // 2], workers)
        out.write_text(json.dumps(result, indent=2) + "\n")
        report(result)
        return
    decoded = {"with text": [decode_image(b) for b in with_text], "without text": [decode_image(b) for b in plain]}
    cores = os.cpu_count() or 1
    engine_name = RapidOcrEngine(threads=1).name
    result: dict[str, Any] = {"size": list(size), "images_per_kind": args.images, "cores": cores,
                              "ocr_max_side": OCR_MAX_SIDE, "engine": engine_name, "rounds": []}

    readers = {1: OcrReader(threads=1), cores: OcrReader(threads=cores)}
    for r in readers.values():  # build the engines outside the timing
        r.engine()
    for rnd in range(args.rounds):
        row: dict[str, Any] = {}
        t0 = time.perf_counter()
        for blobs in (with_text, plain):
            for b in blobs:
                decode_image(b)
        row["decode_s_per_image"] = (time.perf_counter() - t0) / (2 * args.images)
        configs = [(threads, kind) for threads in readers for kind in decoded]
        if rnd % 2:
            configs.reverse()
        for threads, kind in configs:
            row[f"ocr {kind}, {threads} thread(s)"] = time_reader(readers[threads], decoded[kind])
        result["rounds"].append(row)
        print(f"round {rnd + 1}: " + ", ".join(f"{k}: {v['images_per_s']:.2f}/s" for k, v in row.items()
                                                 if isinstance(v, dict)), file=sys.stderr)

    # recall: read the word of every sign? (the with-text set at the default side)
    found = sum("bakery" in (readers[cores](img, os.urandom(16)) or _empty()).text.lower()
                for img in decoded["with text"])
    result["signs_read"] = {"found": found, "of": len(decoded["with text"])}

    # the longest-side sweep: cost and what is still read, per text height (in the full-size photo)
    import img_search.data.ocr as ocr_mod

    sweep: dict[str, Any] = {}
    heights = (24, 32, 48, 64, 100)
    sweep_imgs = {h: [decode_image(make_photo(np.random.default_rng(100 + h + k), photos, size, "BAKERY", h,
                                              fonts[k % len(fonts)], 0)) for k in range(3)] for h in heights}
    for side in (960, 1280, 1600, 2000):
        ocr_mod.OCR_MAX_SIDE = side
        reader = OcrReader(threads=cores)
        reader.engine()
        entry: dict[str, Any] = {}
        t0, n = time.perf_counter(), 0
        for h, imgs in sweep_imgs.items():
            ok = 0
            for img in imgs:
                text = reader(img, os.urandom(16))
                ok += text is not None and "bakery" in text.text.lower()
                n += 1
            entry[f"text {h}px read"] = f"{ok}/{len(imgs)}"
        entry["s_per_image"] = (time.perf_counter() - t0) / n
        sweep[str(side)] = entry
        print(f"side {side}: {entry}", file=sys.stderr)
    ocr_mod.OCR_MAX_SIDE = OCR_MAX_SIDE
    result["max_side_sweep"] = sweep

    if not args.skip_e2e:
        result["end_to_end"] = end_to_end(with_text[: args.images // 2] + plain[: args.images // 2], workers)

    out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)


def _empty() -> Any:
    from img_search.catalog import OcrText

    return OcrText("", None, "")


def end_to_end(blobs: list[bytes], workers: list[int]) -> dict[str, Any]:
    """``index_folders`` with a tiny SigLIP, with and without OCR, on the same files (fresh index dirs), with each
    count of decode ``workers`` (one OCR thread each: ``pipeline.ocr.ocr_threads``)."""
    from img_search.embedding import load_encoder
    from img_search.embedding.tiny import TinySpec, build_tiny_model
    from img_search.pipeline.runner import IndexOptions, index_folders

    out: dict[str, Any] = {"images": len(blobs)}
    with tempfile.TemporaryDirectory(prefix="ocr-bench-") as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for n, b in enumerate(blobs):
            (folder / f"p{n:03d}.jpg").write_bytes(b)
        model = build_tiny_model(Path(tmp) / "tiny", TinySpec(family="siglip"))
        encoder = load_encoder(str(model), device="cpu")
        warm = IndexOptions(model=str(model), read_metadata=False)  # exports and parity checks, outside the timing
        index_folders([str(folder)], Path(tmp) / "idx-warm", warm, encoder_factory=lambda: encoder)
        runs = [(f"{'with' if ocr else 'without'} --ocr, {w} worker(s)", ocr, w) for w in workers
                for ocr in (False, True)]
        for label, ocr, w in runs:
            opts = IndexOptions(model=str(model), ocr=ocr, read_metadata=False, workers=w)
            t0 = time.perf_counter()
            summary = index_folders([str(folder)], Path(tmp) / f"idx-{ocr}-{w}", opts,
                                    encoder_factory=lambda: encoder)
            wall = time.perf_counter() - t0
            out[label] = {"seconds": wall, "images_per_s": len(blobs) / wall,
                          "loop_images_per_s": summary.images_per_second,
                          "ocr": None if summary.ocr is None else vars(summary.ocr)}
            print(f"end to end {label}: {len(blobs) / wall:.2f} images/s", file=sys.stderr)
    return out


def report(result: dict[str, Any]) -> None:
    rounds = result["rounds"]
    keys = [k for k in rounds[0] if isinstance(rounds[0][k], dict)]
    decode = statistics.median(r["decode_s_per_image"] for r in rounds)
    w, h = result["size"]
    print(f"\n{w}x{h} JPEGs, {result['engine']}, OCR_MAX_SIDE {result['ocr_max_side']}, {result['cores']} cores, "
          f"medians of {len(rounds)} rounds; Pillow decode {decode * 1000:.0f} ms/picture\n")
    print("| configuration | s / picture | pictures / s | CPU s / picture | x decode time |")
    print("|---|---:|---:|---:|---:|")
    for k in keys:
        s = statistics.median(r[k]["s_per_image"] for r in rounds)
        ips = statistics.median(r[k]["images_per_s"] for r in rounds)
        cpu = statistics.median(r[k]["cpu_s_per_image"] for r in rounds)
        print(f"| {k} | {s:.2f} | {ips:.2f} | {cpu:.2f} | {s / decode:.0f}x |")
    print(f"\nsigns read: {result['signs_read']['found']}/{result['signs_read']['of']}\n")
    print("| longest side | s / picture | " + " | ".join(k for k in next(iter(result["max_side_sweep"].values()))
                                                     if k != "s_per_image") + " |")
    print("|---:|---:|" + "---:|" * (len(next(iter(result["max_side_sweep"].values()))) - 1))
    for side, e in result["max_side_sweep"].items():
        print(f"| {side} | {e['s_per_image']:.2f} | " + " | ".join(v for k, v in e.items() if k != "s_per_image")
              + " |")
    if "end_to_end" in result:
        e = result["end_to_end"]
        print(f"\nend to end (index_folders, tiny model, {e['images']} pictures):\n")
        print("| run | pictures / s in the loop | pictures / s, whole run |")
        print("|---|---:|---:|")
        for k, v in e.items():
            if isinstance(v, dict):
                print(f"| {k} | {v['loop_images_per_s']:.2f} | {v['images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
