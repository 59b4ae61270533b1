"""Precision resolution: ``auto`` per tower from CPU flags (mocked), explicit precisions, typed errors."""

from __future__ import annotations

import pytest

from img_search.embedding.precision import (
    TowerChoice,
    check_precision,
    parse_cpu_flags,
    precision_candidates,
    resolve_precision,
)
from img_search.errors import InvalidInputError, UnavailableError

EPYC = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}  # the project's machine
ALL = ("torch", "onnxruntime", "openvino")


@pytest.mark.parametrize(("flags", "runtimes", "image", "text"), [
    # the project's machine: OpenVINO static int8 images (fastest measured, 0.9997), ONNX Runtime int8 text (0.9997)
    (EPYC, ALL, ("int8", "openvino"), ("int8", "onnxruntime")),
    # the core install (no OpenVINO): ONNX Runtime int8 for both towers
    (EPYC, ("torch", "onnxruntime"), ("int8", "onnxruntime"), ("int8", "onnxruntime")),
    ({"avx_vnni"}, ALL, ("int8", "openvino"), ("int8", "onnxruntime")),
    ({"avx_vnni"}, ("torch", "onnxruntime"), ("int8", "onnxruntime"), ("int8", "onnxruntime")),
    # native bf16 without VNNI: OpenVINO bf16 for both
    ({"avx512_bf16"}, ALL, ("bf16", "openvino"), ("bf16", "openvino")),
    # ... and without OpenVINO the towers differ: fp32 on ONNX Runtime beats torch bf16 for a batch and for a query
    ({"avx512_bf16"}, ("torch", "onnxruntime"), ("fp32", "onnxruntime"), ("fp32", "onnxruntime")),
    ({"avx512_bf16"}, ("torch",), ("bf16", "torch"), ("fp32", "torch")),
    # nothing special: float32 on the fastest installed runtime
    ({"avx2"}, ALL, ("fp32", "onnxruntime"), ("fp32", "onnxruntime")),
    (set(), ("torch",), ("fp32", "torch"), ("fp32", "torch")),
    # VNNI but only torch: torch's dynamic int8
    (EPYC, ("torch",), ("int8", "torch"), ("int8", "torch")),
])
def test_auto_per_tower_follows_cpu_flags(flags: set[str], runtimes: tuple[str, ...], image: tuple[str, str],
                                          text: tuple[str, str]) -> None:
    got_image = resolve_precision("auto", "image", features=flags, runtimes=runtimes)
    got_text = resolve_precision("auto", "text", features=flags, runtimes=runtimes)
    assert (got_image.precision, got_image.runtime) == image
    assert (got_text.precision, got_text.runtime) == text


def test_auto_candidates_end_with_the_float32_reference() -> None:
    cands = precision_candidates("auto", "image", features=EPYC, runtimes=ALL)
    assert [(c.precision, c.runtime) for c in cands] == [
        ("int8", "openvino"), ("bf16", "openvino"), ("int8", "onnxruntime"), ("int8", "torch"), ("fp32", "onnxruntime"),
        ("fp32", "openvino"), ("bf16", "torch"), ("fp32", "torch")]
    # OpenVINO static int8 is never a text choice (min cosine 0.57 on SigLIP-base text)
    assert ("int8", "openvino") not in [(c.precision, c.runtime)
                                        for c in precision_candidates("auto", "text", features=EPYC, runtimes=ALL)]
    text = precision_candidates("auto", "text", features={"avx2"}, runtimes=ALL)
    assert [(c.precision, c.runtime) for c in text] == [("fp32", "onnxruntime"), ("fp32", "openvino"),
                                                        ("fp32", "torch")]


def test_auto_on_an_accelerator_is_fp16_on_torch() -> None:
    # untestable here for real (no GPU): only the decision is checked
    assert resolve_precision("auto", "text", device="cuda", features=EPYC, runtimes=ALL) == TowerChoice(
        "text", "fp16", "torch")
    # an unresolved "auto" device is treated as CPU (resolving it would import torch)
    assert resolve_precision("auto", "text", device="auto", features=EPYC, runtimes=ALL).runtime == "onnxruntime"
    with pytest.raises(InvalidInputError, match="CPU only"):
        resolve_precision("fp32", "image", device="cuda", runtime="onnxruntime", runtimes=ALL)


def test_explicit_precision_is_kept_and_runtime_ordered() -> None:
    assert [c.runtime for c in precision_candidates("fp32", "image", runtimes=ALL)] == list(ALL[1:] + ALL[:1])
    assert [c.runtime for c in precision_candidates("int8", "text", runtimes=ALL)] == ["onnxruntime", "torch",
                                                                                        "openvino"]
    assert resolve_precision("int8", "image", runtime="openvino", runtimes=ALL) == TowerChoice("image", "int8",
                                                                                                "openvino")
    assert all(c.precision == "bf16" for c in precision_candidates("bf16", "image", runtimes=ALL))


def test_dtype_spellings_are_aliases() -> None:
    assert check_precision("float32") == "fp32"
    assert check_precision("bfloat16") == "bf16"
    assert check_precision("float16") == "fp16"


def test_unknown_precision_tower_or_runtime_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="unknown precision 'int4'"):
        resolve_precision("int4", "image")
    with pytest.raises(InvalidInputError, match="unknown tower"):
        resolve_precision("fp32", "audio")
    with pytest.raises(InvalidInputError, match="valid names"):
        resolve_precision("fp32", "image", runtime="tensorrt")
    with pytest.raises(InvalidInputError, match="cannot run bf16"):
        resolve_precision("bf16", "image", runtime="onnxruntime", runtimes=ALL)


def test_forced_runtime_that_is_not_installed_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="'openvino' is not installed"):
        resolve_precision("bf16", "image", runtime="openvino", runtimes=("torch", "onnxruntime"))


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 AVX512_VNNI avx512_bf16\n\nprocessor\t: 1\n"
    assert parse_cpu_flags(x86) == {"fpu", "avx2", "avx512_vnni", "avx512_bf16"}
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp bf16 i8mm\n"
    assert {"asimddp", "i8mm", "bf16"} <= parse_cpu_flags(arm)
    assert parse_cpu_flags("") == frozenset()
