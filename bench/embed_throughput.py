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

Reduced-scale JPEG decoding vs full: .venv/bin/python bench/embed_throughput.py --decode-parity [--images 64]
(CPU per image of read + decode + processor, the processor's pixel difference and the embeddings' cosine to the full
decode, float32 torch on the base architecture, 1024x768 and 12 MP JPEGs; JSON to bench/results/decode_parity.json).

Per precision: .venv/bin/python bench/embed_throughput.py --precision fp32@torch,fp32,bf16,int8,auto [--rounds 3]

Each comma-separated entry is a precision as `img-search index --precision` takes it (the runtime then chosen by the
library, e.g. fp32 -> ONNX Runtime here) or PRECISION@RUNTIME to force one (fp32@torch is plain float32
`transformers`, the reference of issue 8's "2.5x plain float32"). Every entry gets its own worker process, which
loads the encoder once (exporting / parity-checking its graphs into bench/_data/runtime-cache beforehand, outside the
timing) and then, on each request of the driver, either runs the model alone on pre-made tensors (the first
``--batch-size`` photos of the folder through the checkpoint's processor, ``--model-batches`` batches) or runs the real
pipeline on the folder: ``pipeline.runner.index_folders`` (scan, plan, decode workers forked by the DataLoader,
``encoder.encode_batch``, the catalog writer thread, the saved index's sync) into a fresh index directory, the encoder
factory loading a second copy of the encoder from the same runtime cache as `index` does (the decode workers start
before it: ``pipeline.loop.EarlyStart``), so the overlap of the first batches' decoding with the model load is
what a real run gets. The images/s of the run is the pipeline's own embed-loop rate
(``IndexSummary.images_per_second``), its CPU seconds those of the embed loop (``LoopClock``: the worker process and
its joined decode workers, from getrusage). The ratio end to end / model only splits into the share of the loop
during which the model computes (``TimedEncoder``: the rest is waiting for decoded batches, or the writer) times the
model's speed inside the loop relative to alone (below 1 when the decode workers take cores from it). Also reported:
the ratio without the loop's wait for its first decoded batch (a fixed ~0.5 s that a run of thousands of photos
amortises but a short benchmark run does not). The driver asks the workers in turn, round after round (order rotated
each round; the model-only figure of a round is the mean of one run just before and one just after the end-to-end
run, which cancels a steady drift of the load), so the machine's load hits both alike; the ratios (end-to-end /
model-only of the same worker, and each figure / fp32@torch's) are taken within a round and reported as medians with
their range. The CPU seconds per
image (model only / embed loop) are the figures least sensitive to other load: on a busy machine the decode worker is
one more runnable thread competing for the machine, which flatters the wall-clock ratio. JSON to
bench/results/embed_throughput_precision.json.
"""

from __future__ import annotations

import argparse
import contextlib
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
    """(images/s, CPU seconds per image) of the model on pre-made tensors (no decode, no resize), at the precision
    `img-search index` uses by default (``auto``, from the same runtime cache: ``$XDG_CACHE_HOME/img-search``)."""
    import torch

    from img_search.embedding import load_encoder

    enc = load_encoder(str(model_dir), device="cpu", precision="auto")
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


# -- per precision: end to end vs model only ----------------------------------------------------------------------
RESULTS = ROOT / "bench" / "results"
RUNTIME_CACHE = CACHE / "runtime-cache"


def parse_variant(spec: str) -> tuple[str, str]:
    """``PRECISION`` or ``PRECISION@RUNTIME`` (optionally ``/OPTION...``, see ``variant_options``) -> (precision,
    runtime or "auto")."""
    precision, _, runtime = spec.split("/")[0].partition("@")
    return precision, runtime or "auto"


def variant_options(spec: str, workers: int) -> tuple[int, bool]:
    """A spec's ``/`` options -> (decode workers, decode gate on). ``/wN``: N decode workers instead of the run's;
    ``/ungated``: the decode workers run beside the model as before issue 8's gate (``reader.DecodeGate``), for an
    A/B of the gate in one run."""
    gated = True
    for option in spec.split("/")[1:]:
        if option == "ungated":
            gated = False
        elif option.startswith("w") and option[1:].isdigit():
            workers = int(option[1:])
        else:
            raise SystemExit(f"{spec}: unknown variant option {option!r} (wN | ungated)")
    return workers, gated


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the decode workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class LoopClock:
    """A ``pipeline.progress.Progress`` that reads the CPU clock when the embed loop starts (after the decode workers
    fork) and stops (after they are joined, so their CPU time is in RUSAGE_CHILDREN): the loop's own CPU seconds,
    without the run's start-up, parity lookup and index sync."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self._c0 = 0.0
        self.started = 0.0  # perf_counter when the loop started

    def start(self, total: int, description: str) -> None:
        self._c0 = _cpu_seconds()
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        pass

    def stop(self) -> None:
        self.cpu = _cpu_seconds() - self._c0


class TimedEncoder:
    """The loaded encoder, with the seconds spent inside ``encode_batch`` counted: the share of the embed loop the
    model computes (the rest is the model waiting for decoded batches, or the writer) and the model's own speed
    while the decode workers run beside it."""

    def __init__(self, encoder: object) -> None:
        self._encoder = encoder
        self.seconds = 0.0
        self.images = 0
        self.first_call: float | None = None  # perf_counter of the first batch's arrival

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoder, name)

    def encode_batch(self, batch: dict) -> np.ndarray:
        t = time.perf_counter()
        if self.first_call is None:
            self.first_call = t
        out = self._encoder.encode_batch(batch)  # type: ignore[attr-defined]
        self.seconds += time.perf_counter() - t
        self.images += len(out)
        return out


def precision_worker(spec: str, model_dir: Path, folder: Path, batch_size: int, workers: int) -> None:
    """One variant: load it, then answer the driver's requests on stdin ("model N" | "e2e") with a JSON line."""
    import logging

    from img_search.data.folder import FileEntry
    from img_search.data.images import DECODE_FULL, reduced_decode_side, reduced_mode
    from img_search.embedding import load_encoder
    from img_search.embedding.base import collate_pixels
    from img_search.embedding.onnx_export import prepare_runtime
    from img_search.pipeline.reader import FileLoader
    from img_search.pipeline.runner import IndexOptions, index_folders

    logging.basicConfig(level=logging.WARNING)
    precision, runtime = parse_variant(spec)
    workers, gated = variant_options(spec, workers)
    if not gated:
        from img_search.pipeline import loop

        class Ungated(loop.DecodeGate):
            def model_turn(self):  # type: ignore[no-untyped-def,override]
                return contextlib.nullcontext()

        loop.DecodeGate = Ungated  # type: ignore[misc]
    t0 = time.perf_counter()
    enc = load_encoder(str(model_dir), device="cpu", precision=precision, runtime=runtime, cache_dir=RUNTIME_CACHE)
    prepare_runtime(enc)  # exports, parity checks, text assets: what `index` does before embedding (cached after)
    choice = enc.session("image").choice  # type: ignore[attr-defined]
    load_s = time.perf_counter() - t0
    files = sorted(folder.glob("*.jpg"))
    pre = enc.image_preprocessor()
    decode_cpu = {}
    for mode in (DECODE_FULL, reduced_mode()):  # read + decode + the checkpoint's processor, per image
        loader = FileLoader(min_side=reduced_decode_side(pre.input_side, mode))  # type: ignore[attr-defined]
        c0 = time.process_time()
        items = [pre(loader(FileEntry(str(f), f.stat().st_size, f.stat().st_mtime_ns)).image)
                 for f in files[:batch_size]]
        decode_cpu[mode] = (time.process_time() - c0) / len(items)
    pixels = collate_pixels(items)
    enc.encode_batch(pixels)  # warm-up
    print(json.dumps({"choice": f"{choice.precision} on {choice.runtime}", "load_s": load_s,
                      "decode_cpu_per_image": decode_cpu}), flush=True)
    options = IndexOptions(model=str(model_dir), batch_size=batch_size, workers=workers)
    for line in sys.stdin:
        cmd = line.split()
        t, c = time.perf_counter(), _cpu_seconds()
        if cmd[0] == "model":
            n = int(cmd[1])
            for _ in range(n):
                enc.encode_batch(pixels)
            wall, cpu = time.perf_counter() - t, _cpu_seconds() - c
            out = {"rate": n * batch_size / wall, "cpu_per_image": cpu / (n * batch_size), "wall": wall}
        else:
            clock, made = LoopClock(), []

            def factory(made: list[TimedEncoder] = made) -> TimedEncoder:
                # loads the encoder as `index` does (the decode workers start before it)
                made.append(TimedEncoder(load_encoder(str(model_dir), device="cpu", precision=precision,
                                                      runtime=runtime, cache_dir=RUNTIME_CACHE)))
                return made[-1]

            with tempfile.TemporaryDirectory() as tmp:
                summary = index_folders([str(folder)], Path(tmp), options, encoder_factory=factory, progress=clock)
            wall, cpu = time.perf_counter() - t, _cpu_seconds() - c
            assert summary.embedded == len(files) and not summary.failed, summary
            timed = made[-1]
            fill = (timed.first_call or clock.started) - clock.started  # waiting for the first decoded batch
            out = {"rate": summary.images_per_second, "cpu_per_image": clock.cpu / summary.embedded,
                   "run_cpu_per_image": cpu / summary.embedded, "wall": wall, "embed_s": summary.embed_seconds,
                   "encode_s": timed.seconds, "fill_s": fill,
                   "steady_rate": summary.embedded / (summary.embed_seconds - fill),
                   "model_busy": timed.seconds / summary.embed_seconds,
                   "model_busy_steady": timed.seconds / (summary.embed_seconds - fill),
                   "model_rate_in_loop": timed.images / timed.seconds, "precision": summary.precision,
                   "decode": summary.decode}
            del made, timed
        out["loadavg"] = os.getloadavg()[0]
        print(json.dumps(out), flush=True)


def compare_precisions(specs: list[str], folder: Path, model_dir: Path, batch_size: int, model_batches: int,
                       rounds: int, workers: int) -> dict:
    """Start one worker per spec, then ``rounds`` rounds of (model only, end to end, model only) per worker."""
    procs: dict[str, subprocess.Popen[str]] = {}
    starts: dict[str, dict] = {}
    for spec in specs:
        cmd = [sys.executable, "-W", "ignore", __file__, "--worker", spec, str(model_dir), str(folder),
               str(batch_size), str(workers)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"{spec}: worker failed to start (see its stderr above)")
        procs[spec], starts[spec] = proc, json.loads(line)
        print(f"{spec}: {starts[spec]['choice']}, loaded in {starts[spec]['load_s']:.0f} s", file=sys.stderr,
              flush=True)

    def ask(spec: str, request: str) -> dict:
        proc = procs[spec]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(request + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    runs: dict[str, list[dict]] = {spec: [] for spec in specs}
    for r in range(rounds):
        for spec in specs[r % len(specs):] + specs[: r % len(specs)]:
            time.sleep(0.5)  # let the previous worker's threads go idle
            before = ask(spec, f"model {model_batches}")
            time.sleep(0.5)
            e2e = ask(spec, "e2e")
            time.sleep(0.5)
            after = ask(spec, f"model {model_batches}")
            model = {key: (before[key] + after[key]) / 2 for key in ("rate", "cpu_per_image", "wall")}
            runs[spec].append({"model": model, "e2e": e2e, "model_before": before, "model_after": after})
            print(f"round {r + 1} {spec}: model {before['rate']:.2f} / {after['rate']:.2f}, end to end "
                  f"{e2e['rate']:.2f} images/s (steady {e2e['steady_rate']:.2f}; load {e2e['loadavg']:.1f})",
                  file=sys.stderr, flush=True)
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    base = specs[0]
    rows = {}
    for spec in specs:
        res = runs[spec]
        med = lambda xs: float(np.median(xs))  # noqa: E731
        e2e_ratio = [x["e2e"]["rate"] / x["model"]["rate"] for x in res]
        vs_base_e2e = [x["e2e"]["rate"] / b["e2e"]["rate"] for x, b in zip(res, runs[base], strict=True)]
        vs_base_model = [x["model"]["rate"] / b["model"]["rate"] for x, b in zip(res, runs[base], strict=True)]
        cpu_ratio = [x["model"]["cpu_per_image"] / x["e2e"]["cpu_per_image"] for x in res]
        busy = [x["e2e"]["model_busy"] for x in res]
        steady_ratio = [x["e2e"]["steady_rate"] / x["model"]["rate"] for x in res]
        vs_base_steady = [x["e2e"]["steady_rate"] / b["e2e"]["steady_rate"] for x, b in zip(res, runs[base],
                                                                                              strict=True)]
        in_loop = [x["e2e"]["model_rate_in_loop"] / x["model"]["rate"] for x in res]
        rows[spec] = {
            **starts[spec],
            "model_rate": [x["model"]["rate"] for x in res], "e2e_rate": [x["e2e"]["rate"] for x in res],
            "e2e_over_model": e2e_ratio, "e2e_over_model_median": med(e2e_ratio),
            "e2e_vs_base": vs_base_e2e, "e2e_vs_base_median": med(vs_base_e2e),
            "model_vs_base": vs_base_model, "model_vs_base_median": med(vs_base_model),
            "model_cpu_per_image": med([x["model"]["cpu_per_image"] for x in res]),
            "e2e_cpu_per_image": med([x["e2e"]["cpu_per_image"] for x in res]),
            "cpu_ratio": cpu_ratio, "cpu_ratio_median": med(cpu_ratio), "model_busy": busy,
            "model_busy_median": med(busy), "steady_over_model": steady_ratio,
            "steady_over_model_median": med(steady_ratio), "steady_vs_base": vs_base_steady,
            "steady_vs_base_median": med(vs_base_steady),
            "fill_s_median": med([x["e2e"]["fill_s"] for x in res]), "in_loop_over_alone": in_loop,
            "in_loop_over_alone_median": med(in_loop),
            "runs": res,
        }
    return rows


def precision_table(rows: dict, base: str) -> str:
    def rng(xs: list[float]) -> str:
        return f"{min(xs):.2f}-{max(xs):.2f}"

    head = ("| variant | runs as | model only, images/s (median; per round) | end to end, images/s (median; per round) "
            "| **end to end / model only** (median, range) | the same without the wait for the first batch "
            "| = model busy in the loop x its speed there / alone | CPU-s per image: model / embed loop (ratio) "
            f"| end to end vs {base} (median, range) | model only vs {base} |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for spec, r in rows.items():
        lines.append(
            f"| {spec} | {r['choice']} | {np.median(r['model_rate']):.2f} "
            f"({', '.join(f'{x:.1f}' for x in r['model_rate'])}) | {np.median(r['e2e_rate']):.2f} "
            f"({', '.join(f'{x:.1f}' for x in r['e2e_rate'])}) | **{r['e2e_over_model_median']:.3f}** "
            f"({rng(r['e2e_over_model'])}) | {r['steady_over_model_median']:.3f} ({rng(r['steady_over_model'])}) "
            f"| {r['model_busy_median']:.3f} x {r['in_loop_over_alone_median']:.3f} "
            f"| {r['model_cpu_per_image']:.3f} / {r['e2e_cpu_per_image']:.3f} "
            f"({r['cpu_ratio_median']:.3f}) | {r['e2e_vs_base_median']:.2f} ({rng(r['e2e_vs_base'])}) "
            f"| {r['model_vs_base_median']:.2f} |")
    return "\n".join(lines)


def jpeg_folder(n: int, size: tuple[int, int] = (1024, 768)) -> Path:
    """A folder holding exactly ``n`` of the benchmark JPEGs of ``size`` pixels (hard links into the shared pool)."""
    tag = f"{size[0]}x{size[1]}"
    folder = make_jpegs(CACHE / f"jpegs_{tag}", n, size)
    files = sorted(folder.glob("*.jpg"))[:n]
    if len(files) < len(list(folder.glob("*.jpg"))):
        sub = CACHE / (f"jpegs_{n}" if size == (1024, 768) else f"jpegs_{tag}_{n}")
        sub.mkdir(exist_ok=True)
        for f in files:
            if not (sub / f.name).exists():
                os.link(f, sub / f.name)
        folder = sub
    return folder


def big_jpegs(n: int, size: tuple[int, int] = (4032, 3024)) -> Path:
    """``n`` 12 MP JPEGs (a phone camera's size), made like ``make_jpegs``'s; some carry an EXIF orientation (6: the
    camera held upright), so the reduced decode's orientation path is measured too."""
    folder = make_jpegs(CACHE / f"jpegs_{size[0]}x{size[1]}", n, size)
    for i, f in enumerate(sorted(folder.glob("*.jpg"))[:n]):
        if i % 4 == 3:
            with Image.open(f) as im:
                if im.getexif().get(0x0112):
                    continue
                exif = im.getexif()
                exif[0x0112] = 6
                pixels = im.copy()
            pixels.save(f, quality=90, exif=exif)
    return folder


def decode_parity(model_dir: Path, n: int, factors: tuple[int, ...] = (1, 2)) -> dict:
    """Reduced-scale JPEG decoding against the full decode, per factor: CPU ms per image of read + decode + the
    checkpoint's processor, the processor's output difference (mean / max |difference| on its [-1, 1] scale) and the
    embeddings' cosine (float32 torch, the SigLIP-base architecture) to the full decode's, on 1024x768 and 12 MP JPEGs.
    """
    from img_search.data.images import DECODE_FULL, decode_image, read_file, reduced_decode_side, reduced_mode
    from img_search.embedding import load_encoder
    from img_search.embedding.base import collate_pixels

    enc = load_encoder(str(model_dir), device="cpu", precision="fp32", runtime="torch")
    pre = enc.image_preprocessor()  # type: ignore[attr-defined]
    side = pre.input_side
    out: dict = {"input_side": side, "sets": {}, "loadavg_before": os.getloadavg()}
    for name, folder in (("1024x768", jpeg_folder(n)), ("4032x3024", big_jpegs(n))):
        files = sorted(folder.glob("*.jpg"))[:n]
        blobs = [read_file(str(f)) for f in files]
        rows: dict = {}
        ref_pixels = ref_vecs = None
        for mode in (DECODE_FULL, *(reduced_mode(k) for k in factors)):
            min_side = reduced_decode_side(side, mode)
            for _ in range(2):  # the second pass is timed (warm caches)
                c0 = time.process_time()
                images = [decode_image(b, min_side=min_side) for b in blobs]
                c1 = time.process_time()
                items = [pre(im) for im in images]
                c2 = time.process_time()
            pixels = collate_pixels(items)["pixel_values"]
            vecs = np.concatenate([enc.encode_batch({"pixel_values": pixels[i:i + 16]})
                                   for i in range(0, len(pixels), 16)])
            if ref_pixels is None:
                ref_pixels, ref_vecs = pixels, vecs
            diff = np.abs(pixels - ref_pixels)
            cos = np.sum(vecs * ref_vecs, axis=1)
            rows[mode] = {"decoded_size": list(images[0].size), "decode_ms": 1000 * (c1 - c0) / len(blobs),
                          "processor_ms": 1000 * (c2 - c1) / len(blobs), "pixel_mean_abs": float(diff.mean()),
                          "pixel_max_abs": float(diff.max()), "min_cosine": float(cos.min()),
                          "mean_cosine": float(cos.mean())}
            print(f"{name} {mode}: {rows[mode]}", file=sys.stderr, flush=True)
        out["sets"][name] = rows
    out["loadavg_after"] = os.getloadavg()
    return out


def decode_table(result: dict) -> str:
    lines = ["| JPEGs | decode | decoded at | CPU ms per image: decode + processor | pixel difference to full, mean / "
             "max | embedding cosine to full, min / mean |", "|---|---|---|---|---|---|"]
    for name, rows in result["sets"].items():
        for mode, r in rows.items():
            lines.append(f"| {name} | {mode} | {r['decoded_size'][0]}x{r['decoded_size'][1]} | "
                         f"{r['decode_ms'] + r['processor_ms']:.1f} ({r['decode_ms']:.1f} + {r['processor_ms']:.1f}) | "
                         f"{r['pixel_mean_abs']:.4f} / {r['pixel_max_abs']:.3f} | "
                         f"{r['min_cosine']:.6f} / {r['mean_cosine']:.6f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        spec, model_dir, folder, batch, workers = sys.argv[2:7]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        precision_worker(spec, Path(model_dir), Path(folder), int(batch), int(workers))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=None,
                    help="JPEGs embedded per end-to-end run [default: 500; with --precision 96]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model-batches", type=int, default=3,
                    help="batches timed for the model-only figure (with --precision: before and after each "
                         "end-to-end run)")
    ap.add_argument("--noop-files", type=int, default=10_000)
    ap.add_argument("--skip-embed", action="store_true")
    ap.add_argument("--precision", default=None,
                    help="compare end to end with model only per precision instead: comma-separated PRECISION or "
                         "PRECISION@RUNTIME (the first is the reference of the ratios), e.g. fp32@torch,fp32,bf16,int8,"
                         "auto")
    ap.add_argument("--rounds", type=int, default=3, help="with --precision: rounds over the variants")
    ap.add_argument("--workers", type=int, default=None, help="decode workers [default: the pipeline's default]")
    ap.add_argument("--size", default="1024x768", help="with --precision: the JPEGs' WIDTHxHEIGHT in pixels "
                    "[default: 1024x768; 4032x3024 is a phone camera's 12 MP]")
    ap.add_argument("--decode-parity", action="store_true",
                    help="reduced-scale JPEG decoding vs full: CPU, pixel difference, embedding cosine (--images "
                         "JPEGs of each size, default 64)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.decode_parity:
        result = decode_parity(build_model(CACHE / "siglip-base-random"), args.images or 64)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "decode_parity.json").write_text(json.dumps(result, indent=1))
        print(decode_table(result))
        return
    if args.precision:
        from img_search.pipeline.runner import default_workers

        specs = [s for s in args.precision.split(",") if s]
        workers = default_workers() if args.workers is None else args.workers
        width, _, height = args.size.partition("x")
        size = (int(width), int(height))
        folder = jpeg_folder(args.images or 96, size)
        model_dir = build_model(CACHE / "siglip-base-random")
        load_before, t0 = os.getloadavg(), time.time()
        rows = compare_precisions(specs, folder, model_dir, args.batch_size, args.model_batches, args.rounds, workers)
        RESULTS.mkdir(parents=True, exist_ok=True)
        result = {"specs": specs, "images": args.images or 96, "size": list(size), "batch_size": args.batch_size,
                  "workers": workers,
                  "model_batches": args.model_batches, "rounds": args.rounds, "cores": os.cpu_count(),
                  "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "seconds": time.time() - t0,
                  "date": time.strftime("%Y-%m-%d %H:%M"), "variants": rows}
        name = "embed_throughput_precision" + ("" if size == (1024, 768) else f"_{args.size}")
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(f"\n## end to end vs model only per precision ({args.images or 96} JPEGs {args.size} per end-to-end run, "
              f"batch {args.batch_size}, {workers} decode worker(s), {args.rounds} rounds; load average "
              f"{load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; {time.time() - t0:.0f} s)\n")
        print(precision_table(rows, specs[0]))
        return
    rows = []
    if not args.skip_embed:
        folder = jpeg_folder(args.images or 500)
        model_dir = build_model(CACHE / "siglip-base-random")
        before, cpu_before = model_only(model_dir, args.batch_size, args.model_batches)
        with tempfile.TemporaryDirectory() as tmp:
            summary, wall, cpu = run_index(folder, model_dir, Path(tmp), args.batch_size)
        after, cpu_after = model_only(model_dir, args.batch_size, args.model_batches)
        model_rate = (before + after) / 2
        model_cpu = (cpu_before + cpu_after) / 2
        loop_rate = summary["images_per_second"]
        rows += [
            (f"model only, pre-made tensors (mean of before/after; {summary['precision']}, as `index`)",
             f"{model_rate:.2f} images/s",
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
