"""A text search from a cold process over 10,000 images: the light text path vs the torch encoder.

Run: .venv/bin/python bench/cold_search.py [--images 10000] [--repeats 5]

Setup (cached in bench/_data): the SigLIP-base architecture with random weights, its runtime cache prepared the way
`index` prepares it (``prepare_runtime``, precision auto) under ``bench/_data/xdg`` (used as XDG_CACHE_HOME by every
measured process), and an index directory whose catalog holds 10,000 images with 768-d vectors and whose saved
search index is synced (``VectorStore.sync``, as `index` leaves it). Random unit vectors stand in for embeddings:
the search cost does not depend on their values.

Measured, each in a fresh process, the variants interleaved ``--repeats`` times (files in the page cache after the
first round; the first round is reported apart):

* ``light``: ``open_searcher(settings, encoder=lambda: load_text_encoder(model))`` then one ``search_text`` --
  what `img-search search` does once the CLI passes ``load_text_encoder`` as the encoder factory;
* ``torch``: the same with ``load_encoder(model)`` (float32 torch: what the CLI does today);
* ``cli``: the real ``img-search search "a dog" --json`` as the CLI is now (whatever encoder path it takes).

Each row: whole-process wall seconds (spawn to exit), the child's own phases (imports, open, encoder load, first
query, search) and its peak RSS (``wait4``). Then a warm process: 50 queries through the light encoder + search,
p50/p99. JSON to bench/results/cpu_cold_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
MODEL_DIR = DATA / "siglip-base-random"
XDG = DATA / "xdg"
RESULTS = ROOT / "bench" / "results"
QUERY = "a dog on the beach"

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from img_search.settings import load_settings
from img_search.search.searcher import open_searcher
from img_search.embedding import load_encoder, load_text_encoder
t_import = time.perf_counter() - t0
variant, model, index_dir, query, reps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
factory = (lambda: load_text_encoder(model)) if variant == "light" else (lambda: load_encoder(model, device="cpu"))
settings = load_settings(index_dir)
t1 = time.perf_counter()
searcher = open_searcher(settings, model)
t2 = time.perf_counter()
enc = factory()
t3 = time.perf_counter()
vec = enc.encode_texts([query])
t4 = time.perf_counter()
hits = searcher.search_vectors(vec, limit=10)[0]
t5 = time.perf_counter()
warm = []
for _ in range(reps):
    a = time.perf_counter()
    searcher._encoder = enc
    searcher.search_text(query, limit=10)
    warm.append(time.perf_counter() - a)
print(json.dumps({"imports_s": t_import, "open_s": t2 - t1, "encoder_load_s": t3 - t2, "encode_s": t4 - t3,
                  "search_s": t5 - t4, "in_process_s": t5 - t0, "hits": len(hits), "encoder": type(enc).__name__,
                  "torch_imported": "torch" in sys.modules, "warm_s": warm}))
"""


def setup(n_images: int) -> tuple[Path, Path]:
    """The model, its prepared runtime cache (under XDG) and a synced 10k-image index directory."""
    os.environ["XDG_CACHE_HOME"] = str(XDG)
    from img_search.embedding import load_encoder, prepare_runtime
    from img_search.embedding.tiny import ARCHITECTURES, build_tiny_model

    if not (MODEL_DIR / "config.json").exists():
        build_tiny_model(MODEL_DIR, ARCHITECTURES["google/siglip-base-patch16-224"])
    enc = load_encoder(str(MODEL_DIR), device="cpu", precision="auto")
    verdicts = prepare_runtime(enc)
    print("prepared:", {t: (v.precision, v.runtime, round(v.min_cosine, 6)) for t, v in verdicts.items()},
          file=sys.stderr)
    index_dir = DATA / f"cold_index_{n_images}"
    if not (index_dir / "catalog.sqlite3").exists():
        build_index(index_dir, enc.info, n_images)
    return MODEL_DIR, index_dir


def build_index(index_dir: Path, info, n_images: int) -> None:  # type: ignore[no-untyped-def]
    from img_search.catalog import Catalog, ImageRecord
    from img_search.search.store import VectorStore
    from img_search.settings import SearchSettings

    index_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with Catalog.in_dir(index_dir) as catalog:
        model_id = catalog.ensure_model(info.model_id, family=info.family, dim=info.dim, logit_scale=info.logit_scale,
                                        logit_bias=info.logit_bias)
        for start in range(0, n_images, 1000):
            n = min(1000, n_images - start)
            vecs = rng.standard_normal((n, info.dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            records = [ImageRecord(f"/photos/{i // 500:03d}/img_{i:06d}.jpg", 100_000 + i, 1_700_000_000 + i,
                                   i.to_bytes(16, "little"), 1024, 768) for i in range(start, start + n)]
            catalog.record(records, model_id=model_id, vectors=vecs)
        model = catalog.get_model(info.model_id)
        assert model is not None
        VectorStore(index_dir, catalog, model, SearchSettings()).sync()


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds spawn-to-exit, peak RSS MB of that child alone, stdout)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(XDG), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warm-queries", type=int, default=50)
    ap.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.setup_only:
        setup(args.images)
        return
    # set up in a child: a forked process inherits its parent's peak RSS, so this driver must stay small for the
    # children's wait4() figures to be their own
    subprocess.run([sys.executable, __file__, "--setup-only", "--images", str(args.images)], check=True)
    model, index_dir = MODEL_DIR, DATA / f"cold_index_{args.images}"
    py = str(ROOT / ".venv" / "bin" / "python")
    cli = str(ROOT / ".venv" / "bin" / "img-search")
    variants = {
        "light": [py, "-c", CHILD, "light", str(model), str(index_dir), QUERY, "0"],
        "torch": [py, "-c", CHILD, "torch", str(model), str(index_dir), QUERY, "0"],
        "cli": [cli, "search", QUERY, "--model", str(model), "--index-dir", str(index_dir), "--json"],
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for name, cmd in variants.items():
            time.sleep(0.5)
            wall, rss, out = run_child(cmd)
            row = {"round": r, "wall_s": wall, "rss_mb": rss}
            if name != "cli":
                row.update(json.loads(out.strip().splitlines()[-1]))
            runs[name].append(row)
    _, _, out = run_child([py, "-c", CHILD, "light", str(model), str(index_dir), QUERY, str(args.warm_queries)])
    warm = np.array(json.loads(out.strip().splitlines()[-1])["warm_s"]) * 1e3
    result = {"images": args.images, "repeats": args.repeats, "cores": os.cpu_count(), "query": QUERY,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "runs": runs, "warm_light_ms": {"p50": float(np.percentile(warm, 50)),
                                              "p99": float(np.percentile(warm, 99)), "n": int(warm.size)}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu_cold_search.json").write_text(json.dumps(result, indent=1))
    print(f"{args.images:,} images; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print("| variant | wall s, first round | wall s, later rounds (median; min-max) | imports s | open s "
          "| encoder load s | encode s | search s | torch imported | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in runs.items():
        later = [row["wall_s"] for row in rows[1:]] or [rows[0]["wall_s"]]

        def med(key: str, rows: list[dict] = rows) -> str:
            vals = [row[key] for row in rows[1:] or rows if key in row]
            return f"{np.median(vals):.3f}" if vals else "-"

        torch_flag = "-" if name == "cli" else str(rows[-1]["torch_imported"]).lower()
        print(f"| {name} | {rows[0]['wall_s']:.2f} | {np.median(later):.2f} ({min(later):.2f}-{max(later):.2f}) | "
              f"{med('imports_s')} | {med('open_s')} | {med('encoder_load_s')} | {med('encode_s')} | "
              f"{med('search_s')} | {torch_flag} | "
              f"{np.median([row['rss_mb'] for row in rows]):.0f} |")
    print(f"\nwarm light process: text query + search p50 {result['warm_light_ms']['p50']:.1f} ms, "
          f"p99 {result['warm_light_ms']['p99']:.1f} ms over {warm.size} queries")


if __name__ == "__main__":
    main()
