"""Exported tower graphs and the runtime cache: built once per model and precision, shared by every process.

Layout, under ``$XDG_CACHE_HOME/img-search/runtimes/`` (default ``~/.cache/img-search``; never the model folder or the
Hugging Face cache, which may be read-only)::

    <model-slug>-<key>/               key = hash of the checkpoint's config.json and its files' names/sizes/mtimes
        manifest.json                 ModelInfo, the tensors' names, the light tokenizer's spec
        tokenizer/                    tokenizer.json or spiece.model (embedding.text_light)
        text-onnx-fp32/model.onnx     the text tower exported by torch.onnx (float32)
        text-onnx-int8/model.onnx     the same with its MatMuls int8 (onnxruntime.quantization, dynamic)
        image-onnx-fp32/ image-onnx-int8/
        parity/<tower>-<precision>-<runtime>.json

A changed checkpoint (re-downloaded, fine-tuned in place) gets a new key, so a stale graph is never used. Every
entry is written into a temporary name in the same folder and renamed into place (a folder rename for graphs), so
two processes exporting at once waste work but never leave a half-written graph: the first rename wins and the
other process uses it. A writer holds an exclusive ``flock`` on its temporary entry while it writes; the kernel drops
it when the writer dies, however it dies. Each export and JSON write first removes the temporary entries
(``.*.tmp``) nobody holds: those of killed writers (issue 12: a SIGKILL mid-export used to leave its half-built graph
folder behind for good), never one whose writer is alive.

Export needs torch, transformers, ``onnx`` and ``onnxscript`` (``torch.onnx``'s exporter); reading needs none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from img_search.embedding.precision import TowerChoice
from img_search.errors import ModelNotFoundError, UnavailableError

logger = logging.getLogger(__name__)

# bump when the exported graphs, the manifest or the layout change: old entries are then ignored (3: ONNX Runtime int8
# with per-channel weight scales)
FORMAT_VERSION = 3
GRAPH_FILE = "model.onnx"
OV_GRAPH_FILE = "model.xml"  # OpenVINO IR (+ model.bin): the ov-int8 graph
GRAPH_FILES = {"ov-int8": OV_GRAPH_FILE}  # graph kind -> file, when not GRAPH_FILE
# ov-int8 (OpenVINO static int8 through NNCF, image tower only): activations AND weights int8, activation ranges
# calibrated once on OV_CALIBRATION_IMAGES generated images (``parity.probe_images`` with ``CALIBRATION_SEED``: the
# parity probes' generator, another stream, so the parity check judges images the calibration never saw; until
# FORMAT_VERSION 2 the 8 probes were the set's first 8 and the check was optimistic). Measured on SigLIP-base (random
# weights), min cosine to float32 torch over 64 photo-like JPEGs (bench data) the calibration never saw: calibrated
# on 64 other photos, SmoothQuant on 0.9785 (all MatMuls), 0.9902 (head and patch embedding float), SmoothQuant off
# + head and patch embedding float 0.99955; calibrated on the 32 generated images instead, NNCF's default activation
# ranges (mean of per-sample extremes) 0.99874, the overall min / max of the set (RangeEstimatorParametersSet.MINMAX)
# 0.99972. Hence: head and patch embedding float, SmoothQuant off, MINMAX ranges.
OV_CALIBRATION_IMAGES = 32
OV_INT8_FLOAT_SCOPES = (".*/head/.*", ".*patch_embedding.*")  # ONNX node-name patterns kept float (SigLIP names)
ONNX_OPSET = 18
# int8: only MatMuls with a constant (weight) operand, activations quantized per batch at run time (no calibration
# set whose distribution could differ from the user's photos). The token-embedding Gather stays float32.
INT8_OP_TYPES = ("MatMul",)
_PROTOBUF_LIMIT = 1_800_000_000  # bytes of weights past which the graph keeps them in an external data file
_TEMP_SUFFIX = ".tmp"  # every temporary entry of the cache is named ".<final name>.<random><_TEMP_SUFFIX>"
_TEMP_ATTEMPTS = 5  # a new temporary name is tried when a cleaner removed the previous one before it was locked


def _hold(fd: int, path: str) -> bool:
    """Take the exclusive ``flock`` on ``fd`` (the open temporary entry ``path``) that marks it in use. False when
    another process holds it, or ``path`` is no longer ``fd``'s entry (a cleaner removed it between its creation
    and this lock). Where the file system has no ``flock`` (some network mounts) the entry stays unlocked, and
    ``RuntimeCache.remove_stale_temps`` cannot lock it either, so it is never removed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        logger.debug("no flock on %s (%s): it stays unlocked", path, exc)
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except OSError:
        return False


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/img-search``, else ``~/.cache/img-search``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "img-search"


def checkpoint_dir(model: str) -> Path:
    """The folder holding ``model``'s files: the directory itself, or the Hub id's snapshot in the local Hugging Face
    cache (resolved without importing transformers). Raises ``ModelNotFoundError`` when there is none locally."""
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return Path(os.path.abspath(expanded))
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "config.json")
    if isinstance(found, str):
        return Path(found).parent
    raise ModelNotFoundError(f"model {model!r} is neither a directory nor in the local Hugging Face cache")


def fingerprint(folder: Path) -> str:
    """A hex digest of the checkpoint in ``folder``: ``config.json``'s bytes and every file's relative name, size and
    mtime (weights are not read: hashing 800 MB would cost seconds on every search). Hidden entries are skipped."""
    digest = hashlib.sha256(f"img-search-runtime-v{FORMAT_VERSION}\n".encode())
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/"))[-60:] or "model"


class RuntimeCache:
    """The cache entry of one checkpoint (see the module docstring). Reading never needs torch."""

    def __init__(self, model: str, root: Path | str | None = None) -> None:
        self.model = model
        self.model_dir = checkpoint_dir(model)
        self.key = fingerprint(self.model_dir)
        self.root = Path(root) if root is not None else default_cache_dir()
        self.dir = self.root / "runtimes" / f"{_slug(model)}-{self.key[:20]}"

    @classmethod
    def find(cls, model: str, root: Path | str | None = None) -> RuntimeCache | None:
        """The entry of ``model``, or None when its checkpoint is not on this machine."""
        try:
            return cls(model, root)
        except ModelNotFoundError:
            return None

    # -- paths and reads ------------------------------------------------------------------------------------------
    def graph_path(self, tower: str, kind: str) -> Path:
        return self.dir / f"{tower}-{kind}" / GRAPH_FILES.get(kind, GRAPH_FILE)

    def has_graph(self, tower: str, kind: str) -> bool:
        return self.graph_path(tower, kind).is_file()

    @property
    def tokenizer_dir(self) -> Path:
        return self.dir / "tokenizer"

    def manifest(self) -> dict[str, Any] | None:
        return self._read_json(self.dir / "manifest.json")

    def parity_path(self, choice: TowerChoice) -> Path:
        return self.dir / "parity" / f"{choice.tower}-{choice.precision}-{choice.runtime}.json"

    def read_parity(self, choice: TowerChoice) -> dict[str, Any] | None:
        return self._read_json(self.parity_path(choice))

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == FORMAT_VERSION else None

    # -- atomic writes --------------------------------------------------------------------------------------------
    def _ensure_dir(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(f"the runtime cache {self.root} cannot be written ({exc.strerror}); set "
                                   "XDG_CACHE_HOME to a writable folder") from exc

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Write ``data`` (plus the format version) to ``path`` through a temporary file and ``os.replace``."""
        self._ensure_dir(path.parent)
        self.remove_stale_temps()
        for _ in range(_TEMP_ATTEMPTS):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:  # open until replaced: the flock marks it in use
                if not _hold(fd, tmp):
                    continue
                try:
                    json.dump({**data, "format": FORMAT_VERSION}, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.replace(tmp, path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
                return
        raise UnavailableError(f"cannot write {path}: its temporary file was removed {_TEMP_ATTEMPTS} times")

    def write_manifest(self, data: dict[str, Any]) -> None:
        self.write_json(self.dir / "manifest.json", data)

    def write_parity(self, choice: TowerChoice, data: dict[str, Any]) -> None:
        self.write_json(self.parity_path(choice), data)

    def publish(self, name: str, build: Callable[[Path], None]) -> Path:
        """Make the folder ``self.dir / name`` by ``build(tmp)`` into a temporary sibling, then renaming it into
        place; if another process published it first, keep theirs. Returns the folder."""
        final = self.dir / name
        if final.is_dir():
            return final
        self._ensure_dir(self.dir)
        self.remove_stale_temps()
        tmp, fd = self._temp_dir(name)
        try:
            build(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                logger.debug("%s was published by another process meanwhile", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(fd)  # drops the flock (on ``final`` once renamed)
        return final

    def _temp_dir(self, name: str) -> tuple[Path, int]:
        """A new temporary folder for ``name`` and an open descriptor of it holding its flock (``_hold``)."""
        for _ in range(_TEMP_ATTEMPTS):
            tmp = tempfile.mkdtemp(dir=self.dir, prefix=f".{name}.", suffix=_TEMP_SUFFIX)
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # removed by a cleaner before it could be locked
                continue
            if _hold(fd, tmp):
                return Path(tmp), fd
            os.close(fd)
        raise UnavailableError(f"cannot build {self.dir / name}: its temporary folder was removed "
                               f"{_TEMP_ATTEMPTS} times")

    def remove_stale_temps(self) -> list[str]:
        """Remove the temporary entries (``.*.tmp`` in the entry and its ``parity/``) whose writer is gone: those
        whose flock can be taken (the kernel dropped it when the writer died; entries written before writers held
        one have none either). An entry some process holds is left alone. Errors (a read-only cache, an entry
        vanishing meanwhile) are logged at debug and skipped. Returns the names removed."""
        removed: list[str] = []
        for folder in (self.dir, self.dir / "parity"):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for entry in names:
                if not (entry.startswith(".") and entry.endswith(_TEMP_SUFFIX)):
                    continue
                path = os.path.join(folder, entry)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if not os.path.samestat(os.lstat(path), os.fstat(fd)):
                        continue
                    if stat.S_ISDIR(os.fstat(fd).st_mode):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
                    removed.append(entry)
                except OSError as exc:  # held by a live writer (BlockingIOError), or cannot be removed
                    logger.debug("temporary %s left in place: %s", path, exc)
                finally:
                    os.close(fd)
        if removed:
            logger.info("removed %d temporary entries left by killed writers in %s: %s", len(removed), self.dir,
                        ", ".join(sorted(removed)))
        return removed


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """torch.onnx and onnxruntime.quantization print progress and advice to stdout/stderr and the root logger."""
    import io

    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _require(module: str, purpose: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UnavailableError(f"{purpose} needs the {module!r} package (a dependency of img-search: reinstall it)")


def export_tower(encoder: Any, tower: str, kind: str, cache: RuntimeCache) -> Path:
    """The graph file of ``tower`` as ``kind`` (``onnx-fp32`` | ``onnx-int8`` | ``ov-int8``) for ``encoder`` (an
    ``HFEncoder``), exported into ``cache`` unless already there. Raises ``UnavailableError`` when the exporter's
    packages are missing, the model cannot be exported, or ``ov-int8`` is asked for the text tower (the caller then
    takes the next choice)."""
    if cache.has_graph(tower, kind):
        return cache.graph_path(tower, kind)
    if kind == "ov-int8":
        if tower != "image":
            raise UnavailableError("OpenVINO static int8 is offered for the image tower only (text: min cosine 0.57 "
                                   "to float32 on SigLIP-base)")
        source = export_tower(encoder, tower, "onnx-fp32", cache)
        _require("openvino", "OpenVINO int8")
        _require("nncf", "OpenVINO int8 calibration (the img-search[openvino] extra)")
        calibration = _calibration_inputs(encoder)
        t0 = time.monotonic()
        cache.publish(f"{tower}-{kind}", lambda tmp: _quantize_openvino(source, tmp / OV_GRAPH_FILE, calibration))
        logger.info("quantized the %s tower to OpenVINO int8 in %.1f s (%s)", tower, time.monotonic() - t0, cache.dir)
        return cache.graph_path(tower, kind)
    if kind == "onnx-int8":
        source = export_tower(encoder, tower, "onnx-fp32", cache)
        _require("onnxruntime", "int8 quantization")
        t0 = time.monotonic()
        cache.publish(f"{tower}-{kind}", lambda tmp: _quantize(source, tmp / GRAPH_FILE))
        logger.info("quantized the %s tower to int8 in %.1f s (%s)", tower, time.monotonic() - t0, cache.dir)
    elif kind == "onnx-fp32":
        _require("onnx", "exporting a tower")
        _require("onnxscript", "exporting a tower")
        t0 = time.monotonic()
        cache.publish(f"{tower}-{kind}", lambda tmp: _export_fp32(encoder, tower, tmp / GRAPH_FILE))
        logger.info("exported the %s tower to ONNX in %.1f s (%s)", tower, time.monotonic() - t0, cache.dir)
    else:
        raise ValueError(f"unknown graph kind {kind!r}")
    return cache.graph_path(tower, kind)


def _sample_inputs(encoder: Any, tower: str) -> dict[str, Any]:
    from img_search.embedding.base import collate_pixels
    from img_search.embedding.parity import probe_images, probe_texts

    if tower == "image":
        pre = encoder.image_preprocessor()
        return collate_pixels([pre(img) for img in probe_images()[:2]])
    return encoder.tokenize(probe_texts()[:2])


def _export_fp32(encoder: Any, tower: str, path: Path) -> None:
    import torch

    model = encoder.model
    inputs = _sample_inputs(encoder, tower)
    names = tuple(inputs)

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            fn = self.model.get_image_features if tower == "image" else self.model.get_text_features
            out = fn(**dict(zip(names, args, strict=True)))
            return out.pooler_output if hasattr(out, "pooler_output") else out

    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batch = torch.export.Dim("batch", min=1, max=4096)
    errors = []
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        try:  # torch's current exporter (torch.export + onnxscript)
            torch.onnx.export(Tower().eval(), args, str(path), input_names=list(names), output_names=["features"],
                              dynamic_shapes=tuple({0: batch} for _ in names), dynamo=True, opset_version=ONNX_OPSET,
                              external_data=n_bytes > _PROTOBUF_LIMIT, optimize=True)
            return
        except Exception as exc:  # the TorchScript exporter handles some graphs torch.export refuses
            errors.append(f"dynamo: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        for leftover in path.parent.iterdir():
            leftover.unlink()
        try:
            torch.onnx.export(Tower().eval(), args, str(path), input_names=list(names), output_names=["features"],
                              dynamic_axes={**{n: {0: "batch"} for n in names}, "features": {0: "batch"}},
                              dynamo=False, opset_version=ONNX_OPSET)
            return
        except Exception as exc:
            errors.append(f"torchscript: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise UnavailableError(f"the {tower} tower of {encoder.info.model_id} could not be exported to ONNX "
                           f"({'; '.join(errors)})")


def _quantize(source: Path, dest: Path) -> None:
    """ONNX Runtime dynamic int8 (the int8 of ``onnxruntime`` choices): int8 weights with one scale per output
    channel, activations quantized per tensor at run time, ``INT8_OP_TYPES`` only.

    Per-channel scales since FORMAT_VERSION 3. On a *trained* transformer (all-MiniLM-L6-v2, the only trained weights
    reachable here; ``bench/trained_int8_recall.py``, docs/PERFORMANCE.md "int8 on trained weights") per-tensor
    scales gave a min cosine to float32 of 0.904 over 300 sentences, per-channel 0.985; on SigLIP-base with random
    weights 0.99973 -> 0.99980 (image) and 0.99968 -> 0.99974 (text), no measurable change in speed. Either way the
    parity check on the user's own checkpoint decides whether ``auto`` keeps it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = source.stat().st_size > _PROTOBUF_LIMIT or any(p != source for p in source.parent.iterdir())
    with _quiet_export():
        quantize_dynamic(source, dest, weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OP_TYPES),
                         per_channel=True, use_external_data_format=external)


def _calibration_inputs(encoder: Any) -> list[dict[str, Any]]:
    """``OV_CALIBRATION_IMAGES`` generated images through ``encoder``'s image preprocessor, one input dict of
    ``(1, 3, H, W)`` float32 arrays each."""
    from img_search.embedding.base import collate_pixels
    from img_search.embedding.parity import CALIBRATION_SEED, probe_images

    pre = encoder.image_preprocessor()
    return [collate_pixels([pre(img)]) for img in probe_images(OV_CALIBRATION_IMAGES, seed=CALIBRATION_SEED)]


def _quantize_openvino(source: Path, dest: Path, calibration: list[dict[str, Any]]) -> None:
    """NNCF post-training static quantization of the ONNX graph ``source`` into the OpenVINO IR ``dest``
    (``model.xml`` + ``model.bin``): transformer preset MIXED (symmetric weights, asymmetric activations), SmoothQuant
    off, activation ranges the min / max over the whole calibration set, ``OV_INT8_FLOAT_SCOPES`` left float.
    Raises ``UnavailableError`` when NNCF fails on the graph."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from img_search.embedding.runtime import _keeping_altstack

    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with _keeping_altstack(), _quiet_export():
            model = ov.Core().read_model(str(source))
            names = [frozenset(port.get_names()) for port in model.inputs]

            def feed(sample: dict[str, Any]) -> dict[int, Any]:
                return {i: next(v for k, v in sample.items() if k in n) for i, n in enumerate(names)}

            quantized = nncf.quantize(
                model, nncf.Dataset(calibration, feed), preset=nncf.QuantizationPreset.MIXED,
                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                ignored_scope=nncf.IgnoredScope(patterns=list(OV_INT8_FLOAT_SCOPES), validate=False),
                advanced_parameters=AdvancedQuantizationParameters(
                    smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1),
                    activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX))
            ov.save_model(quantized, str(dest))
    except UnavailableError:
        raise
    except Exception as exc:
        raise UnavailableError(f"NNCF could not quantize {source.name}: {type(exc).__name__}: {exc}") from exc
    finally:
        nncf_logger.setLevel(level)


class LightTokenizerMismatch(UnavailableError):
    """The light tokenizer would not give transformers' ids for this checkpoint; text queries load torch."""


def export_text_assets(encoder: Any, cache: RuntimeCache) -> dict[str, Any]:
    """Write the manifest and the light tokenizer of ``encoder`` (an ``HFEncoder``) into ``cache`` unless present,
    after checking that the light tokenizer gives transformers' ids for ``TOKENIZER_PROBES``. Returns the manifest;
    its ``tokenizer`` is None when no light tokenizer matches (text queries then load torch). Raises
    ``UnavailableError`` when the cache cannot be written."""
    from dataclasses import asdict

    import numpy as np

    from img_search.embedding.text_light import TOKENIZER_PROBES, export_light_tokenizer, load_light_tokenizer

    manifest = cache.manifest()
    if manifest is not None:
        return manifest

    def build(tmp: Path) -> None:
        try:
            spec = export_light_tokenizer(encoder.processor.tokenizer, tmp, max_length=encoder.text_max_length,
                                          lowercase=encoder.policy.lowercase,
                                          attention_mask=encoder.policy.attention_mask)
        except UnavailableError as exc:
            raise LightTokenizerMismatch(str(exc)) from exc
        light = load_light_tokenizer(tmp, spec)(list(TOKENIZER_PROBES))
        with warnings.catch_warnings():  # SigLIP's tokenizer warns about the probe that ends with "</s>"
            warnings.simplefilter("ignore")
            reference = encoder.tokenize(list(TOKENIZER_PROBES))
        for key, value in reference.items():
            ref = np.asarray(value)
            if key not in light or not np.array_equal(ref, light[key]):
                bad = [t for i, t in enumerate(TOKENIZER_PROBES)
                       if key not in light or not np.array_equal(ref[i], light[key][i])]
                raise LightTokenizerMismatch(f"the light tokenizer differs from transformers' ({key}) on {bad[:3]}")
        (tmp / "spec.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")

    spec: dict[str, Any] | None
    try:
        cache.publish("tokenizer", build)
        spec = json.loads((cache.tokenizer_dir / "spec.json").read_text(encoding="utf-8"))
    except LightTokenizerMismatch as exc:
        logger.warning("%s; text queries of %s will load torch", exc, encoder.info.model_id)
        spec = None
    manifest = {"model_id": encoder.info.model_id, "info": asdict(encoder.info), "tokenizer": spec,
                "text_inputs": list(encoder.tokenize(["x"])), "image_inputs": list(encoder._image_inputs)}
    cache.write_manifest(manifest)
    return manifest


def prepare_runtime(model: Any, precision: str = "auto", *, query_precision: str = "auto",
                    cache_dir: Path | str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Everything later processes need, built once: called by ``index`` before embedding.

    ``model``: an ``HFEncoder`` already loaded by the pipeline (reused), or a model name (loaded at ``precision``).
    Builds both towers of the encoder (exporting/quantizing their graphs into the runtime cache where the chosen
    runtime needs one), writes the manifest and the light tokenizer, makes sure a text graph for ``query_precision``
    (what ``load_text_encoder`` will look for; ``auto`` by default) is exported and parity-checked, and returns the
    parity verdicts of the encoder's towers, ``{"image": ParityResult, "text": ParityResult}`` -- what the catalog
    records. Export failures are not errors here (the towers fall back to torch; logged); an unwritable cache is
    logged too (searches then load torch). Raises ``InvalidInputError`` for an unknown precision.
    """
    from img_search.embedding.parity import check_parity

    encoder: Any = model
    if isinstance(model, str):
        from img_search.embedding import load_encoder

        encoder = load_encoder(model, device=device, precision=precision, cache_dir=cache_dir)
    if not hasattr(encoder, "session"):  # encoders without precisions (Jina v4): float32 torch, nothing to build
        return check_parity(encoder)
    verdicts = check_parity(encoder)
    cache = encoder.cache()
    if cache is None or not encoder.device.startswith("cpu"):
        return verdicts
    try:
        export_text_assets(encoder, cache)
        if encoder.precisions["text"] != query_precision:
            session, _ = encoder.build("text", query_precision, allow_export=True)
            from img_search.embedding.parity import tower_parity

            tower_parity(encoder, session.choice, session, cache=cache)
    except UnavailableError as exc:
        logger.warning("the fast text-query path could not be prepared (%s); searches will load torch", exc)
    return verdicts
