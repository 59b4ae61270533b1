"""Near-duplicate detection over 100,000 images: time and peak memory of ``find_duplicates``, and its recall.

Run: .venv/bin/python bench/duplicates.py [--images 100000] [--k 10] [--threshold 0.95]

Setup (cached in bench/_data/duplicates-N): a catalog of N images with random 768-d unit vectors (SigLIP-base's
dimension) of which 1,000 "originals" each get 1 or 2 planted near-copies at a cosine drawn uniformly from
0.93-0.999 (so some fall below the threshold), and the saved search index synced as `index` leaves it (the default
ANN backend at this size: above the 20k ANN threshold). Random 768-d vectors have mutual cosines within about
+-0.2, so the planted pairs at or above the threshold are exactly the pairs a brute-force all-pairs pass would find:
recall = planted pairs found / planted pairs at or above the threshold.
The run itself is a fresh child process (its peak RSS, ``ru_maxrss``, is its own): open the collection,
``find_duplicates``. Results: JSON to bench/results/duplicates.json and a line on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
RESULTS = ROOT / "bench" / "results"
DIM = 768
N_ORIGINALS = 1000


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def setup(n: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from img_search.catalog import Catalog, ImageRecord
    from img_search.search.store import VectorStore
    from img_search.settings import SearchSettings

    root = DATA / f"duplicates-{n}"
    index_dir = root / "idx"
    if (root / "planted.json").exists():
        return root
    rng = np.random.default_rng(0)
    n_copies = [1 + i % 2 for i in range(N_ORIGINALS)]
    n_base = n - sum(n_copies)
    base = _unit(rng.normal(size=(n_base, DIM)))
    originals = rng.choice(n_base, N_ORIGINALS, replace=False)
    copies, planted = [], []
    for o, m in zip(originals.tolist(), n_copies, strict=True):
        for _ in range(m):
            c = float(rng.uniform(0.93, 0.999))
            u = rng.normal(size=DIM)
            u -= (u @ base[o]) * base[o]
            u /= np.linalg.norm(u)
            copies.append(c * base[o] + np.sqrt(1 - c * c) * u)
            planted.append((o, n_base + len(copies) - 1))
    vectors = np.vstack([base, _unit(np.array(copies))])
    t0 = time.perf_counter()
    with Catalog.in_dir(index_dir) as catalog:
        model_id = catalog.ensure_model("bench/duplicates", family="siglip", dim=DIM, logit_scale=1.0,
                                        logit_bias=None)
        for s in range(0, n, 5000):
            records = [ImageRecord(f"/photos/{i // 1000:03d}/img_{i:06d}.jpg", 100_000 + i, 1_000_000 + i,
                                   hashlib.blake2b(str(i).encode(), digest_size=16).digest(), 64, 48)
                       for i in range(s, min(n, s + 5000))]
            catalog.record(records, model_id=model_id, vectors=vectors[s : s + 5000])
        model = catalog.models()[0]
        VectorStore(index_dir, catalog, model, SearchSettings()).sync()
    # planted pairs as (row, row) of the catalog: image ids are rows + 1 (inserted in order into a new catalog)
    (root / "planted.json").write_text(json.dumps({"pairs": planted, "setup_seconds": time.perf_counter() - t0,
                                                   "cosines": [float(vectors[a] @ vectors[b]) for a, b in planted]}))
    return root


def child(root: Path, k: int, threshold: float) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from img_search.explore.duplicates import find_duplicates
    from img_search.search.collection import Collection

    t0 = time.perf_counter()
    collection = Collection.open(root / "idx")
    open_s = time.perf_counter() - t0
    rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    groups = find_duplicates(collection, threshold, k)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    planted = json.loads((root / "planted.json").read_text())
    expected = {(a + 1, b + 1) for (a, b), c in zip(planted["pairs"], planted["cosines"], strict=True)
                if c >= threshold}
    member = {i: gi for gi, g in enumerate(groups) for i in g.image_ids}
    found = sum(1 for a, b in expected if a in member and member.get(b) == member[a])
    grouped = sum(g.size for g in groups)
    return {"images": len(collection), "backend": collection.backend, "k": k, "threshold": threshold,
            "open_seconds": round(open_s, 2), "seconds": round(seconds, 1),
            "images_per_second": round(len(collection) / seconds), "groups": len(groups), "grouped_images": grouped,
            "planted_pairs_at_threshold": len(expected), "recall": round(found / max(len(expected), 1), 4),
            "rss_after_open_mib": round(rss_open), "peak_rss_mib": round(peak),
            "vectors_mib": round(len(collection) * DIM * 4 / 2**20, 1),
            "setup_seconds": round(planted["setup_seconds"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "duplicates.json")
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.k, args.threshold)))
        return
    root = setup(args.images)
    done = subprocess.run([sys.executable, __file__, "--child", str(root), "--k", str(args.k), "--threshold",
                           str(args.threshold)], capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["cpus"], row["loadavg_at_end"] = os.cpu_count(), os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
