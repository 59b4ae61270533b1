"""Text -> image and image -> image queries over a collection; the one entry point the CLI and the service share.

``open_searcher(settings, model)`` opens the collection read-only and returns a ``Searcher`` whose encoder is loaded
on the first query that needs it (an image already in the catalog is searched by its stored vector, no model).
The searcher owns calibration: the model's learned ``sigmoid(exp(t') * cos + b)`` (``search.calibration``), taken
from the loaded encoder (the truth) or, before it is loaded, from the values the catalog recorded.
A ``Searcher`` is safe to share between threads: the model is loaded once and runs one forward pass at a time.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.base import Encoder
from img_search.errors import DimensionMismatchError, InvalidInputError, NotFoundError
from img_search.search.calibration import Calibration
from img_search.search.collection import DEFAULT_LIMIT, Collection, Hit, check_threshold
from img_search.settings import Settings

logger = logging.getLogger(__name__)


def encoder_factory(model: str, settings: Settings) -> Callable[[], Encoder]:
    """A zero-argument loader of ``model``'s full encoder (both towers) at the settings' device and precision, as
    `index` uses it (torch is imported when called)."""

    def factory() -> Encoder:
        from img_search.embedding import load_encoder

        return load_encoder(model, device=settings.device, precision=settings.precision)

    return factory


def query_encoder_factory(model: str, settings: Settings) -> Callable[[], Encoder]:
    """A zero-argument loader of ``model`` for queries: the fast text path (ONNX Runtime + tokenizers, no torch)
    that `index` prepared in the runtime cache, else the torch encoder (``embedding.load_text_encoder``). Image
    queries work through either."""

    def factory() -> Encoder:
        from img_search.embedding import load_text_encoder

        return load_text_encoder(model, precision=settings.precision, device=settings.device)

    return factory


def open_searcher(settings: Settings, model: str | None = None, *,
                  encoder: Encoder | Callable[[], Encoder] | None = None) -> Searcher:
    """A ``Searcher`` over the collection of ``model`` (default: ``settings.model``, else the catalog's main model)
    in ``settings.index_dir``, with the settings' search backend. Raises ``CatalogNotFoundError`` and the errors of
    ``Collection.open``."""
    collection = Collection.open(settings.index_dir, model or settings.model, settings.search)
    return Searcher(collection, encoder or query_encoder_factory(collection.model.name, settings))


class Searcher:
    """Text and image queries against a ``Collection``; the encoder is loaded only when a query needs it."""

    def __init__(self, collection: Collection, encoder: Encoder | Callable[[], Encoder]) -> None:
        self.collection = collection
        self._encoder: Encoder | None = None
        self._factory: Callable[[], Encoder] | None = None
        self._load_lock = threading.Lock()
        # one forward pass at a time: on CPU torch already spreads one over every core, and a fast tokenizer shared
        # by two threads can fail with "Already borrowed" (huggingface/tokenizers#537)
        self._encode_lock = threading.Lock()
        model = collection.model
        self.calibration: Calibration | None = Calibration.maybe(model.logit_scale, model.logit_bias)
        if isinstance(encoder, Encoder):
            self._set_encoder(encoder)
        else:
            self._factory = encoder

    def _set_encoder(self, encoder: Encoder) -> None:
        model = self.collection.model
        if encoder.info.dim != model.dim:
            raise DimensionMismatchError(
                f"encoder {encoder.info.model_id!r} gives {encoder.info.dim}-dim vectors but the collection was "
                f"indexed with {model.name!r} ({model.dim} dims)"
            )
        # the live model's learned values are the truth (the catalog's copy may predate a fine-tune)
        self.calibration = Calibration.maybe(encoder.info.logit_scale, encoder.info.logit_bias)
        self._encoder = encoder

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded on first use (once, even when several threads ask at the same time)."""
        if self._encoder is None:
            with self._load_lock:
                if self._encoder is None:
                    assert self._factory is not None
                    self._set_encoder(self._factory())
        assert self._encoder is not None
        return self._encoder

    @property
    def encoder_loaded(self) -> bool:
        """Whether the model is loaded (a query that needs it has run, or it was given)."""
        return self._encoder is not None

    def close(self) -> None:
        """Release the collection's files and connections (the encoder is left to the garbage collector)."""
        self.collection.close()

    def refresh(self) -> bool:
        """Pick up what `index` committed since the collection was opened (the model stays loaded)."""
        return self.collection.refresh()

    # ------------------------------------------------------------------ queries
    def search_text(self, query: str, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None) -> list[Hit]:
        """The images that best match ``query``; ``threshold`` applies to the calibrated probability where the
        model has one (SigLIP, SigLIP 2), else to the cosine (CLIP). Raises ``InvalidInputError`` for an empty
        query or a bad limit/threshold."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("the query text is empty")
        threshold = check_threshold(threshold)
        with self._encode_lock:
            vec = self.encoder.encode_texts([query])
        return self._hits(vec, limit, threshold, calibrated=True)[0]

    def search_image(self, path: str, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                     max_image_pixels: int | None = None) -> list[Hit]:
        """Images similar to the one at ``path`` (excluding that file itself); cosine only, no probability.

        Raises ``ImageDecodeError`` (an ``InvalidInputError``) when the file cannot be read as an image.
        """
        threshold = check_threshold(threshold)
        vec, own_id = self._image_vector(path, max_image_pixels)
        exclude = frozenset({own_id}) if own_id is not None else frozenset()
        return self._hits(vec[None, :], limit, threshold, calibrated=False, exclude_ids=exclude)[0]

    def search_bytes(self, data: bytes, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None) -> list[Hit]:
        """Images similar to the image file content ``data`` (an upload); cosine only, no probability.

        Content that is indexed is searched by its stored vector (no model run) and finds its own catalog copies
        too; other content is decoded (``ImageDecodeError`` when it is not an image) and embedded.
        """
        from img_search.data.images import content_hash, decode_image

        threshold = check_threshold(threshold)
        collection = self.collection
        vector = collection.catalog().vector_for(collection.model.id, content_hash(data))
        if vector is None:
            vector = self._encode_images([decode_image(data)])[0]
        return self._hits(np.asarray(vector, np.float32)[None, :], limit, threshold, calibrated=False)[0]

    def search_id(self, image_id: int, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None) -> list[Hit]:
        """Images similar to the catalog image ``image_id``, by its stored vector (no model run), itself left out.

        Raises ``NotFoundError`` when no live image has that id or the collection holds no vector for it.
        """
        threshold = check_threshold(threshold)
        catalog = self.collection.catalog()
        row = catalog.images_by_id([image_id], live_only=True).get(image_id)
        if row is None or row.content_hash is None:
            raise NotFoundError(f"no indexed image has id {image_id}")
        vector = catalog.vector_for(self.collection.model.id, row.content_hash)
        if vector is None:
            raise NotFoundError(f"image {image_id} has no vector for model {self.collection.model.name!r} (not "
                                "embedded with it yet)")
        return self._hits(vector[None, :], limit, threshold, calibrated=False,
                          exclude_ids=frozenset({image_id}))[0]

    def search_vectors(self, queries: NDArray[np.float32], *, limit: int = DEFAULT_LIMIT,
                       threshold: float | None = None, calibrated: bool = True) -> list[list[Hit]]:
        """Hits for each row of ``queries`` (float32, (n, dim)) of the collection's embedding space."""
        return self._hits(queries, limit, check_threshold(threshold), calibrated=calibrated)

    def _hits(self, queries: NDArray[np.float32], limit: int, threshold: float | None, *, calibrated: bool,
              exclude_ids: frozenset[int] = frozenset()) -> list[list[Hit]]:
        calibration = self.calibration if calibrated else None
        results = []
        for pairs in self.collection.search(queries, limit=limit, exclude_ids=exclude_ids):
            cosines = np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs))
            probs = calibration.probability(cosines) if calibration is not None else None
            hits = []
            for j, (row, cos) in enumerate(pairs):
                prob = float(probs[j]) if probs is not None else None
                score = prob if prob is not None else cos
                if threshold is not None and score < threshold:
                    continue
                hits.append(Hit(row.path, cos, prob, row.id, row.width, row.height))
            results.append(hits)
        return results

    def _image_vector(self, path: str, max_image_pixels: int | None) -> tuple[NDArray[np.float32], int | None]:
        """The query image's vector: the stored one when its bytes are indexed, else embedded now."""
        from img_search.data.images import content_hash, decode_image, read_file
        from img_search.data.paths import canonical_folder

        abspath = os.path.abspath(path)
        if not os.path.lexists(abspath):
            raise NotFoundError(f"{path}: no such file")
        data = read_file(abspath)
        catalog = self.collection.catalog()
        # the catalog names files under their folder's canonical path (symlinks and bind mounts resolved)
        folder, name = os.path.split(abspath)
        row = catalog.image(os.path.join(canonical_folder(folder), name)) or catalog.image(abspath)
        own_id = row.id if row is not None else None
        stored = catalog.vector_for(self.collection.model.id, content_hash(data))
        if stored is not None:
            return stored, own_id
        kwargs = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
        image = decode_image(data, **kwargs)
        return self._encode_images([image])[0], own_id

    def _encode_images(self, images: list[Any]) -> NDArray[np.float32]:
        with self._encode_lock:
            return self.encoder.encode_images(images)
