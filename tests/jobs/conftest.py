"""Fixtures of the job tests: the tiny CLIP and SigLIP models, a folder indexed with CLIP (the source collection),
settings naming them as the seed's two collections, and a private RQ queue on the real Redis (127.0.0.1:6379)
whose keys are deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import make_jpeg

from img_search.embedding import load_encoder
from img_search.embedding.base import Encoder
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.settings import Settings, load_settings

# a database of its own, so a test's clean-up can never touch anything but its keys (which all name its queue)
REDIS_URL = "redis://127.0.0.1:6379/13"
N_PHOTOS = 12


@dataclass(frozen=True)
class Models:
    clip: Path
    siglip: Path
    encoders: dict[str, Encoder]

    def index(self, folder: Path, index_dir: Path, which: str) -> None:
        path = self.clip if which == "clip" else self.siglip
        index_folders([str(folder)], index_dir, IndexOptions(model=str(path), workers=0),
                      encoder_factory=lambda: self.encoders[str(path)])

    def lookup(self, model: str) -> Encoder | None:
        return self.encoders.get(model)


@pytest.fixture(scope="session")
def models(tiny_models: dict[str, Path]) -> Models:
    clip, siglip = tiny_models["clip"], tiny_models["siglip"]
    return Models(clip, siglip, {str(p): load_encoder(str(p), device="cpu") for p in (clip, siglip)})


def make_photos(folder: Path, n: int = N_PHOTOS, start: int = 0, size: tuple[int, int] = (96, 64)) -> Path:
    for i in range(start, start + n):
        make_jpeg(folder / ("a" if i % 2 else "b") / f"img{i:02d}.jpg", seed=i, size=size)
    return folder


def job_settings(index_dir: Path, models: Models, *, model: str | None = None, **service: Any) -> Settings:
    values: dict[str, Any] = {"clip_model": str(models.clip), "siglip_model": str(models.siglip), "clip_dim": 32,
                              "siglip_dim": 32}
    values.update(service)
    return load_settings(index_dir, workers=0, batch_size=4, model=model, service=values)


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
    keys = list(redis_client.scan_iter(match=f"*{name}*", count=1000))
    if keys:
        redis_client.delete(*keys)


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
