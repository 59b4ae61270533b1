"""`serve --watch` latency: seconds from a photo landing in a watched folder to its row (and vector) in the catalog.

Run: .venv/bin/python bench/watch_latency.py [--drops 10] [--debounce 2.0] [--model base|tiny]

A folder of 20 real-size JPEGs is indexed, then watched (``jobs.watch.Watcher``, default debounce
``service.watch_debounce_s``) with the service's in-process queue; ``--drops`` new photos are then moved into it one
at a time (atomically, as a copy tool finishing a file does), each waited for before the next. The issue's target:
new and changed files indexed within 10 s. ``--model base`` (default) embeds with the real
google/siglip-base-patch16-224 architecture (random weights), already loaded, as in a running service.
Prints the median and the worst latency and writes bench/results/watch_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from embed_throughput import CACHE, build_model, make_jpegs  # noqa: E402

from img_search.catalog import Catalog  # noqa: E402
from img_search.settings import load_settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "watch_latency.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--drops", type=int, default=10)
    parser.add_argument("--debounce", type=float, default=None, help="default: service.watch_debounce_s")
    parser.add_argument("--model", choices=("base", "tiny"), default="base")
    args = parser.parse_args()

    from img_search.embedding.tiny import TinySpec, build_tiny_model
    from img_search.jobs.queue import open_queue, submit_index
    from img_search.jobs.tasks import Runtime
    from img_search.jobs.watch import Watcher
    from img_search.pipeline.runner import IndexOptions, index_folders

    pool = make_jpegs(CACHE / "reembed_photos_40", 40)
    if args.model == "base":
        model = build_model(CACHE / "siglip-base-random")
    else:
        model = CACHE / "tiny-siglip"
        if not (model / "config.json").exists():
            build_tiny_model(model, TinySpec())
    with tempfile.TemporaryDirectory() as tmp:
        folder, index_dir, staging = Path(tmp) / "photos", Path(tmp) / "index", Path(tmp) / "staging"
        folder.mkdir()
        staging.mkdir()
        sources = sorted(pool.glob("*.jpg"))
        for src in sources[:20]:
            shutil.copy(src, folder / src.name)
        service = {} if args.debounce is None else {"watch_debounce_s": args.debounce}
        settings = load_settings(index_dir, model=str(model), service=service)
        runtime = Runtime(settings, decode_workers=0)
        encoder = runtime.encoder(str(model))  # loaded, as in a running service
        index_folders([str(folder)], index_dir, IndexOptions(model=str(model), workers=0),
                      encoder_factory=lambda: encoder)
        queue = open_queue(settings, runtime)
        latencies = []
        with Watcher(settings, [str(folder)], lambda f: submit_index(queue, settings, f)) as watcher:
            for i, src in enumerate(sources[20:20 + args.drops]):
                staged = staging / f"drop_{i:03d}.jpg"
                shutil.copy(src, staged)
                target = folder / "incoming" / staged.name if i % 2 else folder / staged.name
                target.parent.mkdir(exist_ok=True)
                t0 = time.perf_counter()
                os.replace(staged, target)
                while True:
                    with Catalog.in_dir(index_dir, readonly=True) as cat:
                        row = cat.image(str(target))
                    if row is not None and row.status == "ok":
                        break
                    if time.perf_counter() - t0 > 120:
                        raise RuntimeError(f"{target} not indexed after 120 s")
                    time.sleep(0.02)
                latencies.append(time.perf_counter() - t0)
                print(f"drop {i}: {latencies[-1]:.2f} s", file=sys.stderr)
            debounce = watcher.debounce_s
        queue.close()
    result = {"model": args.model, "drops": len(latencies), "debounce_s": debounce,
              "median_s": statistics.median(latencies), "max_s": max(latencies), "latencies_s": latencies}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| watch latency, {args.model} model, debounce {debounce:g} s, {len(latencies)} drops | median "
          f"{result['median_s']:.2f} s | worst {result['max_s']:.2f} s | target < 10 s |")


if __name__ == "__main__":
    main()
