"""Filtered search over 100,000 images: p50 / p99 with two filters against the same search without filters.

Run: .venv/bin/python bench/filtered_search.py [--images 100000] [--queries 200] [--backend qdrant_edge] [--compare]
                                                [--f32]
     .venv/bin/python bench/filtered_search.py --sweep [--backend faiss]   (the planner's cost points)
     .venv/bin/python bench/filtered_search.py --recall                    (misses of the int8 pass's candidates)

Setup (cached in bench/_data/filtered-N): a catalog of N images with random 768-d unit vectors (SigLIP-base's
dimension; the search cost does not depend on the values), each with photo metadata: a capture date spread over
2000-2024 and a camera (one of 1,000 names, "cam-000" .. "cam-999"), and the saved search index synced as `index`
leaves it (the default ANN backend at this size, or ``--backend``).

Two filters are combined, a date range and a camera list, chosen so that together they keep 50 %, 5 % and 0.1 % of
the collection. Each query runs ``Searcher.search_text`` end to end (parse, filter, search, fusion, hits resolved
from the catalog, limit 10) with a stub text encoder that returns precomputed query vectors, so the model's time
(identical with and without filters) is left out. The variants are interleaved query by query in one process so that
the machine's noise hits all of them alike; the ratio filtered / unfiltered is the figure to read. Each filtered
row names the way the collection's planner answered it (``Collection.plan_filtered``: exact, filtered, overfetch);
``--compare`` adds, interleaved in the same loop, each filter answered the other ways too (forced through
``Collection.filter_strategy``), which is how the planner's constants were checked. ``--f32`` adds, for each filter
answered exactly, the same exact search with the int8 first pass switched off (``VectorLookup.use_compact``: the
float32 rows of vectors.npy only). The load average (1 min) is recorded before and after the timed loop. A cached
collection whose generation lacks the int8 copy (search/compact.py) gets it first (``VectorStore.sync`` adds it).

``--recall`` measures how often the int8 pass's ``candidate_count(k)`` candidates miss one of the true top 10 (then
the exact search would not be exact): for the bench's random vectors and two clustered sets of the same size
(in memory: 200 clusters at cosine ~0.78 to their centre, queries near a centre; and an anisotropic set, 500 clusters
around a shared mean direction with 8 outlier dimensions, queries offset from the images like text queries), 1,000
queries at 1 %, 5 % and 20 % allowed; it records the misses and the worst int8 rank of a true top-10 row.
Results: bench/results/filtered_search_recall.json.

``--sweep`` measures what the planner's constants (``img_search.search.collection``) are fitted to: for random allowed
sets of 0.1 % to 50 % of the collection, each way of answering (exact over vectors.npy, the backend's own filtered
search, over-fetch) timed on its own at the collection level (``Collection._search_allowed`` with
``filter_strategy`` forced; no filter evaluation, no hits), interleaved with the unfiltered index search, 150 queries
per point, in a new random order each query; p50 / p99 in ms. Results: bench/results/filtered_sweep_<backend>.json.
Results: JSON to bench/results/filtered_search_<backend>.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
RESULTS = ROOT / "bench" / "results"
DIM = 768
N_CAMERAS = 1000


class QueryEncoder:
    """Returns the next precomputed vector for every text (the encoder protocol's text side only)."""

    def __init__(self, vectors: np.ndarray) -> None:
        from img_search.embedding.base import ModelInfo

        self.info = ModelInfo("bench/filtered", "siglip", DIM, float(np.log(10.0)), -10.0, 64)
        self.device = "cpu"
        self.vectors, self.i = vectors, 0

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        out = self.vectors[self.i % len(self.vectors)][None, :]
        self.i += 1
        return np.repeat(out, len(texts), axis=0)

    def encode_images(self, images: list[object]) -> np.ndarray:
        raise NotImplementedError

    def image_preprocessor(self) -> object:
        raise NotImplementedError

    def encode_batch(self, batch: object) -> np.ndarray:
        raise NotImplementedError


def build(index_dir: Path, n: int, backend: str | None) -> None:
    from img_search.catalog import Catalog, ImageRecord, PhotoMetadata
    from img_search.search.store import VectorStore
    from img_search.settings import SearchSettings

    index_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    days = rng.integers(0, 25 * 365, n)  # 2000-01-01 + days
    cameras = rng.integers(0, N_CAMERAS, n)
    base = np.datetime64("2000-01-01T12:00:00")
    with Catalog.in_dir(index_dir) as catalog:
        model_id = catalog.ensure_model("bench/filtered", family="siglip", dim=DIM, logit_scale=float(np.log(10.0)),
                                        logit_bias=-10.0)
        for start in range(0, n, 2000):
            m = min(2000, n - start)
            vecs = rng.standard_normal((m, DIM)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            records = []
            for i in range(start, start + m):
                taken = str(base + np.timedelta64(int(days[i]), "D"))
                meta = PhotoMetadata(taken_at=taken, camera_make="Bench", camera_model=f"cam-{cameras[i]:03d}")
                records.append(ImageRecord(f"/photos/{i // 500:03d}/img_{i:06d}.jpg", 100_000 + i,
                                           1_700_000_000 + i, i.to_bytes(16, "little"), 1024, 768, metadata=meta))
            catalog.record(records, model_id=model_id, vectors=vecs)
        model = catalog.get_model("bench/filtered")
        assert model is not None
        search = SearchSettings(ann_backend=backend) if backend else SearchSettings()
        VectorStore(index_dir, catalog, model, search).sync()


def filters_for(selectivity: float) -> dict[str, object]:
    """A date range and a camera list whose product keeps ``selectivity`` of the images (dates uniform over 25
    years, cameras uniform over 1,000): the date range keeps sqrt(s), the cameras the rest."""
    from img_search.search.filters import build_filter

    date_share = min(1.0, float(np.sqrt(selectivity)))
    camera_share = selectivity / date_share
    n_cams = max(1, round(camera_share * N_CAMERAS))
    span_days = round(date_share * 25 * 365)
    start = np.datetime64("2000-01-01")
    end = start + np.timedelta64(span_days, "D")
    cams = [f"cam-{i:03d}" for i in range(n_cams)]
    return {"filter": build_filter(after=str(start), before=str(end), cameras=cams),
            "expected_share": (span_days / (25 * 365)) * (n_cams / N_CAMERAS)}


SWEEP_SHARES = (0.001, 0.01, 0.03, 0.05, 0.08, 0.12, 0.2, 0.5)


def _clustered_sets(n: int, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two clustered (n, DIM) float32 sets with 1,000 unit queries each (see the module docstring)."""
    centres = rng.standard_normal((200, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = centres[rng.integers(0, 200, n)] + rng.standard_normal((n, DIM)) * 0.8 / np.sqrt(DIM)
    queries = centres[rng.integers(0, 200, 1000)] + rng.standard_normal((1000, DIM)) * 0.04
    sets = {"clustered": (rows.astype(np.float32), queries)}
    scale = np.exp(rng.standard_normal(DIM) * 0.5)
    scale[rng.choice(DIM, 8, replace=False)] *= 6
    mean_img, mean_txt = rng.standard_normal((2, DIM))
    mean_img /= np.linalg.norm(mean_img)
    mean_txt /= np.linalg.norm(mean_txt)
    centres = rng.standard_normal((500, DIM)) * scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = scale / np.linalg.norm(scale)
    rows = 0.6 * mean_img + 0.6 * centres[rng.integers(0, 500, n)] + 0.5 * rng.standard_normal((n, DIM)) * noise
    queries = 0.6 * mean_txt + 0.3 * centres[rng.integers(0, 500, 1000)]
    queries += 0.5 * rng.standard_normal((1000, DIM)) * noise
    sets["anisotropic"] = (rows.astype(np.float32), queries)
    return {name: (r, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
            for name, (r, q) in sets.items()}


def recall(collection: object, queries: np.ndarray, k: int = 10) -> None:
    """Misses of the int8 pass's candidates against the float32 exact top k (see the module docstring)."""
    from img_search.search.collection import Collection
    from img_search.search.compact import CompactVectors, candidate_count, quantize
    from img_search.search.store import VectorLookup

    assert isinstance(collection, Collection)
    view = collection._view
    assert view.vectors is not None and view.vectors.compact is not None, "needs a generation with the int8 copy"
    rng = np.random.default_rng(3)
    n = len(view.vectors.ids)
    sets: dict[str, tuple[VectorLookup, np.ndarray]] = {"bench (random)": (view.vectors, queries)}
    for name, (rows, qs) in _clustered_sets(n, rng).items():
        sets[name] = (VectorLookup(np.arange(n, dtype=np.int64), rows, compact=CompactVectors(*quantize(rows))), qs)
    n_cand = candidate_count(k)
    out = []
    print(f"k {k}, {n_cand} candidates re-scored; 1,000 queries per row")
    for name, (lookup, qs) in sets.items():
        assert lookup.compact is not None
        inv = lookup.inverse_norms()
        for share in (0.01, 0.05, 0.2):
            misses, worst, differ = 0, 0, 0
            for i in range(1000):
                q = qs[i % len(qs)]
                rows = np.sort(rng.choice(n, size=int(share * n), replace=False))
                exact = lookup._dots(q, rows) * inv[rows]
                approx = lookup.compact.scores(q, rows)
                rank = np.empty(rows.size, np.int64)
                rank[np.argsort(-approx, kind="stable")] = np.arange(rows.size)
                top = np.argsort(-exact, kind="stable")[:k]
                worst_here = int(rank[top].max())  # 0-based rank of the worst-placed true top-k row
                worst = max(worst, worst_here)
                misses += worst_here >= n_cand
                allowed = lookup.ids[rows]
                lookup.use_compact = True
                got = lookup.top_k(q[None], allowed, k)
                lookup.use_compact = False
                want = lookup.top_k(q[None], allowed, k)
                lookup.use_compact = True
                differ += not (np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]))
            row = {"data": name, "share": share, "allowed": int(share * n), "queries": 1000, "candidates": n_cand,
                   "misses": misses, "results_differ": differ, "worst_rank": worst + 1}
            out.append(row)
            print(f"{name:>16} {share * 100:>4g} %: misses {misses}, results differing {differ}, worst int8 rank of "
                  f"a true top-{k} row {worst + 1} (of {int(share * n)})", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "filtered_search_recall.json"
    path.write_text(json.dumps({"images": n, "k": k, "rows": out}, indent=2))
    print(f"-> {path.relative_to(ROOT)}")


def sweep(collection: object, queries: np.ndarray, n_queries: int = 150) -> None:
    """Each way of answering a filtered search, alone, over random allowed sets (see the module docstring)."""
    from img_search.search.collection import STRATEGIES, Collection

    assert isinstance(collection, Collection)
    view = collection._view  # the bench times the planner's building blocks directly
    n = len(collection)
    assert view.vectors is not None, "the sweep needs a saved generation with vectors.npy"
    ids = view.vectors.ids
    rng = np.random.default_rng(2)
    out: list[dict[str, object]] = []
    print(f"backend {collection.backend}, {n} images; p50 / p99 ms over {n_queries} interleaved queries")
    for share in SWEEP_SHARES:
        allowed = np.sort(rng.choice(ids, size=max(1, int(share * n)), replace=False))

        def answer(strategy: str, q: np.ndarray, allowed: np.ndarray = allowed) -> object:
            collection.filter_strategy = strategy
            return collection._search_allowed(view, q, 10, allowed)

        timed = {name: (lambda q, name=name: answer(name, q)) for name in STRATEGIES if name != "exact" or share <= 0.2}
        timed["unfiltered"] = lambda q: view.index.search(q, 10)
        times: dict[str, list[float]] = {name: [] for name in timed}
        for i in range(10):
            for fn in timed.values():
                fn(queries[i % len(queries)][None])
        load = os.getloadavg()[0]
        names = list(timed)
        for i in range(n_queries):
            q = queries[i % len(queries)][None]
            # a new order every query: a strategy that reads many rows evicts the CPU caches for whichever runs next
            for name in rng.permutation(names).tolist():
                fn = timed[name]
                t0 = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - t0)
        collection.filter_strategy = None
        row: dict[str, object] = {"share": share, "allowed": int(allowed.size), "load_average": load,
                                  "planned": collection.plan_filtered(int(allowed.size), 10)}
        line = f"{share * 100:>6g} % {allowed.size:>7}  load {load:4.2f}  planned {row['planned']:<9}"
        for name, values in times.items():
            t = np.array(values) * 1000
            row[name] = [float(np.percentile(t, 50)), float(np.percentile(t, 99))]
            line += f" | {name} {row[name][0]:6.2f} / {row[name][1]:6.2f}"  # type: ignore[index]
        out.append(row)
        print(line, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"filtered_sweep_{collection.backend}.json"
    path.write_text(json.dumps({"images": n, "backend": collection.backend, "queries": n_queries, "rows": out},
                               indent=2))
    print(f"-> {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backend", default=None, help="search backend to save (default: as `index` would choose)")
    parser.add_argument("--compare", action="store_true", help="also time every filter answered each other way")
    parser.add_argument("--sweep", action="store_true", help="time each strategy alone over random allowed sets")
    parser.add_argument("--f32", action="store_true", help="also time each exact filter without the int8 pass")
    parser.add_argument("--recall", action="store_true", help="count the int8 candidates' misses, then exit")
    args = parser.parse_args()

    from img_search.catalog import Catalog
    from img_search.search import compact as compact_mod
    from img_search.search.collection import STRATEGIES, Collection
    from img_search.search.searcher import Searcher, SearchOptions
    from img_search.search.store import VectorStore
    from img_search.settings import SearchSettings

    index_dir = DATA / f"filtered-{args.images}-{args.backend or 'default'}"
    if not (index_dir / "vectors").exists():
        import shutil

        shutil.rmtree(index_dir, ignore_errors=True)
        t0 = time.perf_counter()
        build(index_dir, args.images, args.backend)
        print(f"built {args.images} images in {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.queries, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    settings = SearchSettings(ann_backend=args.backend) if args.backend else SearchSettings()
    with Catalog.in_dir(index_dir) as catalog:  # a cached generation saved before the int8 copy gets it
        model = catalog.get_model("bench/filtered")
        assert model is not None
        t0 = time.perf_counter()
        VectorStore(index_dir, catalog, model, settings).sync()
        print(f"index synced in {time.perf_counter() - t0:.1f} s")
    collection = Collection.open(index_dir, "bench/filtered", settings)
    lookup = collection._view.vectors
    int8 = lookup is not None and lookup.compact is not None and compact_mod.kernel() is not None
    print(f"generation {collection.generation}: int8 first pass {'on' if int8 else 'off'}")
    if args.sweep:
        sweep(collection, queries)
        return
    if args.recall:
        recall(collection, queries)
        return
    # variant name -> (search options, forced strategy or None for the planner's choice, int8 pass on)
    variants: dict[str, tuple[SearchOptions, str | None, bool]] = {"none": (SearchOptions(hybrid="off"), None, True)}
    allowed: dict[str, int] = {"none": len(collection)}
    plans: dict[str, str] = {"none": "-"}
    for s in (0.5, 0.05, 0.001):
        spec = filters_for(s)
        opts = SearchOptions(filter=spec["filter"], hybrid="off")  # type: ignore[arg-type]
        n_allowed = len(collection.allowed_ids(opts.filter))
        planned = collection.plan_filtered(n_allowed, 10)
        variants[f"{s:g}"] = (opts, None, True)
        allowed[f"{s:g}"] = n_allowed
        with_int8 = planned == "exact" and int8 and compact_mod.worth_it(n_allowed, 10)
        plans[f"{s:g}"] = planned + (" int8" if with_int8 else "")
        if args.f32 and with_int8:
            name = f"{s:g} exact-f32"
            variants[name] = (opts, "exact", False)
            allowed[name], plans[name] = n_allowed, "exact f32"
        if args.compare:
            for strategy in STRATEGIES:
                if strategy != planned:
                    name = f"{s:g} {strategy}"
                    variants[name] = (opts, strategy, True)
                    allowed[name], plans[name] = n_allowed, strategy
    searchers = {name: Searcher(collection, QueryEncoder(queries)) for name in variants}  # type: ignore[arg-type]

    def run(name: str, text: str) -> int:
        opts, strategy, use_int8 = variants[name]
        collection.filter_strategy = strategy
        if lookup is not None:
            lookup.use_compact = use_int8
        return len(searchers[name].search_text(text, limit=10, options=opts))

    # warm up: the filter columns load once per collection view, the index's and vectors.npy's pages come into
    # memory (as in a running service); 20 queries per variant
    for _ in range(20):
        for name in variants:
            run(name, "warm up")
    times: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, list[int]] = {name: [] for name in variants}
    load_before = os.getloadavg()[0]
    for _ in range(args.queries):
        for name in variants:
            t0 = time.perf_counter()
            found = run(name, "q")
            times[name].append(time.perf_counter() - t0)
            counts[name].append(found)
    load_after = os.getloadavg()[0]
    collection.filter_strategy = None
    if lookup is not None:
        lookup.use_compact = True
    base = np.array(times["none"]) * 1000
    b50, b99 = float(np.percentile(base, 50)), float(np.percentile(base, 99))
    rows = []
    print(f"backend {collection.backend}, {len(collection)} images, {args.queries} queries, limit 10, "
          f"load average {load_before:.2f} -> {load_after:.2f}")
    print(f"{'filter keeps':>14}  {'images':>8}  {'answered':>10}  {'p50 ms':>8}  {'p99 ms':>8}  {'p50 x':>6}  "
          f"{'p99 x':>6}  hits")
    for name in variants:
        t = np.array(times[name]) * 1000
        p50, p99 = float(np.percentile(t, 50)), float(np.percentile(t, 99))
        share = name.split()[0]
        row = {"selectivity": share, "answered": plans[name], "planned": variants[name][1] is None,
               "allowed": allowed[name], "p50_ms": p50, "p99_ms": p99, "p50_ratio": p50 / b50,
               "p99_ratio": p99 / b99, "min_hits": min(counts[name])}
        rows.append(row)
        label = "(no filter)" if name == "none" else f"{float(share) * 100:g} %"
        answered = plans[name] + ("" if variants[name][1] is None else "*")
        print(f"{label:>14}  {allowed[name]:>8}  {answered:>10}  {p50:>8.2f}  {p99:>8.2f}  {p50 / b50:>6.2f}  "
              f"{p99 / b99:>6.2f}  {min(counts[name])}")
    if args.compare or args.f32:
        print("* forced (--compare, --f32); the other rows are the planner's choice")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"filtered_search_{collection.backend}.json"
    out.write_text(json.dumps({"images": len(collection), "backend": collection.backend, "queries": args.queries,
                               "generation": collection.generation, "int8_pass": int8,
                               "load_average": [load_before, load_after], "rows": rows}, indent=2))
    print(f"-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
