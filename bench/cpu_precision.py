"""Image and text towers at each precision and runtime on CPU: speed, fidelity to float32, import and load time.

Run: .venv/bin/python bench/cpu_precision.py [--tower image|text|both] [--rounds 3] [--batch-size 16]

The real google/siglip-base-patch16-224 architecture with random weights (bench/embed_throughput.py builds it in
bench/_data). Variants (tower x runtime x precision): torch fp32 / bf16 autocast / int8 dynamic (Linear layers),
ONNX Runtime fp32 / int8 (dynamic, MatMuls), OpenVINO fp32 / bf16 (inference-precision hint) -- all through the
library's own sessions (``img_search.embedding.runtime``) and exported graphs (``embedding.onnx_export``) -- plus two
OpenVINO int8 variants built here with NNCF, measured but not adopted: ``int8-static`` (activations and weights,
calibrated on generated inputs) and ``int8-weights`` (weights only); they are skipped where ``nncf`` is not installed
(``pip install torch==2.13.0 nncf``; it is no dependency of img-search).

Each variant runs in its own worker process (its runtime's thread pool cannot disturb the others, and its import and
load times are those of a fresh process); the driver asks the workers in turn, round after round, with a pause in
between, so the machine's load (2 cores shared with other engineers) hits every variant alike. Reported: images/s
(image batches) or single-query latency p50/p99 (text), each variant's speed ratio to torch fp32 taken *within* each
round (median and range over rounds: the noise), the minimum cosine to torch fp32 over a fixed set of 32 generated
images / 32 texts, the worker's import and load seconds and its peak RSS. JSON to bench/results/cpu_precision_*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
MODEL_DIR = DATA / "siglip-base-random"
CACHE_DIR = DATA / "runtime-cache"
RESULTS = ROOT / "bench" / "results"
ARCH = "google/siglip-base-patch16-224"
N_FIDELITY = 32

# (runtime, precision); "nncf-*" are built here, not by the library
VARIANTS = [("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
            ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8-static"), ("openvino", "int8-weights")]


def build_model() -> Path:
    from img_search.embedding.tiny import ARCHITECTURES, build_tiny_model

    if not (MODEL_DIR / "config.json").exists():
        build_tiny_model(MODEL_DIR, ARCHITECTURES[ARCH])
    return MODEL_DIR


def fidelity_texts() -> list[str]:
    from img_search.embedding.parity import probe_texts
    from img_search.embedding.tiny import caption_corpus

    return (probe_texts() + caption_corpus(200, seed=7))[:N_FIDELITY]


def prepare(work: Path, batch_size: int, towers: list[str]) -> dict[str, str]:
    """Export every graph the variants need, write the inputs as .npy; returns the variants' graph paths."""
    import openvino as ov

    from img_search.embedding import load_encoder
    from img_search.embedding.base import collate_pixels
    from img_search.embedding.onnx_export import export_tower
    from img_search.embedding.parity import probe_images

    enc = load_encoder(str(MODEL_DIR), device="cpu", cache_dir=CACHE_DIR)
    cache = enc.cache()
    assert cache is not None
    pre = enc.image_preprocessor()
    images = collate_pixels([pre(img) for img in probe_images(max(N_FIDELITY, batch_size))])
    np.save(work / "image_fid.npy", images["pixel_values"][:N_FIDELITY])
    np.save(work / "image_run.npy", images["pixel_values"][:batch_size])
    texts = enc.tokenize(fidelity_texts())
    np.save(work / "text_fid.npy", texts["input_ids"])
    np.save(work / "text_run.npy", enc.tokenize(["a dog on the beach"])["input_ids"])
    paths: dict[str, str] = {}
    for tower in towers:
        for kind in ("onnx-fp32", "onnx-int8"):
            paths[f"{tower}:{kind}"] = str(export_tower(enc, tower, kind, cache))
        paths.update(nncf_variants(ov, Path(paths[f"{tower}:onnx-fp32"]), tower, work))
    return paths


def nncf_variants(ov, fp32: Path, tower: str, work: Path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """OpenVINO int8 IRs through NNCF (bench only): static (calibrated on 8 generated inputs) and weights-only."""
    try:
        import nncf
    except ImportError:
        return {}
    out = {}
    for name in ("int8-static", "int8-weights"):
        target = CACHE_DIR / "nncf" / f"{tower}-{name}.xml"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            model = ov.Core().read_model(str(fp32))
            if name == "int8-static":
                calib = np.load(work / f"{tower}_fid.npy")[8:16]
                data = nncf.Dataset([calib[i: i + 1] for i in range(len(calib))])
                model = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
            else:
                model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            ov.save_model(model, str(target))
        out[f"{tower}:{name}"] = str(target)
    return out


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: per address space, so not inherited from the driver's fork)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- worker ---------------------------------------------------------------------------------------------------------
def worker(tower: str, runtime: str, precision: str, work: Path, graph: str | None) -> None:
    t0 = time.perf_counter()
    key = "pixel_values" if tower == "image" else "input_ids"
    if runtime == "torch":
        import torch  # noqa: F401  (timed: the import is part of this runtime's cost)
        t_import = time.perf_counter() - t0
        from img_search.embedding import load_encoder

        enc = load_encoder(str(MODEL_DIR), device="cpu", precision=precision, runtime="torch", cache_dir=CACHE_DIR)
        session = enc.session(tower)
        run = session.run
    else:
        __import__(runtime)
        t_import = time.perf_counter() - t0
        from img_search.embedding.precision import TowerChoice

        if precision.startswith("int8-"):  # NNCF IRs: an OpenVINO session over the IR, fp32 inference precision
            from img_search.embedding.runtime import OpenVinoSession

            session = OpenVinoSession(Path(graph or ""), TowerChoice(tower, "fp32", "openvino"))
        else:
            from img_search.embedding.runtime import open_graph_session

            session = open_graph_session(Path(graph or ""), TowerChoice(tower, precision, runtime))
        run = session.run
    t_load = time.perf_counter() - t0 - t_import
    x_run = {key: np.load(work / f"{tower}_run.npy")}
    fid = np.load(work / f"{tower}_fid.npy")
    step = 8 if tower == "image" else len(fid)
    feats = np.concatenate([run({key: fid[i: i + step]}) for i in range(0, len(fid), step)])
    np.save(work / f"out_{tower}_{runtime}_{precision}.npy", feats)
    print(json.dumps({"import_s": t_import, "load_s": t_load}), flush=True)
    for line in sys.stdin:
        reps = int(line)
        times, c0 = [], time.process_time()
        for _ in range(reps):
            t = time.perf_counter()
            run(x_run)
            times.append(time.perf_counter() - t)
        rss = peak_rss_mb()
        print(json.dumps({"times": times, "cpu_s": time.process_time() - c0, "rss_mb": rss}), flush=True)


# -- driver ---------------------------------------------------------------------------------------------------------
def measure(tower: str, paths: dict[str, str], work: Path, rounds: int, batch_size: int, reps: int) -> dict:
    procs: dict[str, subprocess.Popen[str]] = {}
    starts: dict[str, dict] = {}
    for runtime, precision in VARIANTS:
        name = f"{runtime}:{precision}"
        graph = None
        if runtime != "torch":
            kind = {"int8": "onnx-int8"}.get(precision, "onnx-fp32")
            graph = paths.get(f"{tower}:{precision}") if precision.startswith("int8-") else paths[f"{tower}:{kind}"]
            if graph is None:
                continue
        cmd = [sys.executable, "-W", "ignore", __file__, "--worker", tower, runtime, precision, str(work),
               graph or "-"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            print(f"  {name}: worker failed to start", file=sys.stderr)
            continue
        procs[name], starts[name] = proc, json.loads(line)
    runs: dict[str, list[dict]] = {name: [] for name in procs}
    order = list(procs)
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:  # rotate the order each round
            time.sleep(0.5)  # let the previous worker's threads go idle
            proc = procs[name]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{reps}\n")
            proc.stdin.flush()
            runs[name].append(json.loads(proc.stdout.readline()))
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    ref = np.load(work / f"out_{tower}_torch_fp32.npy")
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    rows = {}
    base = runs["torch:fp32"]
    for name, results in runs.items():
        out = np.load(work / f"out_{tower}_{name.replace(':', '_')}.npy")
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
        cos = np.sum(ref * out, axis=1)
        per_round = [float(np.median(res["times"])) for res in results]
        ratios = [float(np.median(b["times"]) / np.median(res["times"])) for b, res in zip(base, results, strict=True)]
        all_times = np.concatenate([res["times"] for res in results])
        row = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), **starts[name],
               "speed_ratio_to_torch_fp32_median": float(np.median(ratios)),
               "speed_ratio_range": [float(min(ratios)), float(max(ratios))],
               "cpu_s_per_call": float(np.median([res["cpu_s"] / len(res["times"]) for res in results])),
               "rss_mb": max(res["rss_mb"] for res in results)}
        if tower == "image":
            rates = [batch_size / t for t in per_round]
            row.update(images_per_s_median=float(np.median(rates)), images_per_s_per_round=rates)
        else:
            row.update(p50_ms=float(np.percentile(all_times, 50) * 1e3),
                       p99_ms=float(np.percentile(all_times, 99) * 1e3), p50_ms_per_round=[t * 1e3 for t in per_round])
        rows[name] = row
    return rows


def table(tower: str, rows: dict, batch_size: int) -> str:
    head = ("| runtime | precision | images/s (median; per round) | ratio to torch fp32 (median, range) | min cosine "
            "| import s | load s | RSS MB |") if tower == "image" else (
        "| runtime | precision | p50 ms (per round) | p99 ms | ratio to torch fp32 (median, range) | min cosine "
        "| import s | load s | RSS MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        runtime, precision = name.split(":")
        ratio = (f"{r['speed_ratio_to_torch_fp32_median']:.2f} ({r['speed_ratio_range'][0]:.2f}-"
                 f"{r['speed_ratio_range'][1]:.2f})")
        if tower == "image":
            speed = f"{r['images_per_s_median']:.2f} ({', '.join(f'{x:.1f}' for x in r['images_per_s_per_round'])})"
        else:
            speed = f"{r['p50_ms']:.1f} ({', '.join(f'{x:.0f}' for x in r['p50_ms_per_round'])}) | {r['p99_ms']:.1f}"
        lines.append(f"| {runtime} | {precision} | {speed} | {ratio} | {r['min_cosine']:.6f} | {r['import_s']:.2f} | "
                     f"{r['load_s']:.2f} | {r['rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        tower, runtime, precision, work, graph = sys.argv[2:7]
        worker(tower, runtime, precision, Path(work), None if graph == "-" else graph)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tower", choices=["image", "text", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-reps", type=int, default=2, help="batches per variant per round")
    ap.add_argument("--text-reps", type=int, default=30, help="single queries per variant per round")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from img_search.embedding.precision import cpu_features, resolve_precision

    build_model()
    towers = ["image", "text"] if args.tower == "both" else [args.tower]
    RESULTS.mkdir(parents=True, exist_ok=True)
    flags = sorted(f for f in cpu_features() if "avx512" in f or "vnni" in f or "amx" in f or "bf16" in f)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = prepare(work, args.batch_size, towers)
        for tower in towers:
            load_before = os.getloadavg()
            t0 = time.time()
            rows = measure(tower, paths, work, args.rounds, args.batch_size,
                           args.image_reps if tower == "image" else args.text_reps)
            auto = resolve_precision("auto", tower)
            result = {"tower": tower, "batch_size": args.batch_size if tower == "image" else 1, "rounds": args.rounds,
                      "cores": os.cpu_count(), "cpu_flags": flags, "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "seconds": time.time() - t0, "auto": auto.as_dict(),
                      "date": time.strftime("%Y-%m-%d %H:%M"), "variants": rows}
            (RESULTS / f"cpu_precision_{tower}.json").write_text(json.dumps(result, indent=1))
            print(f"\n## {tower} tower ({'batch ' + str(args.batch_size) if tower == 'image' else 'one query'}, "
                  f"{args.rounds} rounds; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; "
                  f"auto = {auto.precision} on {auto.runtime})\n")
            print(table(tower, rows, args.batch_size))


if __name__ == "__main__":
    main()
