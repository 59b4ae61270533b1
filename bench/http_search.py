"""The search service over HTTP against the same searches in process, on 100,000 vectors, in one run.

Run: .venv/bin/python bench/http_search.py [--images 100000] [--rounds 3] [--levels 1,4,16]
     .venv/bin/python bench/http_search.py --stacks     # uvicorn with h11 + asyncio vs httptools + uvloop
     .venv/bin/python bench/http_search.py --ab REV     # the service of commit REV vs the working tree's

Setup: ``bench/cold_search.py``'s (reused, cached in bench/_data): the SigLIP-base architecture with random weights
(768-d), its runtimes prepared the way ``index`` prepares them (precision auto), and an index directory whose
catalog holds ``--images`` random unit vectors with its saved search index synced (``VectorStore.sync``: at 100k,
qdrant_edge HNSW m 16 / ef_construct 100, INT8 + rescoring). The model is served as the seed's SigLIP collection
(``SIGLIP_MODEL_NAME`` names the local checkpoint).

Measured, per round (rounds alternate; the machine is shared, so medians of rounds and ratios within a round):

* **HTTP**: ``img-search serve`` (uvicorn, one process, as users start it; access log on) on 127.0.0.1, loaded by
  an asyncio client (httpx.AsyncClient, one connection per concurrent caller, keep-alive) at each concurrency
  level: ``GET /api/v1/images/{id}/similar?limit=10`` (search by id: a stored vector, no model) and
  ``POST /api/v1/search {"query", "limit": 10}`` (text: the query encoded by the ONNX Runtime text tower the
  service loads, ``query_encoder_factory``). Latency is the client's, send to body read; ``took_ms`` (the route's
  own time) is kept as well.
* **In process**: a child process opens the same collection the way the service does (``open_searcher`` with the
  ONNX Runtime text encoder) and calls ``Searcher.search_id`` / ``search_text`` with the same ids and texts, from
  as many threads as the level's concurrency.

Then one search from the shell, whole process (spawn to exit), interleaved ``--cli-repeats`` times:
``img-search search QUERY --json --server URL`` against the cold ``img-search search QUERY --json``.

Writes bench/results/http_search.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from cold_search import DATA, MODEL_DIR, RESULTS, XDG, run_child  # noqa: E402

OUT = ROOT / "bench" / "_out"
PY = str(ROOT / ".venv" / "bin" / "python")
CLI = str(ROOT / ".venv" / "bin" / "img-search")
TEXTS = [
    "a dog on the beach", "sunset over mountains", "a red car parked in the street", "two children playing football",
    "a bowl of ramen", "snow on pine trees", "a cat sleeping on a sofa", "the eiffel tower at night",
    "a birthday cake with candles", "people hiking in the fog", "an old wooden boat", "city skyline in the rain",
    "a white horse in a field", "coffee and a croissant", "fireworks over the harbour", "a bicycle against a wall",
]
LIMIT = 10


def env_for(index_dir: Path) -> dict[str, str]:
    """What the server, the in-process child and the CLI runs share: the model's runtime cache, no Hub, the model
    as the seed's SigLIP collection."""
    return {**os.environ, "XDG_CACHE_HOME": str(XDG), "HF_HUB_OFFLINE": "1", "IMG_SEARCH_INDEX_DIR": str(index_dir),
            "SIGLIP_MODEL_NAME": str(MODEL_DIR), "TOKENIZERS_PARALLELISM": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary(latencies_s: list[float], wall_s: float, took_ms: list[float] | None = None) -> dict[str, Any]:
    ms = [x * 1e3 for x in latencies_s]
    out = {"n": len(ms), "rps": len(ms) / wall_s, "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
           "mean_ms": float(np.mean(ms)), "max_ms": float(np.max(ms))}
    if took_ms:
        out["server_p50_ms"], out["server_p99_ms"] = pct(took_ms, 50), pct(took_ms, 99)
    return out


# ------------------------------------------------------------------------------------------------- in process
INPROC = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from img_search.service.config import load_service_settings
from img_search.search.searcher import open_searcher

spec = json.loads(sys.argv[1])
settings = load_service_settings(spec["index_dir"])
searcher = open_searcher(settings)  # the service's default_opener: query_encoder_factory (ONNX Runtime text tower)
searcher.encoder.encode_texts(["a photo"])  # the service's warm-up query
calls = {"id": lambda i, x: searcher.search_id(x, limit=spec["limit"]),
         "text": lambda i, x: searcher.search_text(x, limit=spec["limit"])}
out = {"encoder": type(searcher.encoder).__name__, "runs": {}}
for kind, items in (("id", spec["ids"]), ("text", spec["texts"])):
    fn = calls[kind]
    for x in items[:20]:
        fn(0, x)
    for level in spec["levels"]:
        n = spec["requests"][kind][str(level)]
        work = [items[k % len(items)] for k in range(n)]
        lat = [0.0] * n
        def one(k):
            t = time.perf_counter()
            fn(k, work[k])
            lat[k] = time.perf_counter() - t
        t0, c0 = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(level) as pool:
            list(pool.map(one, range(n)))
        out["runs"][f"{kind}@{level}"] = {"lat": lat, "wall": time.perf_counter() - t0,
                                          "cpu": time.process_time() - c0}
print(json.dumps(out))
"""


def run_inprocess(index_dir: Path, ids: list[int], texts: list[str], levels: list[int],
                  requests: dict[str, dict[str, int]]) -> dict[str, Any]:
    spec = {"index_dir": str(index_dir), "ids": ids, "texts": texts, "levels": levels, "requests": requests,
            "limit": LIMIT}
    proc = subprocess.run([PY, "-c", INPROC, json.dumps(spec)], capture_output=True, text=True,
                          env=env_for(index_dir), check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"in-process child failed: {proc.stderr[-2000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"encoder": raw["encoder"],
            "runs": {key: {**summary(r["lat"], r["wall"]), "cpu_ms_per_request": r["cpu"] * 1e3 / len(r["lat"])}
                     for key, r in raw["runs"].items()}}


# ------------------------------------------------------------------------------------------------- HTTP
# serve the img_search package of another folder (an older commit): the editable install's finder is dropped so
# that the folder's copy is the one imported
LAUNCH = r"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
import img_search, uvicorn
assert img_search.__file__.startswith(sys.argv[1]), img_search.__file__
uvicorn.run("img_search.service.app:app_from_env", factory=True, host="127.0.0.1", port=int(sys.argv[2]))
"""


class Server:
    """``img-search serve`` on a free loopback port, started and stopped by this benchmark."""

    def __init__(self, index_dir: Path, log: Path, stack: str | None = None, package: Path | None = None) -> None:
        """``stack``: None for ``img-search serve`` (uvicorn picks httptools and uvloop when installed), else
        ``"h11"`` / ``"httptools"``: the same app through ``uvicorn --factory`` with that HTTP parser (and the
        asyncio / uvloop event loop). ``package``: serve the ``img_search`` package found in this folder instead of
        the installed one (``--ab``)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        cmd = [CLI, "serve", "--index-dir", str(index_dir), "--port", str(self.port)]
        if stack is not None:
            cmd = [str(ROOT / ".venv" / "bin" / "uvicorn"), "--factory", "img_search.service.app:app_from_env",
                   "--port", str(self.port), "--http", stack, "--loop", "asyncio" if stack == "h11" else "uvloop"]
        if package is not None:
            cmd = [PY, "-c", LAUNCH, str(package), str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env_for(index_dir))
        import httpx

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {log}")
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server did not start; see {log}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _cpu_s(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _load(url: str, kind: str, items: list[Any], n: int, level: int, server_pid: int) -> dict[str, Any]:
    import httpx

    lat: list[float] = []
    took: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=level, max_keepalive_connections=level)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def request(x: Any) -> httpx.Response:
            if kind == "id":
                return await client.get(f"/api/v1/images/{x}/similar", params={"limit": LIMIT})
            if kind == "floor":  # an unknown route: the client, uvicorn, routing and the JSON 404, no search
                return await client.get(f"/api/v1/no-such-route/{x}")
            return await client.post("/api/v1/search", json={"query": x, "limit": LIMIT})

        for x in items[:20]:  # warm the connections and the route
            await request(x)
        counter = iter(range(n))

        async def caller() -> None:
            nonlocal errors
            for k in counter:
                t = time.perf_counter()
                response = await request(items[k % len(items)])
                body = response.json()
                lat.append(time.perf_counter() - t)
                if response.status_code != (404 if kind == "floor" else 200):
                    errors += 1
                elif "took_ms" in body:
                    took.append(float(body["took_ms"]))

        t0, s0, c0 = time.perf_counter(), _cpu_s(server_pid), time.process_time()
        await asyncio.gather(*(caller() for _ in range(level)))
        wall = time.perf_counter() - t0
        server_cpu, client_cpu = _cpu_s(server_pid) - s0, time.process_time() - c0
    return {**summary(lat, wall, took), "errors": errors, "cpu_ms_per_request": server_cpu * 1e3 / n,
            "client_cpu_ms_per_request": client_cpu * 1e3 / n}


def run_http(server: Server, ids: list[int], texts: list[str], levels: list[int],
             requests: dict[str, dict[str, int]]) -> dict[str, Any]:
    runs = {}
    url, pid = server.url, server.proc.pid
    for kind, items in (("id", ids), ("text", texts)):
        for level in levels:
            runs[f"{kind}@{level}"] = asyncio.run(_load(url, kind, items, requests[kind][str(level)], level, pid))
    for level in (levels[0], levels[-1]):
        runs[f"floor@{level}"] = asyncio.run(_load(url, "floor", ids, requests["id"][str(level)], level, pid))
    return {"runs": runs}


# ------------------------------------------------------------------------------------------------- CLI
def run_cli(index_dir: Path, url: str, repeats: int) -> dict[str, list[float]]:
    query = TEXTS[0]
    variants = {"server": [CLI, "search", query, "--json", "--server", url],
                "cold": [CLI, "search", query, "--json"]}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    env = env_for(index_dir)
    saved = dict(os.environ)
    os.environ.update(env)  # run_child (cold_search) passes os.environ on
    try:
        for _ in range(repeats):
            for name, cmd in variants.items():
                time.sleep(0.3)
                wall, _, out = run_child(cmd)
                if len(json.loads(out)) != LIMIT:
                    raise RuntimeError(f"{name}: expected {LIMIT} hits")
                walls[name].append(wall)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return walls


# ------------------------------------------------------------------------------------------------- report
def med(rounds: list[dict[str, Any]], side: str, key: str, field: str) -> float:
    return statistics.median(r[side]["runs"][key][field] for r in rounds)


def ratio(rounds: list[dict[str, Any]], key: str, field: str, invert: bool = False) -> float:
    """Median over rounds of HTTP / in-process (``invert``: in-process / HTTP, for throughput)."""
    values = []
    for r in rounds:
        h, i = r["http"]["runs"][key][field], r["inproc"]["runs"][key][field]
        values.append(i / h if invert else h / i)
    return statistics.median(values)


def report(result: dict[str, Any]) -> None:
    rounds = result["rounds"]
    print(f"{result['images']:,} vectors ({result['dim']}-d); {len(rounds)} rounds; load average "
          f"{result['loadavg_before'][0]:.1f} -> {result['loadavg_after'][0]:.1f}; text encoder "
          f"{rounds[0]['inproc']['encoder']}; uvicorn extras installed: {result.get('uvicorn_extras_installed')}\n")
    print("| search | concurrency | HTTP req/s | in-process req/s | HTTP p50 ms | HTTP p99 ms | in-process p50 ms "
          "| in-process p99 ms | route's own p50 / p99 ms | p50 ratio HTTP/in-process | p99 ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in rounds[0]["http"]["runs"]:
        kind, level = key.split("@")
        if kind == "floor":
            continue
        print(f"| {'by id' if kind == 'id' else 'by text'} | {level} | {med(rounds, 'http', key, 'rps'):.0f} | "
              f"{med(rounds, 'inproc', key, 'rps'):.0f} | {med(rounds, 'http', key, 'p50_ms'):.2f} | "
              f"{med(rounds, 'http', key, 'p99_ms'):.2f} | {med(rounds, 'inproc', key, 'p50_ms'):.2f} | "
              f"{med(rounds, 'inproc', key, 'p99_ms'):.2f} | {med(rounds, 'http', key, 'server_p50_ms'):.2f} / "
              f"{med(rounds, 'http', key, 'server_p99_ms'):.2f} | {ratio(rounds, key, 'p50_ms'):.2f} | "
              f"{ratio(rounds, key, 'p99_ms'):.2f} |")
    for key in [k for k in rounds[0]["http"]["runs"] if k.startswith("floor@")]:
        print(f"| floor: unknown route, JSON 404 (no search) | {key.split('@')[1]} | "
              f"{med(rounds, 'http', key, 'rps'):.0f} | - | {med(rounds, 'http', key, 'p50_ms'):.2f} | "
              f"{med(rounds, 'http', key, 'p99_ms'):.2f} | - | - | - | - | - |")
    print("\n| CPU ms per request (medians) | concurrency | server process | load client | in-process "
          "(searcher, all threads) |\n|---|---|---|---|---|")
    for key in rounds[0]["http"]["runs"]:
        kind, level = key.split("@")
        inproc = med(rounds, "inproc", key, "cpu_ms_per_request") if key in rounds[0]["inproc"]["runs"] else None
        print(f"| {kind} | {level} | {med(rounds, 'http', key, 'cpu_ms_per_request'):.2f} | "
              f"{med(rounds, 'http', key, 'client_cpu_ms_per_request'):.2f} | "
              f"{'-' if inproc is None else f'{inproc:.2f}'} |")
    errors = sum(r["http"]["runs"][k]["errors"] for r in rounds for k in r["http"]["runs"])
    print(f"\nHTTP errors: {errors}; per-round p99 by id (ms): "
          + "; ".join(f"c={k.split('@')[1]}: " + ", ".join(f"{r['http']['runs'][k]['p99_ms']:.1f}" for r in rounds)
                      for k in rounds[0]["http"]["runs"] if k.startswith("id@")))
    cli = result["cli"]
    print("\n| one `img-search search` (whole process) | wall s, median | min-max |\n|---|---|---|")
    for name, label in (("server", "through a running server (--server)"), ("cold", "cold (loads the collection "
                                                                               "and the text tower)")):
        walls = cli[name]
        print(f"| {label} | {statistics.median(walls):.3f} | {min(walls):.3f}-{max(walls):.3f} |")
    print(f"\ncold / server: {statistics.median(cli['cold']) / statistics.median(cli['server']):.1f}x")


def stack_ab(index_dir: Path, ids: list[int], rounds: int, n: int) -> None:
    """The same app under uvicorn with h11 + asyncio and with httptools + uvloop, loaded alternately (by id at
    concurrency 1 and 4, and the 404 floor at 1): what the HTTP parser and event loop cost, within one run."""
    servers = {stack: Server(index_dir, OUT / f"http_search_{stack}.log", stack) for stack in ("h11", "httptools")}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in servers}
    try:
        for _ in range(rounds):
            for stack, server in servers.items():
                for kind, level in (("id", 1), ("id", 4), ("floor", 1)):
                    r = asyncio.run(_load(server.url, kind, ids, n, level, server.proc.pid))
                    runs[stack].setdefault(f"{kind}@{level}", []).append(r)
    finally:
        for server in servers.values():
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_search_stacks.json").write_text(json.dumps({"rounds": rounds, "requests": n, "runs": runs,
                                                                  "loadavg": os.getloadavg()}, indent=1))
    print("| uvicorn stack | search | concurrency | req/s | p50 ms | p99 ms | server CPU ms/request |\n"
          "|---|---|---|---|---|---|---|")
    for stack, by_key in runs.items():
        for key, rs in by_key.items():
            kind, level = key.split("@")

            def m(field: str, rs: list[dict[str, Any]] = rs) -> float:
                return statistics.median(r[field] for r in rs)

            print(f"| {stack} | {kind} | {level} | {m('rps'):.0f} | {m('p50_ms'):.2f} | {m('p99_ms'):.2f} | "
                  f"{m('cpu_ms_per_request'):.2f} |")


def code_ab(index_dir: Path, ids: list[int], rounds: int, n: int, rev: str) -> None:
    """The service of commit ``rev`` against the working tree's, alternately loaded by id at concurrency 1, 4 and
    16, ``rounds`` times (bench/results/http_search_ab.json)."""
    with tempfile.TemporaryDirectory(prefix="http_search_ab_") as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "img_search"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        servers = {rev: Server(index_dir, OUT / "http_search_ab_old.log", package=Path(tmp)),
                   "working tree": Server(index_dir, OUT / "http_search_ab_new.log", package=None)}
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in servers}
        try:
            for _ in range(rounds):
                for name, server in servers.items():
                    for level in (1, 4, 16):
                        r = asyncio.run(_load(server.url, "id", ids, n, level, server.proc.pid))
                        runs[name].setdefault(f"id@{level}", []).append(r)
        finally:
            for server in servers.values():
                server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_search_ab.json").write_text(json.dumps({"rev": rev, "rounds": rounds, "requests": n,
                                                              "runs": runs, "loadavg": os.getloadavg()}, indent=1))
    print("| code | concurrency | req/s | p50 ms | p99 ms | server CPU ms/request |\n|---|---|---|---|---|---|")
    for name, by_key in runs.items():
        for key, rs in by_key.items():
            def m(field: str, rs: list[dict[str, Any]] = rs) -> float:
                return statistics.median(r[field] for r in rs)

            print(f"| {name} | {key.split('@')[1]} | {m('rps'):.0f} | {m('p50_ms'):.2f} | {m('p99_ms'):.2f} | "
                  f"{m('cpu_ms_per_request'):.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--id-requests", type=int, default=600, help="requests by id per level")
    ap.add_argument("--text-requests", type=int, default=150, help="requests by text per level")
    ap.add_argument("--cli-repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stacks", action="store_true", help="only compare uvicorn's h11 + asyncio with httptools + "
                                                         "uvloop (bench/results/http_search_stacks.json)")
    ap.add_argument("--ab", metavar="REV", help="only compare the service of git commit REV with the working tree's "
                                               "(by id; bench/results/http_search_ab.json)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    # the cached model, runtimes and 100k-vector index of bench/cold_search.py (built there on first use)
    subprocess.run([PY, str(ROOT / "bench" / "cold_search.py"), "--setup-only", "--images", str(args.images)],
                   check=True)
    index_dir = DATA / f"cold_index_{args.images}"
    rng = np.random.default_rng(args.seed)
    ids = [int(i) for i in rng.integers(1, args.images + 1, size=2_000)]  # catalog ids are 1..n (one insert run)
    texts = [f"{t} {k}" for k in range(20) for t in TEXTS]  # 320 distinct queries: nothing is cached
    rng.shuffle(texts)
    requests = {"id": {str(c): args.id_requests for c in levels}, "text": {str(c): args.text_requests for c in levels}}
    OUT.mkdir(parents=True, exist_ok=True)
    if args.stacks:
        stack_ab(index_dir, ids, args.rounds, args.id_requests)
        return
    if args.ab:
        code_ab(index_dir, ids, args.rounds, args.id_requests, args.ab)
        return
    import importlib.util

    stack = {m: importlib.util.find_spec(m) is not None for m in ("httptools", "uvloop")}
    result: dict[str, Any] = {"images": args.images, "dim": 768, "levels": levels, "requests": requests,
                              "uvicorn_extras_installed": stack,
                              "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
                              "loadavg_before": os.getloadavg(), "rounds": []}
    server = Server(index_dir, OUT / "http_search_server.log")
    try:
        health = __import__("httpx").get(server.url + "/api/v1/health", timeout=10).json()
        result["collections"] = [{k: c[k] for k in ("name", "points", "backend", "model_loaded")}
                                 for c in health["collections"]]
        print("serving:", result["collections"], file=sys.stderr)
        for r in range(args.rounds):
            t0 = time.perf_counter()
            inproc = run_inprocess(index_dir, ids, texts, levels, requests)
            http = run_http(server, ids, texts, levels, requests)
            result["rounds"].append({"inproc": inproc, "http": http, "loadavg": os.getloadavg()})
            print(f"round {r + 1}/{args.rounds}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        result["cli"] = run_cli(index_dir, server.url, args.cli_repeats)
    finally:
        server.stop()
    result["loadavg_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_search.json").write_text(json.dumps(result, indent=1))
    report(result)


if __name__ == "__main__":
    main()
