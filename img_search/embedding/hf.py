"""SigLIP, SigLIP 2 and CLIP through ``transformers`` (AutoModel / AutoProcessor, PIL image processors).

Text handling follows how each family was trained, not the convenient default:

* SigLIP / SigLIP 2 pad text to ``max_length`` (64 for the published checkpoints) and feed *no*
  attention mask: the model pools the last position, and it was trained with pad (= eos) tokens
  attended. ``padding=True`` (as some earlier systems did) makes a text's vector depend on the
  longest text in its batch.
* SigLIP 2 was trained on lowercased text; its Hub checkpoints ship a plain Gemma tokenizer, so we
  lowercase here (idempotent where the tokenizer already does).
* CLIP pools at the end-of-text token under a causal mask; it gets the attention mask and also
  fixed ``max_length`` padding so a text's vector never depends on its batch.
* Images: each checkpoint's own processor (SigLIP resizes to a square without a centre crop).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.base import FeatureVector, ModelInfo, PixelBatch, collate_pixels, l2_normalize
from img_search.embedding.device import resolve_device
from img_search.embedding.onnx_export import RuntimeCache, export_tower
from img_search.embedding.parity import MIN_AUTO_SPEEDUP, ParityResult, tower_parity
from img_search.embedding.precision import (
    ACCELERATOR_PRECISION,
    TOWERS,
    TowerChoice,
    check_precision,
    precision_candidates,
)
from img_search.embedding.runtime import TorchTowerSession, TowerSession, graph_kind, open_graph_session
from img_search.errors import ModelNotFoundError, UnavailableError, UnknownNameError
from img_search.registry import Registry

logger = logging.getLogger(__name__)

# runtimes whose import a Ctrl-C cut short in this process (runtime name -> the error it surfaced as): a native
# extension left half-initialised fails a second import differently ('type "Extension" is already registered'),
# which must not pass for a runtime that does not work on this model
_INTERRUPTED_RUNTIMES: dict[str, str] = {}


def interrupted_by(exc: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` in ``exc``'s chain (``__cause__`` / ``__context__``), if any: a Ctrl-C (or the
    CLI's SIGTERM handler) that landed inside a native import surfaces as ``ImportError('initialization failed')``
    raised from it."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if isinstance(current, KeyboardInterrupt):
            return current
        if id(current) not in seen:
            seen.add(id(current))
            todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None

TEXT_BATCH_SIZE = 256


@dataclass(frozen=True)
class TextPolicy:
    lowercase: bool
    attention_mask: bool
    has_bias: bool


FAMILIES: Registry[TextPolicy] = Registry("encoder family")
FAMILIES.add("siglip", TextPolicy(lowercase=False, attention_mask=False, has_bias=True))
FAMILIES.add("siglip2", TextPolicy(lowercase=True, attention_mask=False, has_bias=True))
FAMILIES.add("clip", TextPolicy(lowercase=False, attention_mask=True, has_bias=False))

# config.model_type -> family; SigLIP 2 fixed-resolution checkpoints are model_type "siglip" with a
# Gemma tokenizer, so the tokenizer decides between the two
_MODEL_TYPES = {"siglip": "siglip", "siglip2": "siglip2", "clip": "clip"}
_GEMMA_TOKENIZERS = ("Gemma", "Siglip2")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~")) or os.path.sep in model_id.strip("/").replace("/", "", 1)


def canonical_model_id(model: str) -> str:
    """The name a model is recorded under: an absolute path for local directories, else the Hub id."""
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    return model


def _not_found(model_id: str, exc: BaseException | None) -> ModelNotFoundError:
    detail = f" ({type(exc).__name__}: {str(exc).splitlines()[0]})" if exc else ""
    if os.path.isdir(os.path.expanduser(model_id)):
        return ModelNotFoundError(
            f"{model_id!r} is a directory but not a loadable checkpoint{detail}; it needs the files "
            "`save_pretrained` writes for both the model and its processor (config.json, weights, tokenizer, "
            "processor config)"
        )
    if looks_like_path(model_id):
        return ModelNotFoundError(f"model directory {model_id!r} does not exist")
    return ModelNotFoundError(
        f"could not load model {model_id!r}: it is not in the local Hugging Face cache and the Hub could not be "
        f"reached{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}{detail}. Download it where the Hub is "
        f"reachable (`huggingface-cli download {model_id} --local-dir DIR`) and pass --model DIR "
        "(or IMG_SEARCH_MODEL=DIR), or point HF_HOME at a cache that holds it."
    )


def _from_pretrained(loader: Any, model_id: str, **kwargs: Any) -> Any:
    """Try the local cache first (instant), then the Hub unless offline; wrap failures in ModelNotFoundError."""
    try:
        return loader.from_pretrained(model_id, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        first: BaseException = exc
    if hub_offline() or os.path.isdir(os.path.expanduser(model_id)):
        raise _not_found(model_id, first) from first
    try:
        return loader.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(model_id, exc) from exc


class HFImagePreprocessor:
    """Picklable: wraps the checkpoint's PIL image processor for one image at a time.

    Fast path: for a processor that only resizes to a fixed height x width, rescales and normalises (SigLIP's), an RGB
    image goes through the same three steps here (PIL ``resize`` with the processor's filter, then float32 numpy),
    without the processor's per-call validation and conversions: ~1.3 of ~3.2 ms of CPU per image less in the decode
    workers (docs/PERFORMANCE.md, "Indexing end to end per precision"), and rescale + normalise as one in-place
    multiply-add (``_fast_pixels``). It is used only after its output was found
    equal to the processor's (max |difference| <= ``FAST_PATH_TOLERANCE``) on a probe image, checked once per process.
    """

    FAST_PATH_TOLERANCE = 1e-5  # on the processor's normalised scale ([-1, 1] for SigLIP): float32 rounding only

    def __init__(self, image_processor: Any, input_names: tuple[str, ...]) -> None:
        self.image_processor = image_processor
        self.input_names = input_names
        self._fast: tuple[Any, ...] | bool | None = False  # False: not checked yet; None: no fast path

    def __call__(self, image: Any) -> PixelBatch:
        if self._fast is False:
            self._fast = self._fast_plan()
        plan = self._fast
        if isinstance(plan, tuple) and getattr(image, "mode", None) == "RGB":
            return {"pixel_values": self._fast_pixels(image, plan)}
        return self._slow(image)

    def _slow(self, image: Any) -> PixelBatch:
        out = self.image_processor(images=[image], return_tensors="np")
        return {k: np.asarray(out[k])[0] for k in self.input_names if k in out}

    @staticmethod
    def _fast_pixels(image: Any, plan: tuple[Any, ...]) -> NDArray[np.float32]:
        """RGB PIL image -> float32 (3, height, width): resize, then ``x * gain + offset`` per channel as ``plan``
        says (rescale and normalise folded into one multiply-add, written in place: ~0.25 ms of CPU per 224x224
        image against ~1.5 ms for rescale, subtract, divide and transpose as separate numpy passes)."""
        size, resample, gain, offset = plan
        hwc = np.asarray(image.resize(size, resample))
        out = np.empty((hwc.shape[2], hwc.shape[0], hwc.shape[1]), dtype=np.float32)
        np.multiply(hwc.transpose(2, 0, 1), gain, out=out, casting="unsafe")
        out += offset
        return out

    def _fast_plan(self) -> tuple[Any, ...] | None:
        """(size, resample, gain, offset) when the processor is resize + rescale + normalise and the fast path
        reproduces it on a probe image; None otherwise (the processor itself then runs)."""
        from PIL import Image

        proc = self.image_processor
        size = getattr(proc, "size", None) or {}
        simple = (self.input_names == ("pixel_values",) and getattr(proc, "do_resize", False) and hasattr(size, "get")
                  and size.get("height") and size.get("width") and not getattr(proc, "do_center_crop", False)
                  and not getattr(proc, "do_pad", False) and isinstance(getattr(proc, "resample", None), int))
        if not simple:
            return None
        # (x * scale - mean) / std == x * (scale / std) - mean / std, per channel, shaped (3, 1, 1) for CHW
        scale = float(proc.rescale_factor) if getattr(proc, "do_rescale", False) else 1.0
        mean, std = np.zeros(3), np.ones(3)
        if getattr(proc, "do_normalize", False):
            mean = np.broadcast_to(np.asarray(proc.image_mean, np.float64), (3,))
            std = np.broadcast_to(np.asarray(proc.image_std, np.float64), (3,))
        gain = (scale / std).astype(np.float32).reshape(3, 1, 1)
        offset = (-mean / std).astype(np.float32).reshape(3, 1, 1)
        plan = ((int(size["width"]), int(size["height"])), Image.Resampling(int(proc.resample)), gain, offset)
        rng = np.random.default_rng(8)
        probe = Image.fromarray(rng.integers(0, 256, size=(173, 301, 3), dtype=np.uint8), "RGB")
        try:
            fast = self._fast_pixels(probe, plan)
            slow = np.asarray(self._slow(probe)["pixel_values"], np.float32)
        except Exception as exc:  # an unexpected processor: keep it as it is
            logger.debug("no fast image preprocessing: %s", exc)
            return None
        if fast.shape != slow.shape or float(np.abs(fast - slow).max()) > self.FAST_PATH_TOLERANCE:
            logger.debug("no fast image preprocessing: it differs from the processor's on the probe")
            return None
        return plan

    @property
    def input_side(self) -> int | None:
        """Pixels a side the processor resizes every image to: the larger side of its fixed ``size`` (SigLIP:
        224x224, aspect not kept) or its ``shortest_edge`` (CLIP, before the centre crop); None when it resizes to
        neither (no resize, or a patch budget as in SigLIP 2's NaFlex): reduced-scale decoding is then off."""
        proc = self.image_processor
        size = getattr(proc, "size", None) or {}
        if not getattr(proc, "do_resize", True) or not hasattr(size, "get"):
            return None
        if size.get("height") and size.get("width"):
            return max(int(size["height"]), int(size["width"]))
        if size.get("shortest_edge"):
            return int(size["shortest_edge"])
        return None

    def __eq__(self, other: object) -> bool:
        """Same processor class, configuration and inputs (decode workers started with one loaded apart from the
        model are checked against the model's own)."""
        if not isinstance(other, HFImagePreprocessor):
            return NotImplemented
        return (type(self.image_processor) is type(other.image_processor) and self.input_names == other.input_names
                and self.image_processor.to_dict() == other.image_processor.to_dict())

    __hash__ = None  # type: ignore[assignment]


class HFEncoder:
    """One encoder class for every ``transformers`` dual encoder family registered in FAMILIES.

    Each tower runs at its own precision on its own runtime (``embedding.precision``): ``precisions`` maps
    "image"/"text" to what was asked (auto | fp32 | bf16 | fp16 | int8), ``session(tower)`` builds the tower on first
    use (exporting its graph into the runtime cache when ``allow_export``) and ``choices`` says what runs. ``auto``
    keeps the fastest candidate whose parity check passes (``parity[tower]``); an explicit precision is kept as asked
    (its parity is computed by ``check_parity`` for the catalog). The model itself stays float32: it is the parity
    reference and the torch runtime's weights.
    """

    def __init__(self, model: Any, processor: Any, *, model_id: str, family: str, device: str,
                 precisions: dict[str, str] | None = None, runtime: str = "auto", cache_dir: Path | str | None = None,
                 allow_export: bool = True) -> None:
        import torch

        self.policy = FAMILIES.get(family)
        self.model = model.to(device=device, dtype=torch.float32).eval()
        self.processor = processor
        self.device = device
        self.precisions = {tower: check_precision((precisions or {}).get(tower, "fp32")) for tower in TOWERS}
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.allow_export = allow_export
        self.parity: dict[str, ParityResult] = {}
        self._sessions: dict[str, TowerSession] = {}
        self._references: dict[str, TowerSession] = {}
        self._cache: RuntimeCache | None = None
        self._cache_checked = False
        self._lock = threading.RLock()
        text_cfg = model.config.text_config
        self.text_max_length = int(getattr(text_cfg, "max_position_embeddings", 64))
        bias = getattr(model, "logit_bias", None)
        self.info = ModelInfo(
            model_id=model_id,
            family=family,
            dim=self._embedding_dim(model),
            logit_scale=float(model.logit_scale.detach().float().reshape(-1)[0]),
            logit_bias=float(bias.detach().float().reshape(-1)[0]) if (bias is not None and self.policy.has_bias)
            else None,
            text_max_length=self.text_max_length,
        )
        names = getattr(processor.image_processor, "model_input_names", None) or ["pixel_values"]
        self._image_inputs = tuple(names)
        for tower in TOWERS:  # fail now on an unknown precision/runtime, not at the first batch
            precision_candidates(self.precisions[tower], tower, device=device, runtime=runtime)

    @staticmethod
    def _embedding_dim(model: Any) -> int:
        cfg = model.config
        if getattr(cfg, "projection_dim", None) and hasattr(model, "visual_projection"):
            return int(cfg.projection_dim)
        return int(cfg.vision_config.hidden_size)

    # -- runtimes -------------------------------------------------------------------------------------------------
    def cache(self) -> RuntimeCache | None:
        """This checkpoint's runtime-cache entry (None when the checkpoint's files cannot be located)."""
        if not self._cache_checked:
            self._cache = RuntimeCache.find(self.info.model_id, self.cache_dir)
            self._cache_checked = True
        return self._cache

    def reference_session(self, tower: str) -> TowerSession:
        """The float32 torch tower: the parity reference."""
        with self._lock:
            if tower not in self._references:
                self._references[tower] = TorchTowerSession(self.model, TowerChoice(tower, "fp32", "torch"),
                                                            self.device)
            return self._references[tower]

    def open_choice(self, choice: TowerChoice, *, allow_export: bool | None = None) -> TowerSession:
        """A session running ``choice``: torch on the loaded model, or the cached exported graph (exported now when
        allowed). Raises ``UnavailableError`` when it cannot be built here."""
        if choice.runtime == "torch":
            if choice.precision == "fp32":
                return self.reference_session(choice.tower)
            return TorchTowerSession(self.model, choice, self.device)
        kind = graph_kind(choice)
        cache = self.cache()
        if kind is None or cache is None:
            raise UnavailableError(f"{choice} needs an exported graph and {self.info.model_id}'s files were not found")
        export = self.allow_export if allow_export is None else allow_export
        if not cache.has_graph(choice.tower, kind):
            if not export:
                raise UnavailableError(f"{choice}: no exported graph cached yet (built by `index`)")
            export_tower(self, choice.tower, kind, cache)
        return open_graph_session(cache.graph_path(choice.tower, kind), choice)

    def build(self, tower: str, precision: str, *, allow_export: bool | None = None
              ) -> tuple[TowerSession, ParityResult | None]:
        """The first candidate of ``precision`` for ``tower`` that builds (and, for ``auto``, passes parity and, for a
        reduced precision, was timed at least ``parity.MIN_AUTO_SPEEDUP`` x float32's speed on the probes), with its
        parity verdict (None for an explicit precision: computed on demand by ``check_parity``)."""
        failures: list[str] = []
        for choice in precision_candidates(precision, tower, device=self.device, runtime=self.runtime):
            if choice.runtime in _INTERRUPTED_RUNTIMES:  # half-initialised: a second import fails in other ways
                reason = (f"{choice}: its import was interrupted earlier in this process "
                          f"({_INTERRUPTED_RUNTIMES[choice.runtime]}); restart to use it")
                failures.append(reason)
                logger.info("%s unavailable: %s", choice, reason)
                continue
            try:
                session = self.open_choice(choice, allow_export=allow_export)
                if precision != "auto":
                    return session, None
                verdict = tower_parity(self, choice, session, cache=self.cache())
            except UnavailableError as exc:
                failures.append(str(exc))
                logger.info("%s unavailable: %s", choice, exc)
                continue
            except Exception as exc:  # auto: a candidate that breaks on this model is skipped, not fatal
                if interrupted_by(exc) is not None:  # Ctrl-C inside the runtime's import: not a broken runtime
                    _INTERRUPTED_RUNTIMES[choice.runtime] = f"{type(exc).__name__}: {exc}"
                    raise KeyboardInterrupt from exc
                if precision != "auto" or choice == TowerChoice(tower, "fp32", "torch"):
                    raise
                failures.append(f"{choice}: {type(exc).__name__}: {exc}")
                logger.warning("%s failed on %s (%s: %s); trying the next choice", choice, self.info.model_id,
                               type(exc).__name__, exc)
                continue
            if verdict.passed and not verdict.too_slow_for_auto:
                return session, verdict
            if verdict.passed:
                failures.append(f"{choice}: {verdict.speedup:.2f}x float32's speed")
                logger.warning("%s is no faster than float32 here (%.2fx on the parity probes, < %s); trying the "
                               "next choice", choice, verdict.speedup, MIN_AUTO_SPEEDUP)
                continue
            failures.append(f"{choice}: parity {verdict.min_cosine:.5f} < {verdict.threshold}")
            logger.warning("%s fails its parity check (min cosine %.5f < %s); trying the next choice", choice,
                           verdict.min_cosine, verdict.threshold)
        raise UnavailableError(f"no runtime can run the {tower} tower at {precision} here: {'; '.join(failures)}")

    def session(self, tower: str) -> TowerSession:
        """The tower's session at its requested precision (built once, on first use)."""
        with self._lock:
            if tower not in self._sessions:
                session, verdict = self.build(tower, self.precisions[tower])
                self._sessions[tower] = session
                if verdict is not None:
                    self.parity[tower] = verdict
                logger.info("%s: %s", self.info.model_id, session.choice)
            return self._sessions[tower]

    @property
    def choices(self) -> dict[str, TowerChoice]:
        """What each tower runs with (builds both towers)."""
        return {tower: self.session(tower).choice for tower in TOWERS}

    # -- encoding -------------------------------------------------------------------------------------------------
    def image_preprocessor(self) -> HFImagePreprocessor:
        return HFImagePreprocessor(self.processor.image_processor, self._image_inputs)

    def encode_batch(self, batch: PixelBatch) -> FeatureVector:
        return l2_normalize(self.session("image").run(batch))

    def encode_images(self, images: list[Any]) -> FeatureVector:
        pre = self.image_preprocessor()
        return self.encode_batch(collate_pixels([pre(img) for img in images]))

    def tokenize(self, texts: list[str]) -> dict[str, Any]:
        """Texts -> ``input_ids`` (+ ``attention_mask`` for CLIP), int64 arrays ``(n, text_max_length)``."""
        if self.policy.lowercase:
            texts = [t.lower() for t in texts]
        tok = self.processor.tokenizer(
            texts, padding="max_length", max_length=self.text_max_length, truncation=True, return_tensors="np"
        )
        keys = ("input_ids", "attention_mask") if self.policy.attention_mask else ("input_ids",)
        return {k: np.asarray(tok[k], dtype=np.int64) for k in keys if k in tok}

    def encode_texts(self, texts: list[str]) -> FeatureVector:
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32)
        session = self.session("text")
        chunks = [l2_normalize(session.run(self.tokenize(list(texts[start: start + TEXT_BATCH_SIZE]))))
                  for start in range(0, len(texts), TEXT_BATCH_SIZE)]
        return np.concatenate(chunks)


def detect_family(config: Any, processor: Any) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        raise UnknownNameError(
            f"model type {model_type!r} is not a supported dual encoder; supported: {', '.join(sorted(_MODEL_TYPES))}"
        )
    family = _MODEL_TYPES[model_type]
    tokenizer_name = type(getattr(processor, "tokenizer", None)).__name__
    if family == "siglip" and tokenizer_name.startswith(_GEMMA_TOKENIZERS):
        family = "siglip2"
    return family


def load_image_preprocessor(model: str) -> HFImagePreprocessor | None:
    """The image preprocessor ``load_hf_encoder(model)`` will hand out, loaded alone (the checkpoint's processor
    files only: ~10 ms after the ``transformers`` import), so decode workers can start before the model is loaded
    (``pipeline.loop.EarlyStart``); None when it cannot be loaded that way (the caller then waits for the encoder)."""
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        processor = _from_pretrained(AutoProcessor, canonical_model_id(model))
        image_processor = processor.image_processor
    except Exception as exc:  # any checkpoint the encoder itself may still load (remote code, no processor files)
        logger.debug("image preprocessor of %s not loaded ahead of the model: %s", model, exc)
        return None
    names = getattr(image_processor, "model_input_names", None) or ["pixel_values"]
    return HFImagePreprocessor(image_processor, tuple(names))


def load_hf_encoder(model: str, *, family: str | None = None, device: str = "auto", dtype: str | None = None,
                   precision: str | None = None, image_precision: str | None = None,
                   text_precision: str | None = None, runtime: str = "auto", cache_dir: Path | str | None = None,
                   allow_export: bool = True) -> HFEncoder:
    """Load a checkpoint (Hub id or local directory) into an HFEncoder.

    ``precision`` (both towers) or ``image_precision`` / ``text_precision``: auto | fp32 | bf16 | fp16 | int8. The
    default is float32 on CPU and fp16 on CUDA/MPS (what ``dtype="auto"`` meant); ``dtype`` (float32 | bfloat16 |
    float16 | auto) is the deprecated spelling. ``runtime``: auto | torch | onnxruntime | openvino. ``cache_dir``:
    the runtime cache's root (default ``$XDG_CACHE_HOME/img-search``). ``allow_export=False`` never exports a graph
    (a search process must not): a choice without a cached graph falls back to the next runtime.
    Raises ``ModelNotFoundError``, ``InvalidInputError`` (unknown precision / runtime), ``UnavailableError``.
    """
    from transformers import AutoModel, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if dtype not in (None, "auto"):
        warnings.warn("dtype is deprecated: use precision (fp32 | bf16 | fp16 | int8 | auto)", DeprecationWarning,
                      stacklevel=2)
    if precision is image_precision is text_precision is None and dtype in (None, "auto") and runtime == "auto":
        runtime = "torch"  # nothing asked: the float32 (GPU: fp16) transformers model as always, no export
    model_id = canonical_model_id(model)
    if family is not None:
        FAMILIES.get(family)  # fail early on a typo
    dev = resolve_device(device)
    default = precision or (check_precision(dtype) if dtype not in (None, "auto") else None)
    default = default or ("fp32" if dev.startswith("cpu") else ACCELERATOR_PRECISION)
    wanted = {"image": image_precision or default, "text": text_precision or default}
    for tower, value in wanted.items():
        wanted[tower] = check_precision(value)
    processor = _from_pretrained(AutoProcessor, model_id)
    net = _from_pretrained(AutoModel, model_id)
    family = family or detect_family(net.config, processor)
    enc = HFEncoder(net, processor, model_id=model_id, family=family, device=dev, precisions=wanted, runtime=runtime,
                    cache_dir=cache_dir, allow_export=allow_export)
    logger.info("loaded %s (%s, dim %d) on %s; precision image %s, text %s", model_id, family, enc.info.dim, dev,
                wanted["image"], wanted["text"])
    return enc
