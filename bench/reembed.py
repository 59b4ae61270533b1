"""Re-embedding through RQ workers vs `index`, on the same images and the same model, in one run.

Run: .venv/bin/python bench/reembed.py [--images 400] [--workers 1] [--rounds 2] [--redis redis://127.0.0.1:6379/12]

1. A folder of real-size JPEGs (1024x768, bench/embed_throughput.make_jpegs) and the real
   google/siglip-base-patch16-224 architecture with random weights (same FLOPs; no download).
2. `index`: the `img-search index --json` command into a fresh index directory with that model (a fresh process,
   as users run it). Its summary's ``seconds`` times ``index_folders`` from its call to its end: a cold model load,
   the scan, decode workers, embedding, writes and the saved-index sync (not the interpreter's start-up).
3. Re-embedding: a catalog of the same folder indexed with a tiny model (the collection in service), then
   ``enqueue_full_reembedding(batch_size=100)`` with the base model on RQ; ``--workers`` RQ worker processes
   (``python -m img_search.jobs.worker``) are started and idle beforehand, as in a deployment (imports done, no
   model loaded); timed from the enqueue to the run settled with the saved index synced (so a cold model load in
   the worker is included, as in 2).
4. Both use the same settings: device and precision ``auto``, batch size 32, decode workers ``default_workers()``.
   The model's exported-runtime cache is warmed once before either is timed. Rounds alternate index and
   re-embedding; the medians are compared (the machine is shared).

Also reported: the steady rates, without the model load: index's embed loop (its summary's images_per_second) and
re-embedding's images per second from the start of its second batch to the end of its last.

Prints a Markdown table (images/s of each, the ratios; the issue's target is >= 0.8) and writes
bench/results/reembed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from embed_throughput import ARCH, CACHE, build_model, make_jpegs, run_index  # noqa: E402

from img_search.settings import Settings, load_settings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reembed.json"


def time_index(folder: Path, model: Path, index_dir: Path, batch_size: int) -> tuple[float, float]:
    """(seconds of index_folders in an `img-search index` process, its embed-loop images/s)."""
    summary, _, _ = run_index(folder, model, index_dir, batch_size)
    return float(summary["seconds"]), float(summary["images_per_second"])


def start_workers(n: int, index_dir: Path, redis_url: str, queue: str, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "IMG_SEARCH_INDEX_DIR": str(index_dir), "IMG_SEARCH_SERVICE__REDIS_URL": redis_url,
           "IMG_SEARCH_SERVICE__QUEUE_NAME": queue}
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker-{i}.log", "wb")  # noqa: SIM115 (kept open for the process)
        procs.append(subprocess.Popen([sys.executable, "-m", "img_search.jobs.worker"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def steady_rate(snapshot: Any) -> float | None:
    """Images/s from the start of the second batch to the end of the last (the first one loads the model)."""
    batches = sorted(snapshot.done.values(), key=lambda d: d.started_at)
    if len(batches) < 2:
        return None
    later = batches[1:]
    return sum(d.ok for d in later) / (max(d.finished_at for d in later) - later[0].started_at)


def time_reembed(model: Path, settings: Settings, n_workers: int) -> tuple[float, dict[str, Any], float | None]:
    """(wall seconds from enqueue to settled + synced, final status, steady images/s)."""
    import redis
    from rq import Worker

    from img_search.jobs.queue import enqueue_full_reembedding, job_status, open_queue

    assert settings.service.redis_url is not None
    queue = open_queue(settings)
    client = redis.Redis.from_url(settings.service.redis_url)
    with tempfile.TemporaryDirectory() as logs:
        procs = start_workers(n_workers, settings.index_dir, settings.service.redis_url,
                              settings.service.queue_name, Path(logs))
        try:
            from rq import Queue

            rq_queue = Queue(settings.service.queue_name, connection=client)
            deadline = time.monotonic() + 120
            while Worker.count(queue=rq_queue) < n_workers:  # started and listening before the clock starts
                if time.monotonic() > deadline:
                    raise RuntimeError("the RQ workers did not start: " + (Path(logs) / "worker-0.log").read_text())
                time.sleep(0.2)
            time.sleep(1.0)
            t0 = time.perf_counter()
            run_id = enqueue_full_reembedding(batch_size=100, model=str(model), settings=settings, queue=queue)
            while True:
                snap = queue.snapshot(run_id)
                if snap is not None and snap.settled and snap.synced:
                    break
                time.sleep(0.1)
            wall = time.perf_counter() - t0
            return wall, job_status(queue, settings, run_id=run_id), steady_rate(snap)
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
            name = settings.service.queue_name
            keys = list(client.scan_iter(match=f"*{name}*", count=1000))
            if keys:
                client.delete(*keys)
            for registry in ("rq:queues", "rq:workers"):
                members = [m for m in client.smembers(registry) if name.encode() in m]
                if members:
                    client.srem(registry, *members)
            queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=1, help="RQ worker processes")
    parser.add_argument("--rounds", type=int, default=2, help="index / re-embedding pairs, alternating")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()

    from img_search.embedding.tiny import TinySpec, build_tiny_model
    from img_search.pipeline.runner import IndexOptions, index_folders
    from img_search.search.searcher import encoder_factory

    folder = make_jpegs(CACHE / f"reembed_photos_{args.images}", args.images)
    model = build_model(CACHE / "siglip-base-random")
    tiny = CACHE / "tiny-clip"
    if not (tiny / "config.json").exists():
        build_tiny_model(tiny, TinySpec(family="clip"))
    base = load_settings(Path(tempfile.gettempdir()) / "img-search-bench-none")
    encoder_factory(str(model), base)()  # warm the exported-runtime cache: neither timing pays an export

    rows: list[dict[str, Any]] = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "index"
            index_s, loop_rate = time_index(folder, model, fresh, base.batch_size)
            source = Path(tmp) / "source"
            index_folders([str(folder)], source, IndexOptions(model=str(tiny), workers=0),
                          encoder_factory=encoder_factory(str(tiny), base))
            queue = f"bench-{uuid.uuid4().hex[:8]}"
            settings = load_settings(source, service={"redis_url": args.redis, "queue_name": queue})
            reembed_s, status, steady = time_reembed(model, settings, args.workers)
        assert status["complete"] and status["images_done"] == args.images, status
        rows.append({"round": r, "index_s": index_s, "index_images_per_s": args.images / index_s,
                     "index_loop_images_per_s": loop_rate, "reembed_s": reembed_s,
                     "reembed_images_per_s": args.images / reembed_s,
                     "reembed_steady_images_per_s": steady, "retries": status["retries"]})
        print(f"round {r}: index {index_s:.1f}s, re-embedding {reembed_s:.1f}s", file=sys.stderr)

    idx = statistics.median(row["index_images_per_s"] for row in rows)
    rem = statistics.median(row["reembed_images_per_s"] for row in rows)
    idx_loop = statistics.median(row["index_loop_images_per_s"] for row in rows)
    steadies = [row["reembed_steady_images_per_s"] for row in rows if row["reembed_steady_images_per_s"]]
    rem_steady = statistics.median(steadies) if steadies else float("nan")
    result = {"images": args.images, "model": ARCH + " (random weights)", "rq_workers": args.workers,
              "cores": os.cpu_count(), "rounds": rows, "index_images_per_s": idx, "reembed_images_per_s": rem,
              "ratio": rem / idx, "index_loop_images_per_s": idx_loop, "reembed_steady_images_per_s": rem_steady,
              "steady_ratio": rem_steady / idx_loop}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| {args.images} images, {ARCH} (random weights), {os.cpu_count()} cores | images/s |")
    print("|---|---|")
    print(f"| `index` (index_folders: model load, scan, embed, write, sync) | {idx:.2f} |")
    print(f"| re-embedding on RQ, {args.workers} worker(s) (enqueue -> settled and synced) | {rem:.2f} |")
    print(f"| ratio re-embedding / index (target >= 0.8) | {rem / idx:.2f} |")
    print(f"| steady: `index` embed loop / re-embedding from its 2nd batch | {idx_loop:.2f} / {rem_steady:.2f} |")
    print(f"| steady ratio | {rem_steady / idx_loop:.2f} |")


if __name__ == "__main__":
    main()
