"""Parity of a tower's precision/runtime with float32 torch, on a fixed set of generated images and texts.

When a precision or runtime is first used for a model, its embeddings of ``probe_images()`` / ``probe_texts()`` are
compared with the float32 ``transformers`` ones of the same encoder; the minimum cosine over the set is the verdict
(``ParityResult``), cached beside the exported graphs (``embedding.onnx_export.RuntimeCache``) so it runs once per
checkpoint, precision and runtime. The catalog records it with the vectors; ``auto`` only keeps a choice that passes.

``PARITY_MIN_COSINE`` (0.999) is issue 8's bar for "faithful". What each precision reached on the SigLIP-base
architecture (random weights, ``bench/cpu_precision.py``): fp32 on ONNX Runtime / OpenVINO >= 0.99999, bf16 ~0.99995,
int8 (ONNX Runtime, dynamic) ~0.9997 -- and random-weight vectors crowd together, so real checkpoints may differ: the
check runs on the user's own checkpoint for exactly that reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from img_search.embedding.base import l2_normalize
from img_search.embedding.precision import TowerChoice

logger = logging.getLogger(__name__)

PARITY_MIN_COSINE = 0.999
# 2: verdicts carry ``speedup`` (issue 8: auto skips a choice no faster than float32 on this CPU)
PARITY_SET_VERSION = 2  # bump when probe_images / probe_texts or the verdict change: cached verdicts are recomputed
# A probe batch the float32 reference runs in less than this many CPU seconds is not timed reliably enough to compare
# runtimes on (a tiny test model: a few ms; a GPU): ``ParityResult.speedup`` is then None and only the cosine decides.
MIN_TIMED_SECONDS = 0.2
# ``auto`` keeps a reduced precision (bf16, fp16, int8) only when it ran at least this much faster than float32 on the
# probes: its fidelity loss must buy speed on *this* CPU. The order of ``precision.AUTO_PLAN`` comes from CPU flags and
# measurements on one machine; on an Intel Xeon reporting avx512_bf16 (docs/PERFORMANCE.md, run 9) OpenVINO bf16 ran
# the image tower no faster than torch float32. 1.2 leaves room for timing noise; float32 on a graph runtime is exact
# and never held to it (its point may be the search process's light start, not speed).
MIN_AUTO_SPEEDUP = 1.2
N_PROBE_IMAGES = 8
PROBE_SEED = 20_260_801
# a different stream of the same generator for calibrating static quantization (``onnx_export``): the images that
# set the activation ranges must not be the ones the parity check then judges the quantized graph on
CALIBRATION_SEED = 20_261_130


def probe_images(n: int = N_PROBE_IMAGES, *, seed: int = PROBE_SEED) -> list[Any]:
    """``n`` deterministic RGB PIL images of varied content and size (96-399 pixels a side): smooth gradients,
    stripes, shapes, photo-like noise (what quantization error depends on: the spread of activations, not the
    semantics). ``seed`` picks the stream: ``PROBE_SEED`` for the parity check, ``CALIBRATION_SEED`` for static
    quantization's calibration set (disjoint from the probes)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        w, h = int(rng.integers(96, 400)), int(rng.integers(96, 400))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([(xx / w) * 255, (yy / h) * 255, ((xx + yy) / (w + h)) * 255], axis=-1)
        base = base * rng.uniform(0.3, 1.0, size=3) + rng.uniform(0, 80, size=3)
        if i % 2:
            base += 60 * np.sin(xx[..., None] / rng.uniform(3, 20) + rng.uniform(0, 6, size=3))
        base += rng.normal(0, 4 + 6 * (i % 3), size=base.shape)
        img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
            box = (x0, y0, int(rng.integers(x0 + 5, w)), int(rng.integers(y0 + 5, h)))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        images.append(img)
    return images


def probe_texts() -> list[str]:
    """Fixed queries: short and long (past 64 tokens), cased, punctuated, non-ASCII."""
    return [
        "a dog on the beach", "A photo of a RED car parked near the river at night.", "two cats", "x",
        "a close-up of a striped bicycle under a tree in the snow, with mountains behind it " * 4,
        "Café au lait, naïve art — 東京 at sunset!", "the quick brown fox", "an old wooden boat",
    ]


@dataclass(frozen=True)
class ParityResult:
    """The verdict on one tower's precision/runtime: ``min_cosine`` (over the probe set, to float32 torch) against
    ``threshold``, and ``speedup``: the float32 reference's CPU seconds on the probe batch over this choice's (each the
    cheaper of two runs on this machine, the first also warming up), None when the reference took under
    ``MIN_TIMED_SECONDS`` (too short to time) or for the reference itself. ``as_dict()`` is what the catalog
    records."""

    tower: str
    precision: str
    runtime: str
    min_cosine: float
    mean_cosine: float
    threshold: float
    passed: bool
    n_items: int
    set_version: int = PARITY_SET_VERSION
    speedup: float | None = None

    @property
    def choice(self) -> TowerChoice:
        return TowerChoice(self.tower, self.precision, self.runtime)

    @property
    def too_slow_for_auto(self) -> bool:
        """A reduced precision timed at under ``MIN_AUTO_SPEEDUP`` x float32's speed (``auto`` tries the next)."""
        return self.precision != "fp32" and self.speedup is not None and self.speedup < MIN_AUTO_SPEEDUP

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _probe_inputs(encoder: Any, tower: str) -> dict[str, Any]:
    from img_search.embedding.base import collate_pixels

    if tower == "image":
        pre = encoder.image_preprocessor()
        return collate_pixels([pre(img) for img in probe_images()])
    return encoder.tokenize(probe_texts())


def compare(choice: TowerChoice, reference: Any, candidate: Any, threshold: float = PARITY_MIN_COSINE,
            speedup: float | None = None) -> ParityResult:
    """The verdict for ``choice`` from two ``(n, dim)`` feature arrays (normalised here)."""
    cos = np.sum(l2_normalize(reference) * l2_normalize(candidate), axis=1, dtype=np.float64)
    min_cos = float(cos.min())
    return ParityResult(choice.tower, choice.precision, choice.runtime, min_cos, float(cos.mean()), threshold,
                        bool(min_cos >= threshold), int(cos.size), speedup=speedup)


def _timed_runs(session: Any, inputs: dict[str, Any]) -> tuple[Any, float]:
    """(features, CPU seconds): ``session.run(inputs)`` twice, the cheaper run's CPU time of this process, all its
    threads (the first run also warms the runtime up: graph compilation, thread pools, caches). CPU time, not wall
    time: the verdict is cached for good, and other load on the machine stretches wall time by whatever it takes
    from the run, while the run's own CPU time stays close to its work (runtimes use one thread per core alike)."""
    best = float("inf")
    out: Any = None
    for _ in range(2):
        start = time.process_time()
        out = session.run(inputs)
        best = min(best, time.process_time() - start)
    return out, best


def tower_parity(encoder: Any, choice: TowerChoice, session: Any, *, cache: Any | None = None,
                 threshold: float = PARITY_MIN_COSINE, recompute: bool = False) -> ParityResult:
    """The parity of ``session`` (running ``choice``) with ``encoder``'s float32 torch tower on the probe set;
    read from / written to ``cache`` (a ``RuntimeCache``) when given. fp32 on torch is the reference itself."""
    if choice.precision == "fp32" and choice.runtime == "torch":
        return ParityResult(choice.tower, "fp32", "torch", 1.0, 1.0, threshold, True, 0)
    if cache is not None and not recompute:
        known = cache.read_parity(choice)
        if known is not None and known.get("set_version") == PARITY_SET_VERSION:
            known = {k: v for k, v in known.items() if k != "format"}
            min_cos = float(known["min_cosine"])
            return ParityResult(**{**known, "threshold": threshold, "passed": min_cos >= threshold})
    inputs = _probe_inputs(encoder, choice.tower)
    reference, reference_s = _timed_runs(encoder.reference_session(choice.tower), inputs)
    candidate, candidate_s = _timed_runs(session, inputs)
    speedup = reference_s / candidate_s if reference_s >= MIN_TIMED_SECONDS and candidate_s > 0 else None
    result = compare(choice, reference, candidate, threshold, speedup)
    logger.info("parity %s: min cosine %.6f to float32 (%s %.4f); %s", choice, result.min_cosine,
                "passes" if result.passed else "FAILS", threshold,
                "not timed" if speedup is None else f"{speedup:.2f}x float32's speed on the probes")
    if cache is not None:
        try:
            cache.write_parity(choice, result.as_dict())
        except Exception as exc:  # an unwritable cache costs a recomputation next time, nothing else
            logger.warning("parity result not cached: %s", exc)
    return result


def check_parity(encoder: Any, towers: tuple[str, ...] = ("image", "text"), *, recompute: bool = False,
                 threshold: float = PARITY_MIN_COSINE) -> dict[str, ParityResult]:
    """The parity verdict of each of ``encoder``'s towers (an ``HFEncoder``) as it will run (builds the sessions,
    exporting graphs if the encoder allows it); cached per checkpoint, precision and runtime. Also stored in
    ``encoder.parity``. For encoders without precisions (Jina v4) every tower is the float32 reference."""
    out: dict[str, ParityResult] = {}
    for tower in towers:
        if not hasattr(encoder, "session"):
            out[tower] = ParityResult(tower, "fp32", "torch", 1.0, 1.0, threshold, True, 0)
            continue
        session = encoder.session(tower)
        out[tower] = tower_parity(encoder, session.choice, session, cache=encoder.cache(), threshold=threshold,
                                  recompute=recompute)
        encoder.parity[tower] = out[tower]
    return out
