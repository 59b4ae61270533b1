"""Search one model's vectors in a catalog: text -> image and image -> image.

The vectors of the live images are loaded from the catalog into a ``VectorIndex`` (exact by default;
the ANN backends plug in through the same interface and registry), scored, and turned into hits with
the raw cosine and, where the model has a learned bias, the calibrated probability.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog, ModelRow
from img_search.embedding.base import Encoder
from img_search.errors import CatalogError, CatalogNotFoundError, DimensionMismatchError, EmptyCollectionError
from img_search.index.base import VectorIndex
from img_search.search.calibration import Calibration
from img_search.search.store import SearchConfig, VectorStore

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10


@dataclass(frozen=True)
class Hit:
    path: str
    cosine: float
    probability: float | None
    image_id: int
    width: int | None
    height: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "cosine": self.cosine, "probability": self.probability,
                "image_id": self.image_id, "width": self.width, "height": self.height}


def resolve_model(catalog: Catalog, model: str | None) -> ModelRow:
    """The model to search with: the one asked for, else the one the catalog was indexed with."""
    from img_search.embedding.hf import canonical_model_id

    models = catalog.models()
    if not models:
        raise CatalogNotFoundError(
            f"the catalog at {catalog.path.parent} is empty: run `img-search index FOLDER` first")
    if model is None:
        counts = catalog.embedding_counts()
        if len(models) > 1:
            logger.info("catalog holds %d models; using the one with most images (pass --model to choose)",
                        len(models))
        return max(models, key=lambda m: (counts.get(m.id, 0), m.id))
    name = canonical_model_id(model)
    row = catalog.get_model(name)
    if row is None:
        known = ", ".join(m.name for m in models)
        raise CatalogNotFoundError(f"nothing is indexed with model {name!r}; indexed models: {known}")
    return row


class Collection:
    """The live vectors of one model, behind a VectorIndex.

    By default the index is the one saved in the index directory (exact below the ANN threshold, the
    configured ANN backend above it), brought up to date with the catalog; pass ``index`` to inject one.
    """

    def __init__(self, catalog: Catalog, model: ModelRow, *, config: SearchConfig | None = None,
                 index: VectorIndex | None = None) -> None:
        if model.dim is None:
            raise CatalogError(f"model {model.name!r} has no recorded dimension; re-run `img-search index`")
        self.catalog = catalog
        self.model = model
        if index is None:
            index_dir = catalog.path.parent
            store = VectorStore(index_dir, catalog, model, config or SearchConfig.load(index_dir))
            index = store.open()
            self.backend = store.backend
        else:
            self.backend = index.name
        self.index = index
        self.calibration = Calibration.maybe(model.logit_scale, model.logit_bias)

    def __len__(self) -> int:
        return len(self.index)

    def search_vectors(self, queries: NDArray[np.float32], *, limit: int = DEFAULT_LIMIT,
                       threshold: float | None = None, calibrated: bool = True,
                       exclude_ids: set[int] | None = None) -> list[list[Hit]]:
        if len(self) == 0:
            raise EmptyCollectionError(f"no images are indexed with model {self.model.name!r}")
        if queries.shape[-1] != self.model.dim:
            raise DimensionMismatchError(
                f"query vectors have {queries.shape[-1]} dims but the collection's model gives {self.model.dim}"
            )
        extra = len(exclude_ids or ())
        ids, scores = self.index.search(queries, limit + extra)
        calibration = self.calibration if calibrated else None
        found = {int(i) for i in ids.reshape(-1) if i >= 0}
        rows = self.catalog.images_by_id(found)
        results: list[list[Hit]] = []
        for qi in range(ids.shape[0]):
            hits: list[Hit] = []
            probs = calibration.probability(scores[qi]) if calibration else None
            for j, (image_id, cos) in enumerate(zip(ids[qi], scores[qi], strict=True)):
                if image_id < 0 or int(image_id) in (exclude_ids or ()) or int(image_id) not in rows:
                    continue
                prob = float(probs[j]) if probs is not None else None
                score = prob if prob is not None else float(cos)
                if threshold is not None and score < threshold:
                    continue
                row = rows[int(image_id)]
                hits.append(Hit(row.path, float(cos), prob, int(image_id), row.width, row.height))
                if len(hits) == limit:
                    break
            results.append(hits)
        return results


class Searcher:
    """Text and image queries against a Collection; the encoder is loaded only when a query needs it."""

    def __init__(self, collection: Collection, encoder: Encoder | Callable[[], Encoder]) -> None:
        self.collection = collection
        self._encoder: Encoder | None = None
        self._factory: Callable[[], Encoder] | None = None
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
        self._encoder = encoder
        # the live model's learned values are the truth (the catalog's copy may predate a fine-tune)
        self.collection.calibration = Calibration.maybe(encoder.info.logit_scale, encoder.info.logit_bias)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            assert self._factory is not None
            self._set_encoder(self._factory())
        assert self._encoder is not None
        return self._encoder

    def search_text(self, query: str, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None) -> list[Hit]:
        if not query.strip():
            raise ValueError("the query text is empty")
        vec = self.encoder.encode_texts([query])
        return self.collection.search_vectors(vec, limit=limit, threshold=threshold)[0]

    def search_image(self, path: str, *, limit: int = DEFAULT_LIMIT, threshold: float | None = None,
                     max_image_pixels: int | None = None) -> list[Hit]:
        """Images similar to the one at ``path`` (excluding that file itself); cosine only, no probability."""
        vec, own_id = self._image_vector(path, max_image_pixels)
        exclude = {own_id} if own_id is not None else None
        return self.collection.search_vectors(vec[None, :], limit=limit, threshold=threshold, calibrated=False,
                                              exclude_ids=exclude)[0]

    def _image_vector(self, path: str, max_image_pixels: int | None) -> tuple[NDArray[np.float32], int | None]:
        """The query image's vector: the stored one when its bytes are indexed, else embedded now."""
        import os

        from img_search.data.images import DEFAULT_MAX_IMAGE_PIXELS, content_hash, decode_image, read_file

        abspath = os.path.abspath(path)
        data = read_file(abspath)
        row = self.collection.catalog.image(abspath)
        own_id = row.id if row is not None else None
        stored = self.collection.catalog.vector_for(self.collection.model.id, content_hash(data))
        if stored is not None:
            return stored, own_id
        image = decode_image(data, max_image_pixels=max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)
        return self.encoder.encode_images([image])[0], own_id
