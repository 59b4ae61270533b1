"""Thin adapters over ``search.searcher.Searcher`` for what the service needs and the library does not offer yet:
a query by uploaded bytes, a query by catalog image id, and an encoder safe to call from many request threads.

Each is small on purpose and belongs in the library (asked of its owners; see docs/SERVICE.md, "Open items").
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from img_search.embedding.base import Encoder, FeatureVector, ImagePreprocessor, ModelInfo, PixelBatch
from img_search.errors import NotFoundError
from img_search.search.collection import Hit, check_limit
from img_search.search.searcher import Searcher


class LockedEncoder:
    """An ``Encoder`` whose forward passes run one at a time.

    A shared fast tokenizer called from two threads at once can fail with ``RuntimeError: Already borrowed``
    (huggingface/tokenizers#537, huggingface/transformers#47085: padding and truncation are set on the shared Rust
    object per call), and torch already uses every core for one forward pass on CPU; the service's thread pool
    would otherwise run them concurrently.
    """

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.info: ModelInfo = inner.info
        self.device: str = inner.device
        self._lock = threading.Lock()

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


def search_upload(searcher: Searcher, data: bytes, *, limit: int, threshold: float | None) -> list[Hit]:
    """Images similar to the uploaded image ``data`` (cosine, no probability). An upload whose bytes are indexed
    is searched by its stored vector (no model run) and finds its own catalog copies too; others are decoded
    (``data.images.decode_image``: ``ImageDecodeError`` when they are not an image) and embedded."""
    from img_search.data.images import content_hash, decode_image

    check_limit(limit)
    collection = searcher.collection
    vector = collection.catalog().vector_for(collection.model.id, content_hash(data))
    if vector is None:
        vector = searcher.encoder.encode_images([decode_image(data)])[0]
    return searcher.search_vectors(np.asarray(vector, np.float32)[None, :], limit=limit, threshold=threshold,
                                   calibrated=False)[0]


def search_by_id(searcher: Searcher, image_id: int, *, limit: int, threshold: float | None) -> list[Hit]:
    """Images similar to the catalog image ``image_id`` by its stored vector (no model run), itself left out.

    Raises ``NotFoundError`` when no live image has that id or the collection holds no vector for it.
    """
    limit = check_limit(limit)
    collection = searcher.collection
    catalog = collection.catalog()
    row = catalog.images_by_id([image_id], live_only=True).get(image_id)
    if row is None or row.content_hash is None:
        raise NotFoundError(f"no indexed image has id {image_id}")
    vector = catalog.vector_for(collection.model.id, row.content_hash)
    if vector is None:
        raise NotFoundError(f"image {image_id} has no vector for model {collection.model.name!r} (not embedded "
                            "with it yet)")
    # one more than asked: the image itself (cosine 1) is among the hits and is dropped
    hits = searcher.search_vectors(vector[None, :], limit=limit + 1, threshold=threshold, calibrated=False)[0]
    return [h for h in hits if h.image_id != image_id][:limit]
