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
from dataclasses import dataclass
from typing import Any

import numpy as np

from img_search.embedding.base import FeatureVector, ModelInfo, PixelBatch, collate_pixels
from img_search.embedding.device import resolve_device, resolve_dtype
from img_search.errors import ModelNotFoundError, UnknownNameError
from img_search.registry import Registry

logger = logging.getLogger(__name__)

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
    """Picklable: wraps the checkpoint's PIL image processor for one image at a time."""

    def __init__(self, image_processor: Any, input_names: tuple[str, ...]) -> None:
        self.image_processor = image_processor
        self.input_names = input_names

    def __call__(self, image: Any) -> PixelBatch:
        out = self.image_processor(images=[image], return_tensors="np")
        return {k: np.asarray(out[k])[0] for k in self.input_names if k in out}


class HFEncoder:
    """One encoder class for every ``transformers`` dual encoder family registered in FAMILIES."""

    def __init__(self, model: Any, processor: Any, *, model_id: str, family: str, device: str, dtype: Any) -> None:
        import torch

        self.policy = FAMILIES.get(family)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self._torch = torch
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

    @staticmethod
    def _embedding_dim(model: Any) -> int:
        cfg = model.config
        if getattr(cfg, "projection_dim", None) and hasattr(model, "visual_projection"):
            return int(cfg.projection_dim)
        return int(cfg.vision_config.hidden_size)

    def image_preprocessor(self) -> HFImagePreprocessor:
        return HFImagePreprocessor(self.processor.image_processor, self._image_inputs)

    def _normalize(self, feats: Any) -> FeatureVector:
        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_batch(self, batch: PixelBatch) -> FeatureVector:
        torch = self._torch
        inputs: dict[str, Any] = {}
        for key, value in batch.items():
            tensor = torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
            inputs[key] = tensor.to(self.dtype) if key == "pixel_values" else tensor
        with torch.inference_mode():
            out = self.model.get_image_features(**inputs)
        return self._normalize(out.pooler_output if hasattr(out, "pooler_output") else out)

    def encode_images(self, images: list[Any]) -> FeatureVector:
        pre = self.image_preprocessor()
        return self.encode_batch(collate_pixels([pre(img) for img in images]))

    def tokenize(self, texts: list[str]) -> dict[str, Any]:
        if self.policy.lowercase:
            texts = [t.lower() for t in texts]
        tok = self.processor.tokenizer(
            texts, padding="max_length", max_length=self.text_max_length, truncation=True, return_tensors="pt"
        )
        keys = ("input_ids", "attention_mask") if self.policy.attention_mask else ("input_ids",)
        return {k: tok[k] for k in keys if k in tok}

    def encode_texts(self, texts: list[str]) -> FeatureVector:
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32)
        torch = self._torch
        chunks = []
        for start in range(0, len(texts), TEXT_BATCH_SIZE):
            chunk = list(texts[start : start + TEXT_BATCH_SIZE])
            inputs = {k: v.to(self.device) for k, v in self.tokenize(chunk).items()}
            with torch.inference_mode():
                out = self.model.get_text_features(**inputs)
            chunks.append(self._normalize(out.pooler_output if hasattr(out, "pooler_output") else out))
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


def load_hf_encoder(model: str, *, family: str | None = None, device: str = "auto", dtype: str = "auto") -> HFEncoder:
    """Load a checkpoint (Hub id or local directory) into an HFEncoder."""
    from transformers import AutoModel, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model_id = canonical_model_id(model)
    if family is not None:
        FAMILIES.get(family)  # fail early on a typo
    processor = _from_pretrained(AutoProcessor, model_id)
    net = _from_pretrained(AutoModel, model_id)
    family = family or detect_family(net.config, processor)
    dev = resolve_device(device)
    enc = HFEncoder(net, processor, model_id=model_id, family=family, device=dev, dtype=resolve_dtype(dtype, dev))
    logger.info("loaded %s (%s, dim %d) on %s", model_id, family, enc.info.dim, dev)
    return enc

