"""The map's cost: UMAP fit and transform time, and peak memory, on random 768-d unit vectors.

Run: .venv/bin/python bench/umap_map.py [--sizes 10000 100000] [--transform 1000] [--timeout 3600]

Each size runs in a fresh child process (so its peak RSS, ``ru_maxrss``, is its own): random unit vectors
(N(0, 1) then L2-normalised; SigLIP-base's 768 dimensions) -> ``explore.sphere.fit_sphere`` (cosine in, haversine out,
random_state 42, as ``img-search map``) -> pickle the model (size, seconds) -> ``transform_sphere`` of ``--transform``
new random vectors (none is a near-copy, so all go through UMAP's ``transform``). numba compiles UMAP's kernels on
first use: a 500-point fit and transform run first and their time is reported apart as ``jit_seconds``.
Random vectors are the hard case for UMAP's nearest-neighbour descent (no cluster structure to exploit); real
embeddings converge at least as fast. A size that does not finish within ``--timeout`` seconds is reported as such.
Results: JSON to bench/results/umap_map.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DIM = 768


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def child(n: int, n_new: int) -> dict[str, float | int]:
    sys.path.insert(0, str(ROOT))
    from img_search.explore.sphere import fit_sphere, transform_sphere

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    warm = _unit(rng.normal(size=(500, DIM)))
    m, la, lo = fit_sphere(warm)
    transform_sphere(m, warm[:10] + 0.0, la, lo, snap_cosine=None)
    jit = time.perf_counter() - t0
    del m
    base_rss = _rss_mib()
    x = _unit(rng.normal(size=(n, DIM)).astype(np.float32))
    new = _unit(rng.normal(size=(n_new, DIM)).astype(np.float32))
    data_rss = _rss_mib()
    t0 = time.perf_counter()
    model, lat, lon = fit_sphere(x)
    fit_s = time.perf_counter() - t0
    fit_rss = _rss_mib()
    t0 = time.perf_counter()
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    pickle_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    transform_sphere(model, new, lat, lon, snap_cosine=None)
    transform_s = time.perf_counter() - t0
    return {"n": n, "dim": DIM, "n_transform": n_new, "jit_seconds": round(jit, 1), "fit_seconds": round(fit_s, 1),
            "transform_seconds": round(transform_s, 2),
            "transform_ms_per_point": round(1000 * transform_s / max(n_new, 1), 2),
            "pickle_seconds": round(pickle_s, 2), "model_pickle_mib": round(len(blob) / 2**20, 1),
            "vectors_mib": round(x.nbytes / 2**20, 1), "rss_before_data_mib": round(base_rss),
            "rss_with_data_mib": round(data_rss), "peak_rss_after_fit_mib": round(fit_rss),
            "peak_rss_mib": round(_rss_mib())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--transform", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "umap_map.json")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.transform)))
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--transform", str(args.transform)]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"n": n, "error": f"did not finish within {args.timeout:.0f} s"})
            print(f"n={n}: did not finish within {args.timeout:.0f} s", flush=True)
            continue
        if done.returncode != 0:
            rows.append({"n": n, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"})
            print(f"n={n}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    import os

    meta = {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"{'n':>7} {'fit s':>8} {'transform ms/pt':>16} {'peak RSS MiB':>13} {'model MiB':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['n']:>7} {r['error']}")
        else:
            print(f"{r['n']:>7} {r['fit_seconds']:>8} {r['transform_ms_per_point']:>16} {r['peak_rss_mib']:>13} "
                  f"{r['model_pickle_mib']:>10}")


if __name__ == "__main__":
    main()
