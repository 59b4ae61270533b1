"""Device and dtype selection: cuda, then mps, then cpu; half precision only on accelerators."""

from __future__ import annotations

from typing import Any

from img_search.errors import DeviceUnavailableError, InvalidInputError

DTYPES = ("auto", "float32", "float16", "bfloat16")


def _mps_available(torch: Any) -> bool:
    return getattr(torch.backends, "mps", None) is not None and bool(torch.backends.mps.is_available())


def resolve_device(device: str = "auto") -> str:
    """The torch device to run on: ``device`` as given once it is usable here, or for ``auto`` CUDA, then MPS, then
    the CPU. Raises ``DeviceUnavailableError`` for CUDA (or a ``cuda:N`` beyond the GPUs present) or MPS asked for on
    a machine without it, before any model is loaded (torch would fail with a RuntimeError while moving it)."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {device} asked for, but CUDA is not available here; use --device cpu")
        if device.startswith("cuda:") and device[5:].isdigit() and int(device[5:]) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise DeviceUnavailableError(
                f"--device {device} asked for, but this machine has {count} CUDA "
                f"{'device' if count == 1 else 'devices'} (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        if device == "mps" and not _mps_available(torch):
            raise DeviceUnavailableError(
                "--device mps asked for, but Apple's Metal (MPS) is not available here (it needs macOS on Apple "
                "silicon and a PyTorch built with it); use --device cpu")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if _mps_available(torch):
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
