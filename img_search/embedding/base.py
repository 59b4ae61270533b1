"""Encoder contract: images and texts in, L2-normalised float32 vectors out.

Image preprocessing is split from the forward pass on purpose: ``ImagePreprocessor`` is a
small picklable callable that runs in the pipeline's decode workers (PIL image -> arrays),
while ``Encoder.encode_batch`` runs the model on collated arrays in the main process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

FeatureVector = NDArray[np.float32]
PixelBatch = dict[str, NDArray[Any]]


@dataclass(frozen=True)
class ModelInfo:
    """What the catalog records about a model, and what calibration needs."""

    model_id: str  # Hub id or absolute local path, as the user named it
    family: str  # registry name: siglip | siglip2 | clip | ...
    dim: int
    logit_scale: float  # the learned log-temperature t'; the multiplier is exp(t')
    logit_bias: float | None  # SigLIP's learned bias b; None for CLIP (softmax-trained, no bias)
    text_max_length: int


class ImagePreprocessor(Protocol):
    def __call__(self, image: Any) -> PixelBatch:
        """One RGB PIL image -> arrays without a batch axis (stacked later by the collate step)."""
        ...


@runtime_checkable
class Encoder(Protocol):
    info: ModelInfo
    device: str

    def image_preprocessor(self) -> ImagePreprocessor: ...

    def encode_batch(self, batch: PixelBatch) -> FeatureVector:
        """Collated preprocessed images -> (n, dim) L2-normalised float32."""
        ...

    def encode_images(self, images: list[Any]) -> FeatureVector: ...

    def encode_texts(self, texts: list[str]) -> FeatureVector: ...


class LockedEncoder:
    """An ``Encoder`` whose forward passes run one at a time, for encoders shared by threads (a ``Searcher``, the
    service's collections).

    A shared fast tokenizer called from two threads at once can fail with ``RuntimeError: Already borrowed``
    (huggingface/tokenizers#537: padding and truncation are set on the shared Rust object per call), and on CPU one
    forward pass already uses every core. ``inner`` is the wrapped encoder (its precision and runtime are the truth).
    """

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.info: ModelInfo = inner.info
        self.device: str = inner.device
        self._lock = threading.Lock()

    @classmethod
    def wrap(cls, encoder: Encoder) -> LockedEncoder:
        """``encoder`` itself when it is already a ``LockedEncoder``, else a new one around it."""
        return encoder if isinstance(encoder, LockedEncoder) else cls(encoder)

    def image_preprocessor(self) -> ImagePreprocessor:
        return self.inner.image_preprocessor()

    def encode_batch(self, batch: PixelBatch) -> FeatureVector:
        with self._lock:
            return self.inner.encode_batch(batch)

    def encode_images(self, images: list[Any]) -> FeatureVector:
        with self._lock:
            return self.inner.encode_images(images)

    def encode_texts(self, texts: list[str]) -> FeatureVector:
        with self._lock:
            return self.inner.encode_texts(texts)

def collate_pixels(items: list[PixelBatch]) -> PixelBatch:
    """Stack per-image arrays into a batch (all keys must agree across items)."""
    if not items:
        return {}
    return {key: np.stack([item[key] for item in items]) for key in items[0]}


def l2_normalize(feats: Any) -> FeatureVector:
    """``(n, dim)`` features -> float32 rows of unit length (rows of zeros stay zero: the norm is clamped at 1e-12)."""
    arr = np.asarray(feats, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    return (arr / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
