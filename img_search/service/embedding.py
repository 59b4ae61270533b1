"""The seed's Python API (seed 002, "Testing"): ``get_siglip_service()`` and ``get_search_embedding_service(user_id)``.

``get_siglip_service()`` returns a ``SigLIPEmbeddingService`` whose ``embed_text(str)`` and ``embed_image(path)``
give ``list[float]`` vectors (L2-normalised, ``service.siglip_dim`` long: 768 for the default
``google/siglip-base-patch16-224``, the seed's ``ViT-B-16-SigLIP`` + ``webli``). ``get_search_embedding_service``
returns ``(service, collection name)`` as the seed's router did, but with our rollout rules
(``service.rollout``: hashed sticky buckets; SigLIP only once its collection is complete; one collection indexed
-> that one). Outside a running server it reads the rollout from the settings (``USE_SIGLIP`` /
``SIGLIP_ROLLOUT_PERCENTAGE`` or their ``IMG_SEARCH_SERVICE__*`` names), not the admin route's run-time value.

Models load on the first ``embed_*`` call (never at import) and are shared by every caller in the process.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from img_search.embedding.base import LockedEncoder
from img_search.errors import CatalogNotFoundError, DimensionMismatchError
from img_search.settings import Settings

_cache_lock = threading.Lock()
_services: dict[tuple[str, str, str, str], EmbeddingService] = {}


class EmbeddingService:
    """One model's text and image embeddings as plain lists (the seed's ``EmbeddingService`` shape).

    ``dim``: the vector size the settings expect (``DimensionMismatchError`` at load when the checkpoint differs;
    None: whatever it gives). Thread-safe: forward passes run one at a time.
    """

    def __init__(self, model: str, settings: Settings, *, collection: str, dim: int | None = None) -> None:
        self.model = model
        self.collection = collection
        self.dim = dim
        self.settings = settings
        self._encoder: Any = None
        self._lock = threading.Lock()

    @property
    def encoder(self) -> Any:
        """The loaded encoder (``embedding.load_encoder`` with the settings' device and dtype), once."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    from img_search.embedding import load_encoder

                    encoder = LockedEncoder(load_encoder(self.model, device=self.settings.device,
                                                         precision=self.settings.precision))
                    if self.dim is not None and encoder.info.dim != self.dim:
                        raise DimensionMismatchError(
                            f"{self.model} gives {encoder.info.dim}-dim vectors but the settings say {self.dim} "
                            f"for collection {self.collection!r}")
                    self._encoder = encoder
        return self._encoder

    def embed_text(self, text: str) -> list[float]:
        """The vector of ``text`` (the model's own text tower and padding)."""
        from img_search.errors import InvalidInputError

        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("the text is empty")
        return [float(x) for x in self.encoder.encode_texts([text])[0]]

    def embed_image(self, path: str | os.PathLike[str]) -> list[float]:
        """The vector of the image file at ``path`` (``ImageDecodeError`` when it is not one)."""
        return self.embed_images([path])[0]

    def embed_images(self, paths: list[str | os.PathLike[str]]) -> list[list[float]]:
        """Vectors of several image files, in batches of ``settings.batch_size`` (the seed's ``GPU_BATCH_SIZE``)."""
        from img_search.data.images import load_image

        out: list[list[float]] = []
        step = self.settings.batch_size
        for start in range(0, len(paths), step):
            images = [load_image(os.fspath(p)) for p in paths[start : start + step]]
            out.extend([float(x) for x in row] for row in self.encoder.encode_images(images))
        return out


class SigLIPEmbeddingService(EmbeddingService):
    """The SigLIP model's service (``service.siglip_model``, collection ``service.siglip_collection``)."""


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from img_search.service.config import load_service_settings

    return load_service_settings()


def _service(cls: type[EmbeddingService], model: str, settings: Settings, collection: str, dim: int
             ) -> EmbeddingService:
    key = (cls.__name__, model, settings.device, settings.precision)
    with _cache_lock:
        service = _services.get(key)
        if service is None:
            service = _services[key] = cls(model, settings, collection=collection, dim=dim)
    return service


def get_siglip_service(settings: Settings | None = None) -> SigLIPEmbeddingService:
    """The SigLIP embedding service (default settings: the environment, with the seed's variables)."""
    s = _settings(settings)
    service = _service(SigLIPEmbeddingService, s.service.siglip_model, s, s.service.siglip_collection,
                       s.service.siglip_dim)
    assert isinstance(service, SigLIPEmbeddingService)
    return service


def get_clip_service(settings: Settings | None = None) -> EmbeddingService:
    """The CLIP embedding service (``service.clip_model``, collection ``service.clip_collection``)."""
    s = _settings(settings)
    return _service(EmbeddingService, s.service.clip_model, s, s.service.clip_collection, s.service.clip_dim)


def _points(settings: Settings) -> tuple[int | None, int | None]:
    """Live vectors of the CLIP and SigLIP models in the catalog (None: not indexed with that model)."""
    from img_search.catalog import Catalog
    from img_search.embedding.hf import canonical_model_id

    try:
        catalog = Catalog.in_dir(settings.index_dir, readonly=True)
    except CatalogNotFoundError:
        return None, None
    with catalog:
        counts = catalog.embedding_counts()
        rows = {m.name: m for m in catalog.models()}
    found = []
    for name in (settings.service.clip_model, settings.service.siglip_model):
        row = rows.get(canonical_model_id(name))
        found.append(None if row is None else counts.get(row.id, 0))
    return found[0], found[1]


def get_search_embedding_service(user_id: str | int | None = None, *, session_key: str | None = None,
                                 settings: Settings | None = None) -> tuple[EmbeddingService, str]:
    """``(service, collection name)`` for one search, as the service routes it (``service.rollout.decide``):
    with both models indexed, SigLIP for the rollout's share of buckets once its collection is complete; with one
    indexed, that one; with neither, CLIP (the seed's default)."""
    from img_search.service.rollout import Rollout, Side, decide, request_bucket

    s = _settings(settings)
    svc = s.service
    clip_points, siglip_points = _points(s)
    if clip_points is not None and siglip_points is not None:
        bucket, sticky_by = request_bucket(user_id, session_key)
        state = Rollout.from_settings(svc.use_siglip, svc.siglip_rollout_percentage).state
        decision = decide(state, Side(svc.clip_collection, clip_points), Side(svc.siglip_collection, siglip_points),
                          bucket, sticky_by)
        use_siglip = decision.collection == svc.siglip_collection
    else:
        use_siglip = siglip_points is not None
    if use_siglip:
        return get_siglip_service(s), svc.siglip_collection
    return get_clip_service(s), svc.clip_collection
