"""Cost of reading photo metadata during `img-search index`, relative to embedding (target: < 5%).

Run: .venv/bin/python bench/metadata_cost.py [--images 200] [--size 3000x2000] [--rounds 3] [--skip-index]

1. A folder of photo-sized JPEGs (default 200 at 3000x2000, photo content from scikit-image's samples as in
   bench/embed_throughput.py) each with EXIF (date and offset, GPS with altitude, make, model, lens, orientation),
   half with embedded XMP keywords, a quarter with an XMP sidecar.
2. In one process, in alternating rounds (the machine is shared: only ratios within a round are compared): the image
   tower of the real google/siglip-base-patch16-224 architecture with random weights at the precision `index` picks
   (``auto``) on pre-made pixel tensors (batch 32), and per image: decode + preprocess (what a decode worker does
   anyway), ``read_metadata(path, data, image)`` (what it adds: the decode worker's path), the same without the
   colours, and ``read_metadata(path)`` (the back-fill's path: headers plus a reduced decode for the colours).
   Wall and CPU time per image; metadata runs on one core (a decode worker), the model on all of them, so the CPU
   ratio is the share of extra work and the wall ratio what one decode worker spends against the model's pace.
3. ``index_folders`` end to end with metadata reading on and off (fresh index dirs, same encoder, alternating order),
   then the back-fill of a catalog indexed with it off (the next run: nothing embedded).
Figures go to stdout as Markdown and to bench/results/metadata_cost.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_throughput import ARCH, CACHE, build_model, photo_sources

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "metadata_cost.json"
RUNTIME_CACHE = CACHE / "runtime-cache"
XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
       'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="{rating}"><dc:subject><rdf:Bag>{items}</rdf:Bag>'
       '</dc:subject><dc:description><rdf:Alt><rdf:li xml:lang="x-default">{desc}</rdf:li></rdf:Alt>'
       '</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>')


def _dms(v: float) -> tuple[IFDRational, ...]:
    d = int(v)
    m = int((v - d) * 60)
    return IFDRational(d, 1), IFDRational(m, 1), IFDRational(round(((v - d) * 60 - m) * 6000), 100)


def _exif(i: int, rng: np.random.Generator) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Google", "Pixel 7", int(rng.integers(1, 9))
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    ifd[0x9003] = f"20{10 + i % 14:02d}:{1 + i % 12:02d}:{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00"
    ifd[0x9011], ifd[0xA434] = "+02:00", "Pixel 7 back camera 6.81mm f/1.85"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    lat, lon = rng.uniform(-60, 70), rng.uniform(-180, 180)
    gps[1], gps[2] = ("N" if lat >= 0 else "S"), _dms(abs(lat))
    gps[3], gps[4] = ("E" if lon >= 0 else "W"), _dms(abs(lon))
    gps[5], gps[6] = b"\x00", IFDRational(int(rng.integers(0, 30000)), 10)
    return exif


def make_photos(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """``n`` JPEGs of ``size`` with EXIF; even ones with embedded XMP, every fourth a sidecar (kept across runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = photo_sources()
    paths = []
    for i in range(n):
        path = folder / f"photo_{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = src[y : y + ch, x : x + cw].astype(np.float32) * rng.uniform(0.8, 1.2, size=3)
        img = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-3, 4, size=(size[1], size[0], 3), dtype=np.int16)
        keywords = "".join(f"<rdf:li>kw{i % 7}_{k}</rdf:li>" for k in range(5))
        xmp = XMP.format(rating=i % 6, items=keywords, desc=f"photo {i}").encode() if i % 2 == 0 else None
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            path, "JPEG", quality=90, exif=_exif(i, rng), **({"xmp": xmp} if xmp else {}))
        if i % 4 == 1:
            (folder / f"photo_{i:05d}.jpg.xmp").write_bytes(
                XMP.format(rating=3, items="<rdf:li>sidecar</rdf:li>", desc="from darktable").encode())
    return paths


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def per_image_round(enc, paths: list[Path], pixels: dict, batch_size: int, model_batches: int) -> dict:  # type: ignore[no-untyped-def]
    """Wall and CPU ms per image of the model (on pre-made tensors) and of each step a decode worker takes."""
    from img_search.data.images import decode_image
    from img_search.data.metadata import read_metadata

    pre = enc.image_preprocessor()
    totals: dict[str, list[float]] = {}

    def add(key: str, start: tuple[float, float]) -> tuple[float, float]:
        now = _clock()
        acc = totals.setdefault(key, [0.0, 0.0])
        acc[0] += now[0] - start[0]
        acc[1] += now[1] - start[1]
        return now

    t = _clock()
    for _ in range(model_batches):
        enc.encode_batch(pixels)
    add("model", t)
    for path in paths:  # one image in memory at a time (a 6 MP RGB image is 18 MB)
        t = _clock()
        data = path.read_bytes()
        image = decode_image(data)
        pre(image)
        t = add("decode+preprocess", t)
        read_metadata(str(path), data, image)
        t = add("metadata (worker)", t)
        read_metadata(str(path), data, image, colors=False)
        t = add("metadata without colours", t)
        read_metadata(str(path))
        add("metadata (back-fill, from the file)", t)
    counts = {k: (model_batches * batch_size if k == "model" else len(paths)) for k in totals}
    return {k: {"wall_ms": w * 1000 / counts[k], "cpu_ms": c * 1000 / counts[k]} for k, (w, c) in totals.items()}


def index_round(enc, folder: Path, model_dir: Path, batch_size: int, workers: int, read: bool) -> dict:  # type: ignore[no-untyped-def]
    from img_search.pipeline.runner import IndexOptions, index_folders

    options = IndexOptions(model=str(model_dir), batch_size=batch_size, workers=workers, read_metadata=read)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = index_folders([str(folder)], Path(tmp), options, encoder_factory=lambda: enc)
        wall = time.perf_counter() - t0
        assert not s.failed, s.failed
        out = {"read_metadata": read, "wall_s": wall, "embed_s": s.embed_seconds, "embedded": s.embedded}
        if not read:  # the next run back-fills what this one did not read
            t0 = time.perf_counter()
            again = index_folders([str(folder)], Path(tmp), IndexOptions(
                model=str(model_dir), batch_size=batch_size, workers=workers),
                encoder_factory=lambda: (_ for _ in ()).throw(AssertionError("nothing to embed")))
            out["backfill_s"], out["backfilled"] = time.perf_counter() - t0, again.metadata_read
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="3000x2000")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model-batches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="decode workers of the end-to-end runs")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--skip-index", action="store_true", help="per-image figures only")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    w, h = (int(v) for v in args.size.split("x"))
    paths = make_photos(CACHE / f"jpegs_exif_{w}x{h}", args.images, (w, h))
    model_dir = build_model(CACHE / "siglip-base-random")

    from img_search.embedding import load_encoder
    from img_search.embedding.base import collate_pixels
    from img_search.embedding.onnx_export import prepare_runtime

    enc = load_encoder(str(model_dir), device="cpu", precision=args.precision, cache_dir=RUNTIME_CACHE)
    prepare_runtime(enc)
    choice = enc.session("image").choice  # type: ignore[attr-defined]
    from img_search.data.images import decode_image

    pre = enc.image_preprocessor()
    pixels = collate_pixels([pre(decode_image(p.read_bytes())) for p in paths[: args.batch_size]])
    enc.encode_batch(pixels)  # warm-up
    rounds = []
    for r in range(args.rounds):
        got = per_image_round(enc, paths, pixels, args.batch_size, args.model_batches)
        got["loadavg"] = os.getloadavg()[0]
        rounds.append(got)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v['wall_ms']:.1f} ms" for k, v in got.items()
                                             if isinstance(v, dict)), file=sys.stderr, flush=True)
    index_runs = []
    if not args.skip_index:
        for r in range(args.rounds):
            for read in ((True, False) if r % 2 == 0 else (False, True)):
                index_runs.append(index_round(enc, paths[0].parent, model_dir, args.batch_size, args.workers, read))
                print(f"index round {r + 1}: {index_runs[-1]}", file=sys.stderr, flush=True)

    def ratio(key: str, kind: str) -> list[float]:
        return [rd[key][kind] / rd["model"][kind] for rd in rounds]

    keys = [k for k in rounds[0] if isinstance(rounds[0][k], dict)]
    print(f"\n{args.images} JPEGs {w}x{h} with EXIF (half with embedded XMP, a quarter with a sidecar); model: {ARCH} "
          f"random weights, image tower {choice.precision} on {choice.runtime}, batch {args.batch_size}; "
          f"{args.rounds} rounds, load average {statistics.mean(r['loadavg'] for r in rounds):.1f}\n")
    print("| per image | wall ms (median) | CPU ms (median) | wall / model (per round) | CPU / model (per round) |")
    print("|---|---|---|---|---|")
    for k in keys:
        wall = statistics.median(rd[k]["wall_ms"] for rd in rounds)
        cpu = statistics.median(rd[k]["cpu_ms"] for rd in rounds)
        rw = " / ".join(f"{x:.1%}" for x in ratio(k, "wall_ms"))
        rc = " / ".join(f"{x:.1%}" for x in ratio(k, "cpu_ms"))
        print(f"| {k} | {wall:.1f} | {cpu:.1f} | {rw} | {rc} |")
    if index_runs:
        on = [r for r in index_runs if r["read_metadata"]]
        off = [r for r in index_runs if not r["read_metadata"]]
        print("\n| `index` end to end | embed loop s (per run) | whole run s (per run) |")
        print("|---|---|---|")
        def col(runs: list[dict], key: str) -> str:
            return " / ".join(f"{r[key]:.1f}" for r in runs)

        for name, runs in (("metadata read in the decode workers", on), ("metadata off", off)):
            print(f"| {name} | {col(runs, 'embed_s')} | {col(runs, 'wall_s')} |")
        print(f"| back-fill run of the catalog indexed with it off ({off[0]['backfilled']} files, nothing embedded) | "
              f"- | {col(off, 'backfill_s')} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "images": args.images, "size": [w, h], "model": ARCH, "choice": f"{choice.precision} on {choice.runtime}",
        "batch_size": args.batch_size, "rounds": rounds, "index_runs": index_runs,
        "cpu_count": os.cpu_count()}, indent=1))
    print(f"\nwrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
