"""Device and dtype selection: cuda, then mps, then cpu; half precision only on accelerators."""

from __future__ import annotations

from typing import Any

from img_search.errors import DeviceUnavailableError, InvalidInputError

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {device} asked for, but CUDA is not available here; use --device cpu")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if dtype == "auto":
        # fp16 halves memory and doubles throughput on GPUs; CPUs have no fast half kernels here
        return torch.float16 if device.startswith(("cuda", "mps")) else torch.float32
    return getattr(torch, dtype)
