"""Runtimes that run one encoder tower: torch (the reference), ONNX Runtime and OpenVINO.

Every runtime gives the same thing, a ``TowerSession``: arrays in (the processor's / tokenizer's outputs, numpy),
un-normalised features out (``(n, dim)`` float32). The encoders normalise. torch runs the loaded model itself (fp32,
bf16/fp16 through autocast, int8 through dynamic quantization of the tower's Linear layers); ONNX Runtime and
OpenVINO run a graph exported from it once per model and precision (``embedding.onnx_export``), which is why this
module imports none of them at module level: the light search path must stay free of torch.

Thread pools: ONNX Runtime's intra-op threads spin-wait between runs by default, which steals the cores from the
pipeline's decode workers and from any other process; spinning is switched off here (measured: no loss in
throughput or single-query latency, and neighbours stop slowing down).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.precision import TowerChoice
from img_search.errors import UnavailableError
from img_search.registry import Registry

logger = logging.getLogger(__name__)

Inputs = Mapping[str, NDArray[Any]]


class TowerSession(Protocol):
    """One tower ready to run: ``run`` takes the named input arrays (batch first) and returns ``(n, dim)`` float32
    features, not normalised."""

    choice: TowerChoice

    def run(self, inputs: Inputs) -> NDArray[np.float32]: ...


@dataclass(frozen=True)
class Runtime:
    """A runtime: the module that must be importable, the precisions it runs, and for graph runtimes which exported
    graph (``onnx-fp32`` | ``onnx-int8`` | ``ov-int8``) each precision runs and how to open it."""

    name: str
    module: str
    graphs: Mapping[str, str]  # precision -> graph kind; empty for torch (runs the live model)
    open_graph: Callable[[Path, TowerChoice, int | None], TowerSession] | None = None

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self.graphs) if self.graphs else ("fp32", "bf16", "fp16", "int8")

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


def cpu_threads() -> int:
    """The cores this process may use (``sched_getaffinity``; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# -- ONNX Runtime ---------------------------------------------------------------------------------------------------
class OrtSession:
    """An ONNX Runtime CPU session over one exported tower graph."""

    def __init__(self, path: Path, choice: TowerChoice, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.choice = choice

    def run(self, inputs: Inputs) -> NDArray[np.float32]:
        feed = {name: np.ascontiguousarray(inputs[name]) for name in self.input_names}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


# -- OpenVINO -------------------------------------------------------------------------------------------------------
# int8: the graph's quantized MatMuls run in int8 whatever the hint; the ops NNCF left float run in f32 (bf16 there
# measured ~5 % faster but is not native on every VNNI CPU)
_OV_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def _keeping_altstack() -> Iterator[None]:
    """Restore this thread's alternate signal stack after an OpenVINO call.

    OpenVINO's CPU plugin installs alternate signal stacks of its own on the calling thread (seen with strace:
    ``sigaltstack`` to 11,568-byte buffers during ``compile_model`` and ``infer``) and leaves the last one in place.
    Once that buffer is freed, the next signal delivered with ``SA_ONSTACK`` -- every handler CPython installs, e.g.
    the ``SIGCHLD`` of a finished subprocess or decode worker -- cannot get a frame and the kernel kills the process
    with SIGSEGV (si_code SI_KERNEL). Linux/glibc only; elsewhere a no-op.
    """
    libc = _libc()
    if libc is None:
        yield
        return
    saved = _StackT()
    if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        if saved.ss_flags & _SS_DISABLE:
            libc.sigaltstack(ctypes.byref(_StackT(None, _SS_DISABLE, 0)), None)
        else:
            libc.sigaltstack(ctypes.byref(saved), None)


_SS_DISABLE = 2  # <signal.h>


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


class OpenVinoSession:
    """An OpenVINO CPU compiled model of one exported tower graph: the ONNX fp32 graph for fp32 / bf16 (bf16 is
    OpenVINO's inference precision hint: it converts on the fly where the CPU has native bf16), the NNCF-quantized
    OpenVINO IR (``ov-int8``, ``model.xml``) for int8."""

    def __init__(self, path: Path, choice: TowerChoice, threads: int | None = None) -> None:
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION_HINT[choice.precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or cpu_threads()}
        with _keeping_altstack():
            self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        # an input port can carry several tensor names (the graph's input and a folded cast of it): keep them all
        self.port_names = [frozenset(port.get_names()) for port in self.compiled.inputs]
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: not safe to share between threads (ONNX Runtime's is)
        self.choice = choice

    def run(self, inputs: Inputs) -> NDArray[np.float32]:
        feed = {}
        for index, names in enumerate(self.port_names):
            name = next(n for n in inputs if n in names)
            feed[index] = np.ascontiguousarray(inputs[name])
        with self._lock, _keeping_altstack():
            result = self.request.infer(feed)
            return np.array(result[self.compiled.outputs[0]], dtype=np.float32)


RUNTIMES: Registry[Runtime] = Registry("runtime")
RUNTIMES.add("torch", Runtime("torch", "torch", {}))
RUNTIMES.add("onnxruntime", Runtime("onnxruntime", "onnxruntime", {"fp32": "onnx-fp32", "int8": "onnx-int8"},
                                    OrtSession))
RUNTIMES.add("openvino", Runtime("openvino", "openvino", {"fp32": "onnx-fp32", "bf16": "onnx-fp32",
                                                         "int8": "ov-int8"}, OpenVinoSession))


def installed_runtimes() -> tuple[str, ...]:
    """The registered runtimes whose library is importable here (checked without importing it)."""
    return tuple(name for name in RUNTIMES if RUNTIMES.get(name).installed())


def require_runtime(name: str, usable: Iterable[str] | None = None) -> Runtime:
    """The runtime ``name``; raises ``UnknownNameError`` (an ``InvalidInputError``) for an unknown name and
    ``UnavailableError`` when it is not installed (or not in ``usable``)."""
    runtime = RUNTIMES.get(name)
    usable = tuple(installed_runtimes() if usable is None else usable)
    if name not in usable:
        raise UnavailableError(
            f"runtime {name!r} is not installed here; install it (`pip install {runtime.module}`; OpenVINO is the "
            f"`img-search[openvino]` extra) or choose another runtime")
    return runtime


def graph_kind(choice: TowerChoice) -> str | None:
    """The exported graph ``choice`` runs (``onnx-fp32`` | ``onnx-int8`` | ``ov-int8``), or None for torch."""
    return RUNTIMES.get(choice.runtime).graphs.get(choice.precision)


def open_graph_session(path: Path, choice: TowerChoice, threads: int | None = None) -> TowerSession:
    """A session of ``choice``'s runtime over the graph file ``path``; ``UnavailableError`` if not installed."""
    runtime = require_runtime(choice.runtime)
    if runtime.open_graph is None:
        raise ValueError(f"runtime {choice.runtime!r} does not run exported graphs")
    return runtime.open_graph(path, choice, threads)


# -- torch ----------------------------------------------------------------------------------------------------------
_TOWER_MODULES = {"image": ("vision_model", "visual_projection"), "text": ("text_model", "text_projection")}


class TorchTowerSession:
    """A tower of a loaded ``transformers`` dual encoder run by torch: fp32 as is, bf16/fp16 under autocast, int8 as
    a copy of the tower with its ``nn.Linear`` layers dynamically quantized (``torch.ao.quantization``; the rest of
    the model is shared, not copied)."""

    def __init__(self, model: Any, choice: TowerChoice, device: str) -> None:
        import torch

        self._torch = torch
        self.choice = choice
        self.device = device
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(choice.precision)
        if choice.precision == "int8":
            if not device.startswith("cpu"):
                raise UnavailableError("int8 runs on CPU only; use fp16 or bf16 on an accelerator")
            model = _quantized_tower(model, choice.tower)
        self.fn = model.get_image_features if choice.tower == "image" else model.get_text_features

    def run(self, inputs: Inputs) -> NDArray[np.float32]:
        torch = self._torch
        # the model stays float32: autocast, not a cast of the inputs, makes the half-precision variants
        tensors = {key: torch.from_numpy(np.ascontiguousarray(value)).to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast):
                    out = self.fn(**tensors)
            else:
                out = self.fn(**tensors)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return feats.float().cpu().numpy()


def _quantized_tower(model: Any, tower: str) -> Any:
    """A shallow copy of ``model`` whose ``tower`` sub-modules are int8-dynamic-quantized deep copies."""
    import copy
    import warnings

    import torch

    clone = copy.copy(model)
    clone._modules = dict(model._modules)  # the copy's own module table; the original's stays untouched
    with warnings.catch_warnings():  # torch.ao's deprecation notice points at torchao, which is not a dependency
        warnings.simplefilter("ignore")
        for name in _TOWER_MODULES[tower]:
            sub = model._modules.get(name)
            if sub is None:
                continue
            # embeddings stay float: SigLIP 2's patch embedding is a Linear whose .weight the model reads directly
            # and so is nn.MultiheadAttention's out_proj (a Linear subclass whose weight F.multi_head_attention reads)
            linears = {n for n, m in sub.named_modules() if type(m) is torch.nn.Linear and "embeddings" not in n}
            if isinstance(sub, torch.nn.Linear):
                clone._modules[name] = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(copy.deepcopy(sub)), {torch.nn.Linear}, dtype=torch.qint8)[0]
            elif linears:
                clone._modules[name] = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(sub), linears, dtype=torch.qint8)
    return clone
