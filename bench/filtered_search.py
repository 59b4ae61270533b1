"""Filtered search over 100,000 images: p50 / p99 with two filters against the same search without filters.

Run: .venv/bin/python bench/filtered_search.py [--images 100000] [--queries 200] [--backend qdrant_edge]

Setup (cached in bench/_data/filtered-N): a catalog of N images with random 768-d unit vectors (SigLIP-base's
dimension; the search cost does not depend on the values), each with photo metadata: a capture date spread over
2000-2024 and a camera (one of 1,000 names, "cam-000" .. "cam-999"), and the saved search index synced as `index`
leaves it (the default ANN backend at this size, or ``--backend``).

Two filters are combined, a date range and a camera list, chosen so that together they keep 50 %, 5 % and 0.1 % of
the collection. Each query runs ``Searcher.search_text`` end to end (parse, filter, search, fusion, hits resolved
from the catalog, limit 10) with a stub text encoder that returns precomputed query vectors, so the model's time
(identical with and without filters) is left out. The variants are interleaved query by query in one process so that
the machine's noise hits all of them alike; the ratio filtered / unfiltered is the figure to read.
Results: JSON to bench/results/filtered_search.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backend", default=None, help="search backend to save (default: as `index` would choose)")
    args = parser.parse_args()

    from img_search.search.collection import Collection
    from img_search.search.searcher import Searcher, SearchOptions
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
    collection = Collection.open(index_dir, "bench/filtered", settings)
    variants: dict[str, SearchOptions] = {"none": SearchOptions(hybrid="off")}
    shares: dict[str, float] = {"none": 1.0}
    for s in (0.5, 0.05, 0.001):
        spec = filters_for(s)
        variants[f"{s:g}"] = SearchOptions(filter=spec["filter"], hybrid="off")  # type: ignore[arg-type]
        shares[f"{s:g}"] = float(spec["expected_share"])  # type: ignore[arg-type]
    searchers = {name: Searcher(collection, QueryEncoder(queries)) for name in variants}  # type: ignore[arg-type]
    # warm up: the filter columns load once per collection view, the index's and vectors.npy's pages come into
    # memory (as in a running service); 20 queries per variant
    for _ in range(20):
        for name, opts in variants.items():
            searchers[name].search_text("warm up", limit=10, options=opts)
    times: dict[str, list[float]] = {name: [] for name in variants}
    counts: dict[str, list[int]] = {name: [] for name in variants}
    for _ in range(args.queries):
        for name, opts in variants.items():
            t0 = time.perf_counter()
            hits = searchers[name].search_text("q", limit=10, options=opts)
            times[name].append(time.perf_counter() - t0)
            counts[name].append(len(hits))
    allowed = {name: (len(collection.allowed_ids(opts.filter)) if opts.filter else len(collection))  # type: ignore[arg-type]
               for name, opts in variants.items()}
    base = times["none"]
    rows = []
    print(f"backend {collection.backend}, {len(collection)} images, {args.queries} queries, limit 10")
    print(f"{'filter keeps':>14}  {'images':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'p50 x':>6}  {'p99 x':>6}  hits")
    for name in variants:
        t = np.array(times[name]) * 1000
        p50, p99 = float(np.percentile(t, 50)), float(np.percentile(t, 99))
        b50, b99 = float(np.percentile(np.array(base) * 1000, 50)), float(np.percentile(np.array(base) * 1000, 99))
        row = {"selectivity": name, "allowed": allowed[name], "p50_ms": p50, "p99_ms": p99,
               "p50_ratio": p50 / b50, "p99_ratio": p99 / b99, "min_hits": min(counts[name])}
        rows.append(row)
        label = "(no filter)" if name == "none" else f"{float(name) * 100:g} %"
        print(f"{label:>14}  {allowed[name]:>8}  {p50:>8.2f}  {p99:>8.2f}  {p50 / b50:>6.2f}  {p99 / b99:>6.2f}  "
              f"{min(counts[name])}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"filtered_search_{collection.backend}.json"
    out.write_text(json.dumps({"images": len(collection), "backend": collection.backend, "queries": args.queries,
                               "rows": rows}, indent=2))
    print(f"-> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
