"""Numeric precision per encoder tower, and what ``auto`` means on this machine.

A *precision* is how a tower computes (``fp32``, ``bf16``, ``fp16``, ``int8``); a *runtime* is what runs it
(``torch``, ``onnxruntime``, ``openvino``; see ``embedding.runtime``). The image tower and the text tower are resolved
separately because the fastest choice differs: a batch of 32 images is compute-bound, one 64-token query is
dominated by per-op overhead (torch's bf16 autocast made a single SigLIP query ~4x *slower*, issue 8).

``auto`` on a CPU picks, per tower, the first entry of ``AUTO_PLAN[tower]`` whose instruction-set requirement the
CPU meets (read at run time from ``/proc/cpuinfo``) and whose runtime is installed; the encoder then keeps it only if
its parity check passes (``embedding.parity``), else takes the next. The plan comes from ``bench/cpu_precision.py``
and ``bench/embed_throughput.py`` on the SigLIP-base architecture (figures in docs/PERFORMANCE.md, "CPU precisions
and runtimes"): on an AVX-512 VNNI + BF16 EPYC the image tower is fastest as OpenVINO static int8 (NNCF-calibrated,
the ``openvino`` extra; 1.7-2.9x OpenVINO bf16 at batch 32, min cosine 0.9997 on photos), then OpenVINO bf16, then
ONNX Runtime int8 (the core install's choice); the text tower as ONNX Runtime int8, by far. On CUDA/MPS ``auto`` is
``fp16`` through torch (the project's machines have no GPU: that branch is untested).
"""

from __future__ import annotations

import functools
import logging
import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from img_search.errors import InvalidInputError
from img_search.settings import DTYPE_ALIASES, PRECISIONS

logger = logging.getLogger(__name__)

TOWERS = ("image", "text")

# CPU flags (as /proc/cpuinfo spells them) that make a precision run natively fast
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})  # int8 dot products (x86 / arm)
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # native bf16 arithmetic (x86 / arm)


@dataclass(frozen=True)
class TowerChoice:
    """How one tower computes: ``precision`` on ``runtime``. The catalog records ``as_dict()``."""

    tower: str  # image | text
    precision: str  # fp32 | bf16 | fp16 | int8
    runtime: str  # torch | onnxruntime | openvino

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.tower}: {self.precision} on {self.runtime}"


@dataclass(frozen=True)
class PlanStep:
    """One rung of ``auto``: ``precision`` on ``runtime``, if the CPU has any of ``flags`` (empty: always)."""

    precision: str
    runtime: str
    flags: frozenset[str] = frozenset()


# Fastest first, from bench/cpu_precision.py on the SigLIP-base architecture (2-core EPYC, AVX-512 VNNI + BF16;
# speed relative to torch fp32 in the same rounds, minimum cosine to it):
#   image, batch 16: OpenVINO bf16 5.1x (0.99997) > ONNX Runtime int8 4.5x (0.9997) > torch int8 2.5x (0.9997) >
#                    OpenVINO / ONNX Runtime fp32 2.4x > torch bf16 1.4x
#   text, 1 query:   ONNX Runtime int8 p50 49 ms (0.9997) > OpenVINO bf16 92 ms > ONNX Runtime fp32 130 ms >
#                    OpenVINO fp32 168 ms > torch int8 245 ms > torch bf16 796 ms > torch fp32 1181 ms
# int8 needs a dot-product instruction to win and bf16 native bf16; without either, fp32 on a graph runtime.
AUTO_PLAN: dict[str, tuple[PlanStep, ...]] = {
    "image": (
        PlanStep("int8", "openvino", INT8_FLAGS),  # static int8 (NNCF): image tower only, text fails parity (0.57)
        PlanStep("bf16", "openvino", BF16_FLAGS),
        PlanStep("int8", "onnxruntime", INT8_FLAGS),
        PlanStep("int8", "torch", INT8_FLAGS),
        PlanStep("fp32", "onnxruntime"),
        PlanStep("fp32", "openvino"),
        PlanStep("bf16", "torch", BF16_FLAGS),
    ),
    "text": (
        PlanStep("int8", "onnxruntime", INT8_FLAGS),
        PlanStep("bf16", "openvino", BF16_FLAGS),
        PlanStep("fp32", "onnxruntime"),
        PlanStep("fp32", "openvino"),
        PlanStep("int8", "torch", INT8_FLAGS),  # torch bf16 autocast is left out: one query ran slower than fp32
    ),
}
# an explicit precision: the runtimes that can run it, fastest first (same measurements)
EXPLICIT_RUNTIMES: dict[str, tuple[str, ...]] = {
    "fp32": ("onnxruntime", "openvino", "torch"),
    "bf16": ("openvino", "torch"),
    "fp16": ("torch",),
    "int8": ("onnxruntime", "torch", "openvino"),  # openvino: static int8 of the image tower, only when forced
}
ACCELERATOR_PRECISION = "fp16"  # CUDA / MPS: half precision through torch (untested on the project's machines)


def is_accelerator(device: str) -> bool:
    """CUDA / MPS device strings; "cpu" and an unresolved "auto" count as CPU (a light text query never needs a GPU,
    and resolving "auto" would import torch)."""
    return device.startswith(("cuda", "mps"))


def check_precision(precision: str) -> str:
    """``precision`` normalised (``--dtype`` spellings accepted); raises ``InvalidInputError`` when unknown."""
    value = DTYPE_ALIASES.get(precision, precision)
    if value not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return value


def check_tower(tower: str) -> str:
    if tower not in TOWERS:
        raise InvalidInputError(f"unknown tower {tower!r}; valid: {', '.join(TOWERS)}")
    return tower


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first ``flags`` (x86) or ``Features`` (arm) line of a ``/proc/cpuinfo`` text, lower-cased."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.lower().split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as ``/proc/cpuinfo`` names them (lower case); empty where that file is absent
    (macOS, Windows), which makes ``auto`` choose fp32 there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return parse_cpu_flags(fh.read())
    except OSError:
        logger.debug("no CPU flags readable on %s; auto precision will be fp32", platform.system())
        return frozenset()


def precision_candidates(
    precision: str,
    tower: str,
    *,
    device: str = "cpu",
    features: Iterable[str] | None = None,
    runtimes: Iterable[str] | None = None,
    runtime: str = "auto",
) -> list[TowerChoice]:
    """What ``tower`` may run with, best first: the encoder takes the first that builds (and, for ``auto``, passes
    its parity check); ``resolve_precision`` is the first entry.

    ``precision``: auto | fp32 | bf16 | fp16 | int8 (or a ``--dtype`` spelling). ``device``: the torch device string;
    on CUDA / MPS everything runs through torch and ``auto`` is fp16 ("auto" counts as CPU here). ``features``: CPU
    flags (default: ``cpu_features()``). ``runtimes``: the runtimes usable here (default: the installed ones,
    ``embedding.runtime.installed_runtimes()``). ``runtime``: force one (``auto`` = fastest usable). Raises
    ``InvalidInputError`` for an unknown precision, tower or runtime, or a runtime that cannot run the precision;
    ``UnavailableError`` when a forced runtime is not usable.
    An explicit precision never silently becomes another one; ``auto`` ends with fp32 on torch, the reference.
    """
    from img_search.embedding.runtime import RUNTIMES, installed_runtimes, require_runtime

    precision, tower = check_precision(precision), check_tower(tower)
    if runtime != "auto":
        RUNTIMES.get(runtime)  # unknown name -> InvalidInputError listing the valid ones
    usable = tuple(installed_runtimes() if runtimes is None else runtimes)
    if runtime != "auto":
        require_runtime(runtime, usable)
    if is_accelerator(device):
        if runtime not in ("auto", "torch"):
            raise InvalidInputError(f"runtime {runtime!r} runs on CPU only; on {device} the runtime is torch")
        return [TowerChoice(tower, ACCELERATOR_PRECISION if precision == "auto" else precision, "torch")]
    flags = frozenset(cpu_features() if features is None else features)
    if precision == "auto":
        out = [TowerChoice(tower, step.precision, step.runtime) for step in AUTO_PLAN[tower]
               if (not step.flags or step.flags & flags) and step.runtime in usable
               and runtime in ("auto", step.runtime)]
        reference = TowerChoice(tower, "fp32", "torch" if runtime == "auto" else runtime)
        return out + ([reference] if reference not in out else [])
    able = EXPLICIT_RUNTIMES[precision]
    if runtime != "auto":
        if runtime not in able:
            raise InvalidInputError(
                f"runtime {runtime!r} cannot run {precision}; runtimes for {precision}: {', '.join(able)}")
        return [TowerChoice(tower, precision, runtime)]
    preferred = [r for r in able if r in usable] or ["torch"]
    if tower == "text" and precision == "bf16" and preferred == ["torch"]:
        logger.warning("bf16 for the text tower runs through torch autocast here, which measured slower than fp32 "
                       "for a single query; install openvino for a fast bf16 text tower")
    return [TowerChoice(tower, precision, r) for r in preferred]


def resolve_precision(precision: str, tower: str, **kwargs: object) -> TowerChoice:
    """The first of ``precision_candidates(precision, tower, **kwargs)``: what ``tower`` runs with when it builds."""
    return precision_candidates(precision, tower, **kwargs)[0]  # type: ignore[arg-type]
