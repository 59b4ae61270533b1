"""Jina Embeddings v4 (``jinaai/jina-embeddings-v4``) through the model's own code on the Hub.

The checkpoint ships its modelling code (a Qwen2.5-VL backbone with task LoRA adapters), so it loads with
``trust_remote_code=True`` and needs what that code imports (``peft``, ``torchvision``). Its public API is
``encode_image(images=[PIL...], task=...)`` and ``encode_text(texts=[...], task=..., prompt_name="query")``; it
resizes and batches images itself, so the pipeline's decode workers hand it the RGB images unchanged.

There is no learned temperature or bias to calibrate scores with: ``logit_bias`` is None (cosine only). Without
network access and without the checkpoint in the local cache, loading fails with ``ModelNotFoundError``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from img_search.embedding.base import FeatureVector, ModelInfo, PixelBatch
from img_search.embedding.device import resolve_device, resolve_dtype
from img_search.embedding.hf import _from_pretrained, canonical_model_id
from img_search.errors import ModelNotFoundError, UnknownNameError

logger = logging.getLogger(__name__)

JINA_V4_MODEL = "jinaai/jina-embeddings-v4"
JINA_V4_DIM = 2048
JINA_V4_MAX_TEXT_TOKENS = 32768
TASKS = ("retrieval", "text-matching", "code")
IMAGE_KEY = "image"


class PassThroughPreprocessor:
    """Picklable: wraps the PIL image in a 0-d object array so the collate step stacks images into a list."""

    def __call__(self, image: Any) -> PixelBatch:
        holder = np.empty((), dtype=object)
        holder[()] = image
        return {IMAGE_KEY: holder}


class JinaV4Encoder:
    def __init__(self, model: Any, *, model_id: str, device: str, task: str, truncate_dim: int | None) -> None:
        import torch

        self._torch = torch
        self.model = model.to(device).eval()
        self.device = device
        self.task = task
        self.truncate_dim = truncate_dim
        self.info = ModelInfo(
            model_id=model_id,
            family="jina_v4",
            dim=truncate_dim or JINA_V4_DIM,
            logit_scale=0.0,  # no learned temperature; with logit_bias None no probability is computed
            logit_bias=None,
            text_max_length=JINA_V4_MAX_TEXT_TOKENS,
        )

    def image_preprocessor(self) -> PassThroughPreprocessor:
        return PassThroughPreprocessor()

    def _options(self) -> dict[str, Any]:
        return {"task": self.task, **({"truncate_dim": self.truncate_dim} if self.truncate_dim else {})}

    def _normalize(self, out: Any) -> FeatureVector:
        torch = self._torch
        if isinstance(out, list | tuple):
            out = torch.stack([torch.as_tensor(o) for o in out])
        feats = torch.as_tensor(out).float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return feats.cpu().numpy().astype(np.float32, copy=False)

    def encode_images(self, images: list[Any]) -> FeatureVector:
        if not images:
            return np.empty((0, self.info.dim), dtype=np.float32)
        with self._torch.inference_mode():
            out = self.model.encode_image(images=list(images), batch_size=len(images), **self._options())
        return self._normalize(out)

    def encode_batch(self, batch: PixelBatch) -> FeatureVector:
        return self.encode_images(list(batch[IMAGE_KEY]))

    def encode_texts(self, texts: list[str]) -> FeatureVector:
        if not texts:
            return np.empty((0, self.info.dim), dtype=np.float32)
        with self._torch.inference_mode():
            out = self.model.encode_text(texts=list(texts), prompt_name="query", **self._options())
        return self._normalize(out)


def load_jina_v4(model: str = JINA_V4_MODEL, *, device: str = "auto", dtype: str = "auto", task: str = "retrieval",
                 truncate_dim: int | None = None) -> JinaV4Encoder:
    """Load the checkpoint (Hub id or local directory) with its remote code."""
    from transformers import AutoModel

    if task not in TASKS:
        raise UnknownNameError(f"unknown Jina v4 task {task!r}; valid: {', '.join(TASKS)}")
    model_id = canonical_model_id(model)
    dev = resolve_device(device)
    try:
        net = _from_pretrained(AutoModel, model_id, trust_remote_code=True, dtype=resolve_dtype(dtype, dev))
    except ImportError as exc:  # the remote code imports libraries this environment may lack
        raise ModelNotFoundError(
            f"{model_id!r} was found but its remote code could not be imported ({exc}); it needs peft and "
            "torchvision: pip install peft torchvision"
        ) from exc
    encoder = JinaV4Encoder(net, model_id=model_id, device=dev, task=task, truncate_dim=truncate_dim)
    logger.info("loaded %s (jina_v4, dim %d, task %s) on %s", model_id, encoder.info.dim, task, dev)
    return encoder
