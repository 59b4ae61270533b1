"""Retrieval faithfulness per precision/runtime: recall@10 against the float32 torch ranking over 2,000 images.

Run: .venv/bin/python bench/precision_recall.py [--arch small|base] [--images 2000] [--queries 50]

Issue 8's second parity criterion: "search over a 2,000-image collection embedded at each precision keeps recall@10
>= 0.99 against the float32 ranking (report the score margin between the 10th and 11th float32 hits too: random-weight
vectors can crowd together)".

* Model: a SigLIP architecture with random weights (``embedding.tiny``; nothing downloaded). ``--arch small`` (the
  default) is SigLIP-base's depth, patching and resolution (12 layers, 224 px, 16 px patches = 196 tokens, head size
  64, 64-token text, 32,000-row vocabulary) at ViT-S width (384, 6 heads, MLP 1,536): about a quarter of base's
  FLOPs. ``--arch base`` is google/siglip-base-patch16-224's exact architecture, as the other benchmarks use; on the
  2 shared cores it embeds ~2-5 images/s in float32 torch, i.e. 7-15 minutes for the reference alone.
* Collection: ``--images`` generated images of varied content and size (``make_images``: scikit-image photo crops
  with flips, rotations, colour, gamma, blur and noise; synthetic scenes of shapes on gradients; periodic textures),
  preprocessed once by the checkpoint's own processor.
* Queries: ``--queries`` texts (the parity probe texts, then captions in the tokenizer's vocabulary) and as many
  held-out generated images (image -> image search, what `similar` does).
* Each variant (runtime x precision; both towers at that precision, through the library's own sessions and exported
  graphs, ``load_encoder(precision=..., runtime=...)``) embeds the collection and the queries in its own worker
  process, one after the other (nothing is timed for speed here; the seconds are printed to show the cost). Default
  variants: torch fp32 and what ``--precision fp32 | int8 | bf16`` pick here (ONNX Runtime fp32 / int8, OpenVINO
  bf16); ``--variants all`` adds OpenVINO fp32 and torch int8 / bf16. The float32 torch embeddings (the reference,
  the slowest part) are kept in bench/_data/recall/<model, collection and query set>/ and reused; every variant's
  outputs are written there too (``--reanalyse`` re-reads them without embedding anything).
* Per variant, per query kind: recall@10 = |top-10 of the variant's scores (its query vector against its collection
  vectors) intersected with the top-10 of float32 torch's| / 10, mean and minimum over the queries; also with the
  float32 query vector against the variant's collection ("collection only": what a query at another precision
  would see). ``auto`` = the image tower's ``auto`` choice for the collection and the text tower's ``auto`` choice
  for text queries (on this machine different runtimes), image queries at the image tower's choice.
* Margins: for each query the float32 score gap between its 10th and 11th hit (median, 10th percentile, minimum over
  queries), and per variant the score noise: the largest |variant score - float32 score| over each query's float32
  top 20 and the variant's top 10 (median over queries). For every query with a miss, the intruders (hits in the
  variant's top 10, not in float32's): their worst float32 rank, and whether their float32 score lies within twice
  the query's score noise of the float32 10th score ("within noise": a near-tie swapped by rounding, not a
  different neighbourhood).

JSON to bench/results/precision_recall_<arch>.json; a Markdown table on stdout.
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
CACHE_DIR = DATA / "runtime-cache"
RESULTS = ROOT / "bench" / "results"
K = 10

# (runtime, precision) run by default: torch fp32 (the reference) and what `--precision fp32 | int8 | bf16 | auto` pick
# on a CPU with VNNI and BF16 (bench/cpu_precision.py measures their speed)
VARIANTS = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "bf16"),
            ("openvino", "int8")]  # OpenVINO int8 is image-tower only: its text queries are float32 torch's
# the rest of the library's variants (fallbacks: no ONNX Runtime / OpenVINO, or an export that fails): --variants
MORE_VARIANTS = [("openvino", "fp32"), ("torch", "int8"), ("torch", "bf16")]


def arch_spec(arch: str):  # type: ignore[no-untyped-def]
    from img_search.embedding.tiny import ARCHITECTURES, TinySpec

    base = ARCHITECTURES["google/siglip-base-patch16-224"]
    if arch == "base":
        return base
    return TinySpec(family="siglip", image_size=base.image_size, patch_size=base.patch_size, hidden_size=384,
                    intermediate_size=1536, num_layers=base.num_layers, num_heads=6, vocab_size=base.vocab_size,
                    max_text_length=base.max_text_length, model_vocab_size=base.model_vocab_size)


def model_dir(arch: str) -> Path:
    return DATA / ("siglip-base-random" if arch == "base" else "siglip-small-random")


def build_model(arch: str) -> Path:
    from img_search.embedding.tiny import build_tiny_model

    path = model_dir(arch)
    if not (path / "config.json").exists():
        build_tiny_model(path, arch_spec(arch))
    return path


# -- data -----------------------------------------------------------------------------------------------------------
def make_images(n: int, seed: int) -> list:  # type: ignore[type-arg]
    """``n`` deterministic RGB PIL images, 96-640 px a side: 3 in 5 are crops of scikit-image's photos (random crop,
    flip, quarter turn, per-channel gain, gamma, blur, noise), 1 in 5 synthetic scenes (shapes and lines on a
    gradient), 1 in 5 periodic textures (stripes, checkers, rings) with noise."""
    from PIL import Image, ImageDraw, ImageFilter

    sys.path.insert(0, str(ROOT / "bench"))
    from embed_throughput import photo_sources

    sources = photo_sources()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = int(rng.integers(96, 641)), int(rng.integers(96, 641))
        kind = i % 5
        if kind < 3:
            src = sources[int(rng.integers(len(sources)))]
            sh, sw = src.shape[:2]
            scale = rng.uniform(0.15, 1.0)
            ch, cw = max(16, int(sh * scale * rng.uniform(0.7, 1.0))), max(16, int(sw * scale * rng.uniform(0.7, 1.0)))
            y, x = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
            arr = src[y: y + ch, x: x + cw].astype(np.float32)
            if rng.random() < 0.5:
                arr = arr[:, ::-1]
            arr = np.rot90(arr, int(rng.integers(4)))
            arr = 255 * (np.clip(arr * rng.uniform(0.7, 1.3, size=3), 0, 255) / 255) ** rng.uniform(0.7, 1.4)
            img = Image.fromarray(arr.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
            if rng.random() < 0.3:
                img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3))))
        elif kind == 3:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
            t = ((xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / (w + h) + 1) / 2
            img = Image.fromarray((c0 * t[..., None] + c1 * (1 - t[..., None])).astype(np.uint8))
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(2, 12))):
                x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
                box = (x0, y0, int(rng.integers(x0 + 4, w)), int(rng.integers(y0 + 4, h)))
                colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
                shape = int(rng.integers(3))
                if shape == 0:
                    draw.ellipse(box, fill=colour)
                elif shape == 1:
                    draw.rectangle(box, fill=colour)
                else:
                    draw.line(box, fill=colour, width=int(rng.integers(1, 12)))
        else:
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            period = rng.uniform(4, 60)
            angle = rng.uniform(0, np.pi)
            u = xx * np.cos(angle) + yy * np.sin(angle)
            pattern = int(rng.integers(3))
            if pattern == 0:
                wave = np.sin(u / period)
            elif pattern == 1:
                wave = np.sign(np.sin(xx / period) * np.sin(yy / period))
            else:
                wave = np.sin(np.hypot(xx - w * rng.random(), yy - h * rng.random()) / period)
            c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
            arr = c0 + (c1 - c0) * ((wave[..., None] + 1) / 2) + rng.normal(0, rng.uniform(0, 25), size=(h, w, 3))
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        out.append(img.convert("RGB"))
    return out


def query_texts(n: int) -> list[str]:
    from img_search.embedding.parity import probe_texts
    from img_search.embedding.tiny import caption_corpus

    seen: dict[str, None] = dict.fromkeys(probe_texts())
    for text in caption_corpus(2000, seed=11):
        seen.setdefault(text, None)
    return list(seen)[:n]


def prepare(work: Path, model: Path, n_images: int, n_queries: int) -> None:
    """The collection's and the image queries' pixel arrays (float32 .npy, as the processor makes them) and the
    tokenised text queries, written into ``work``."""
    from img_search.embedding import load_encoder

    enc = load_encoder(str(model), device="cpu")
    pre = enc.image_preprocessor()
    for name, n, seed in (("collection", n_images, 1), ("image_queries", n_queries, 2)):
        images = make_images(n, seed)
        first = pre(images[0])
        key = next(iter(first))
        arr = np.lib.format.open_memmap(work / f"{name}.npy", mode="w+", dtype=np.float32,
                                        shape=(n, *np.asarray(first[key]).shape))
        for i, img in enumerate(images):
            arr[i] = np.asarray(pre(img)[key])
        arr.flush()
        del arr, images
    tokens = enc.tokenize(query_texts(n_queries))
    np.save(work / "text_queries.npy", tokens["input_ids"])
    (work / "pixel_key.txt").write_text(key)


GENERATOR_VERSION = 1  # bump when make_images / query_texts change: cached references are then recomputed


OUTPUTS = ("collection", "image_queries")  # + "text_queries" where the variant has a text tower


def has_outputs(out_dir: Path, name: str) -> bool:
    return all((out_dir / f"out_{name.replace(':', '_')}_{what}.npy").exists() for what in OUTPUTS)


def output_dir(model: Path, args: argparse.Namespace) -> Path:
    """Where each variant's embeddings of this model, collection and query set are kept (unit rows, float32 .npy):
    the float32 torch ones (deterministic; the slowest part of a run) are reused by later runs, the others are
    recomputed by every run that names them and re-read by ``--reanalyse``."""
    from img_search.embedding.onnx_export import fingerprint

    key = f"{args.arch}-{args.images}-{args.queries}-g{GENERATOR_VERSION}-{fingerprint(model)[:12]}"
    return DATA / "recall" / key


# -- worker ---------------------------------------------------------------------------------------------------------
def worker(model: str, runtime: str, precision: str, work: Path, out_dir: Path, batch_size: int) -> None:
    """Embed the collection, the image queries and the text queries with both towers at (precision, runtime)."""
    from img_search.embedding import load_encoder
    from img_search.errors import UnavailableError

    t0 = time.perf_counter()
    enc = load_encoder(model, device="cpu", precision=precision, runtime=runtime, cache_dir=CACHE_DIR)
    image = enc.session("image")  # builds (and, the first time, exports) the tower
    try:
        text = enc.session("text")
    except UnavailableError as exc:  # OpenVINO int8 is refused for the text tower
        print(f"{runtime}:{precision}: no text tower ({exc})", file=sys.stderr, flush=True)
        text = None
    assert image.choice.runtime == runtime and (text is None or text.choice.runtime == runtime)
    t_load = time.perf_counter() - t0
    key = (work / "pixel_key.txt").read_text()
    out: dict[str, np.ndarray] = {}
    t1 = time.perf_counter()
    for name in ("collection", "image_queries"):
        pixels = np.load(work / f"{name}.npy", mmap_mode="r")
        out[name] = np.concatenate([image.run({key: np.asarray(pixels[i: i + batch_size])})
                                    for i in range(0, len(pixels), batch_size)])
    t_images = time.perf_counter() - t1
    if text is not None:
        ids = np.load(work / "text_queries.npy")
        out["text_queries"] = np.concatenate([text.run({"input_ids": ids[i: i + 16]})
                                              for i in range(0, len(ids), 16)])
    for name, feats in out.items():
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        np.save(out_dir / f"out_{runtime}_{precision}_{name}.npy", feats.astype(np.float32))
    print(json.dumps({"load_s": t_load, "images_s": t_images}), flush=True)


# -- analysis -------------------------------------------------------------------------------------------------------
def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the ``k`` highest scores (ties: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(ref_scores: np.ndarray, scores: np.ndarray, k: int = K) -> np.ndarray:
    ref, got = top_k(ref_scores, k), top_k(scores, k)
    return np.array([len(set(a) & set(b)) / k for a, b in zip(ref, got, strict=True)])


def margins(ref_scores: np.ndarray, k: int = K) -> np.ndarray:
    """Per query: float32 score of its k-th hit minus that of its (k+1)-th."""
    s = -np.sort(-ref_scores, axis=1)
    return s[:, k - 1] - s[:, k]


def score_noise(ref_scores: np.ndarray, scores: np.ndarray, depth: int = 2 * K) -> np.ndarray:
    """Per query: the largest |variant - float32| score over the float32 top ``depth`` and the variant's top k."""
    idx = np.concatenate([top_k(ref_scores, depth), top_k(scores, K)], axis=1)
    return np.abs(np.take_along_axis(scores, idx, 1) - np.take_along_axis(ref_scores, idx, 1)).max(axis=1)


def intruders(ref_scores: np.ndarray, scores: np.ndarray, noise: np.ndarray, k: int = K) -> dict:
    """The hits in a variant's top k that are not in float32's: per query, their worst float32 rank (1-based) and
    how far their float32 score lies below the float32 k-th score; a query's swaps are "within noise" when that gap
    is at most twice its score noise (each of the two swapped scores moved by at most the noise)."""
    ref_rank = np.argsort(np.argsort(-ref_scores, axis=1, kind="stable"), axis=1)  # 0-based rank of each item
    kth = -np.sort(-ref_scores, axis=1)[:, k - 1]
    worst, within, missed = [], 0, 0
    for q, got in enumerate(top_k(scores, k)):
        extra = [i for i in got if ref_rank[q, i] >= k]
        if not extra:
            continue
        missed += 1
        worst.append(int(ref_rank[q, extra].max()) + 1)
        gap = float(kth[q] - ref_scores[q, extra].min())
        within += int(gap <= 2 * noise[q])
    return {"queries_with_a_miss": missed, "misses_within_noise": within,
            "worst_intruder_rank": max(worst) if worst else None,
            "median_worst_intruder_rank": float(np.median(worst)) if worst else None}


def analyse(work: Path, names: list[str], auto: dict[str, str]) -> dict:
    def load(name: str, what: str) -> np.ndarray:
        return np.load(work / f"out_{name.replace(':', '_')}_{what}.npy")

    ref_coll = load("torch:fp32", "collection")
    ref_q = {"text": load("torch:fp32", "text_queries"), "image": load("torch:fp32", "image_queries")}
    ref_scores = {kind: q @ ref_coll.T for kind, q in ref_q.items()}
    result: dict = {"margins": {}, "variants": {}}
    for kind, s in ref_scores.items():
        m = margins(s)
        srt = -np.sort(-s, axis=1)
        result["margins"][kind] = {
            "median": float(np.median(m)), "p10": float(np.percentile(m, 10)), "min": float(m.min()),
            "top1_minus_top100_median": float(np.median(srt[:, 0] - srt[:, min(99, srt.shape[1] - 1)])),
            "score_10th_median": float(np.median(srt[:, K - 1]))}
    def has_text(name: str) -> bool:
        return (work / f"out_{name.replace(':', '_')}_text_queries.npy").exists()

    # a variant without a text tower (OpenVINO int8) is queried by float32 torch's text vectors
    rows = [(name, name, name if has_text(name) else "torch:fp32") for name in names if name != "torch:fp32"]
    if auto["image"] in names and auto["text"] in names:
        rows.append(("auto", auto["image"], auto["text"]))
    for label, image_variant, text_variant in rows:
        coll = load(image_variant, "collection")
        queries = {"text": load(text_variant, "text_queries"), "image": load(image_variant, "image_queries")}
        row: dict = {"image_tower": image_variant, "text_tower": text_variant,
                     "min_cosine_collection": float(np.min(np.sum(coll * ref_coll, axis=1)))}
        for kind, q in queries.items():
            scores = q @ coll.T
            rec = recall_at_k(ref_scores[kind], scores)
            rec_coll = recall_at_k(ref_scores[kind], ref_q[kind] @ coll.T)
            noise = score_noise(ref_scores[kind], scores)
            m = margins(ref_scores[kind])
            row[kind] = {"recall_mean": float(rec.mean()), "recall_min": float(rec.min()),
                         "recall_collection_only": float(rec_coll.mean()),
                         "score_noise_median": float(np.median(noise)),
                         "queries_margin_below_noise": int((m < noise).sum()),
                         **intruders(ref_scores[kind], scores, noise),
                         "min_cosine_queries": float(np.min(np.sum(q * ref_q[kind], axis=1)))}
        result["variants"][label] = row
    return result


def table(result: dict) -> str:
    lines = []
    for kind in ("text", "image"):
        head = (f"| {kind} queries: variant (image / text tower) | min cosine, collection / queries | recall@10 mean "
                "(min) | collection only | queries with a miss: within noise / all | worst float32 rank of an "
                "intruder | score noise (median) | queries whose 10th-11th margin < noise |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for label, r in result["variants"].items():
            name = label if label != "auto" else f"auto ({r['image_tower']} / {r['text_tower']})"
            if label != "auto" and r["text_tower"] != r["image_tower"]:
                name += f" (text: {r['text_tower']})"
            k = r[kind]
            lines.append(f"| {name} | {r['min_cosine_collection']:.6f} / {k['min_cosine_queries']:.6f} | "
                         f"{k['recall_mean']:.3f} ({k['recall_min']:.1f}) | {k['recall_collection_only']:.3f} | "
                         f"{k['misses_within_noise']} / {k['queries_with_a_miss']} | "
                         f"{k['worst_intruder_rank'] or '-'} | {k['score_noise_median']:.2e} | "
                         f"{k['queries_margin_below_noise']} |")
        lines.append("")
    lines.append("| query kind | float32 margin 10th - 11th: median (p10, min) | top-1 - top-100 (median) | "
                 "10th score (median) |")
    lines.append("|---|---|---|---|")
    for kind, m in result["margins"].items():
        lines.append(f"| {kind} | {m['median']:.2e} ({m['p10']:.2e}, {m['min']:.2e}) | "
                     f"{m['top1_minus_top100_median']:.2e} | {m['score_10th_median']:.4f} |")
    return "\n".join(lines)


def run_variants(model: Path, names: list[str], out_dir: Path, args: argparse.Namespace, costs: dict) -> list[str]:
    """Embed the collection and queries with each variant (float32 torch only when not already in ``out_dir``);
    returns the variants whose outputs are there."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        prepare(work, model, args.images, args.queries)
        print(f"prepared {args.images} images + {args.queries} image and text queries in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for name in list(names):
            runtime, precision = name.split(":")
            if name == "torch:fp32" and has_outputs(out_dir, name):
                print(f"{name}: reference read from {out_dir}", file=sys.stderr, flush=True)
                continue
            cmd = [sys.executable, "-W", "ignore", __file__, "--worker", str(model), runtime, precision, str(work),
                   str(out_dir), str(args.batch_size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                print(f"{name}: worker failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                names.remove(name)
                continue
            costs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}: load {costs[name]['load_s']:.0f} s, {args.images + args.queries} images in "
                  f"{costs[name]['images_s']:.0f} s", file=sys.stderr, flush=True)
    return names


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        model, runtime, precision, work, out_dir, batch = sys.argv[2:8]
        worker(model, runtime, precision, Path(work), Path(out_dir), int(batch))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["small", "base"], default="small")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--variants", default=",".join(f"{r}:{p}" for r, p in VARIANTS),
                    help="runtime:precision list; torch:fp32 (the reference) is always run (or read from its cache); "
                         f"'all' adds {', '.join(f'{r}:{p}' for r, p in MORE_VARIANTS)}")
    ap.add_argument("--reanalyse", action="store_true",
                    help="embed nothing: analyse the outputs the earlier runs left in bench/_data/recall")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from img_search.embedding.precision import resolve_precision
    from img_search.embedding.runtime import installed_runtimes

    wanted = args.variants.split(",")
    if "all" in wanted:
        wanted = [f"{r}:{p}" for r, p in VARIANTS + MORE_VARIANTS]
    names = ["torch:fp32"] + [v for v in wanted if v and v != "torch:fp32"]
    usable = installed_runtimes()
    names = [n for n in names if n.split(":")[0] in usable]
    auto = {tower: "{runtime}:{precision}".format(**resolve_precision("auto", tower).as_dict())
            for tower in ("image", "text")}
    model = build_model(args.arch)
    t_start, load_before = time.time(), os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_dir = output_dir(model, args)
    out_dir.mkdir(parents=True, exist_ok=True)
    costs: dict[str, dict] = {}
    if args.reanalyse:
        names = [n for n in names if has_outputs(out_dir, n)]
    else:
        names = run_variants(model, names, out_dir, args, costs)
    result = analyse(out_dir, names, auto)
    result.update(arch=args.arch, spec=arch_spec(args.arch).__dict__, images=args.images, queries=args.queries,
                  k=K, auto=auto, costs=costs, cores=os.cpu_count(), loadavg_before=load_before,
                  loadavg_after=os.getloadavg(), seconds=time.time() - t_start, date=time.strftime("%Y-%m-%d %H:%M"))
    (RESULTS / f"precision_recall_{args.arch}.json").write_text(json.dumps(result, indent=1))
    print(f"\n## recall@{K} vs float32 torch: {args.arch} architecture, {args.images} images, {args.queries} text + "
          f"{args.queries} image queries (load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}, "
          f"{time.time() - t_start:.0f} s)\n")
    print(table(result))


if __name__ == "__main__":
    main()
