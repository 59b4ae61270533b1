"""The seed's Python API: get_siglip_service() with embed_text / embed_image -> list[float], and
get_search_embedding_service(user_id) -> (service, collection) under our rollout rules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import Models, service_settings

from img_search.errors import DimensionMismatchError, ImageDecodeError, InvalidInputError
from img_search.service import embedding
from img_search.service.embedding import (
    EmbeddingService,
    SigLIPEmbeddingService,
    get_search_embedding_service,
    get_siglip_service,
)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    embedding._services.clear()


def test_siglip_service_embeds_text_and_images(indexed: tuple[Path, Path], models: Models) -> None:
    photos, index_dir = indexed
    service = get_siglip_service(service_settings(index_dir, models))
    assert isinstance(service, SigLIPEmbeddingService) and service.collection == "image_assets_siglip"
    text = service.embed_text("a beautiful sunset")
    image = service.embed_image(photos / "a" / "img01.jpg")
    assert isinstance(text, list) and all(isinstance(x, float) for x in text) and len(text) == len(image) == 32
    assert np.linalg.norm(text) == pytest.approx(1, abs=1e-5)
    expected = models.encoders[str(models.siglip)].encode_texts(["a beautiful sunset"])[0]
    np.testing.assert_allclose(text, expected, atol=1e-6)
    assert get_siglip_service(service_settings(index_dir, models)) is service  # one model per process
    with pytest.raises(InvalidInputError):
        service.embed_text("  ")
    with pytest.raises(ImageDecodeError):
        service.embed_image(Path(__file__))


def test_a_checkpoint_of_another_size_is_refused(indexed: tuple[Path, Path], models: Models) -> None:
    service = get_siglip_service(service_settings(indexed[1], models, siglip_dim=768))
    with pytest.raises(DimensionMismatchError, match="32-dim vectors but the settings say 768"):
        service.embed_text("x")


def test_router_follows_the_rollout_and_completeness(indexed: tuple[Path, Path], models: Models,
                                                     fresh_index: Callable[..., tuple[Path, Path]]) -> None:
    _, index_dir = indexed
    service, collection = get_search_embedding_service(None, settings=service_settings(index_dir, models))
    assert type(service) is EmbeddingService and collection == "image_assets"  # the default: CLIP
    full = service_settings(index_dir, models, use_siglip=True)
    service, collection = get_search_embedding_service(user_id=42, settings=full)
    assert isinstance(service, SigLIPEmbeddingService) and collection == "image_assets_siglip"
    half = service_settings(index_dir, models, siglip_rollout_percentage=50)
    picks = {u: get_search_embedding_service(u, settings=half)[1] for u in range(200)}
    assert picks == {u: get_search_embedding_service(u, settings=half)[1] for u in range(200)}  # sticky
    assert 0.35 <= sum(c == "image_assets_siglip" for c in picks.values()) / 200 <= 0.65
    _, partial = fresh_index(siglip="a")  # SigLIP incomplete: never chosen, whatever the rollout says
    incomplete = service_settings(partial, models, use_siglip=True)
    assert {get_search_embedding_service(u, settings=incomplete)[1] for u in range(50)} == {"image_assets"}
