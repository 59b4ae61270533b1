"""Fixtures of the job tests: the tiny CLIP and SigLIP models, a folder indexed with CLIP (the source collection),
settings naming them as the seed's two collections, and a private RQ queue on the real Redis (127.0.0.1:6379)
whose keys are deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs_support import REDIS_URL, Models, delete_queue_keys, job_settings, make_photos

from img_search.embedding import load_encoder
from img_search.settings import Settings


@pytest.fixture(scope="session")
def models(tiny_models: dict[str, Path]) -> Models:
    clip, siglip = tiny_models["clip"], tiny_models["siglip"]
    return Models(clip, siglip, {str(p): load_encoder(str(p), device="cpu") for p in (clip, siglip)})


@pytest.fixture(scope="session")
def redis_client() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"these tests need the Redis at {REDIS_URL} (start it: redis-server --daemonize yes): {exc}")
    return client


@pytest.fixture()
def queue_name(redis_client: Any) -> Iterator[str]:
    """A queue of this test's own; every Redis key naming it (RQ's and ours) is deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_queue_keys(redis_client, name)


@pytest.fixture()
def source_index(tmp_path: Path, models: Models) -> tuple[Path, Path]:
    """(photos, index dir): 12 photos indexed with the tiny CLIP only (the seed's state before Phase 3)."""
    photos = make_photos(tmp_path / "photos")
    index_dir = tmp_path / "index"
    models.index(photos, index_dir, "clip")
    return photos, index_dir


@pytest.fixture()
def rq_settings(queue_name: str, models: Models) -> Callable[..., Settings]:
    def make(index_dir: Path, *, model: str | None = None, **service: Any) -> Settings:
        return job_settings(index_dir, models, model=model, redis_url=REDIS_URL, queue_name=queue_name, **service)

    return make
