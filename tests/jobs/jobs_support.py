"""Helpers of the job tests (a module of its own name: test modules import it; fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import make_jpeg

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


def make_photos(folder: Path, n: int = N_PHOTOS, start: int = 0, size: tuple[int, int] = (96, 64)) -> Path:
    for i in range(start, start + n):
        make_jpeg(folder / ("a" if i % 2 else "b") / f"img{i:02d}.jpg", seed=i, size=size)
    return folder


def job_settings(index_dir: Path, models: Models, *, model: str | None = None, **service: Any) -> Settings:
    values: dict[str, Any] = {"clip_model": str(models.clip), "siglip_model": str(models.siglip), "clip_dim": 32,
                              "siglip_dim": 32}
    values.update(service)
    return load_settings(index_dir, workers=0, batch_size=4, model=model, service=values)


def delete_queue_keys(client: Any, name: str) -> None:
    """Every Redis key naming queue ``name`` (RQ's and ours), and its entries in RQ's global sets."""
    keys = list(client.scan_iter(match=f"*{name}*", count=1000))
    if keys:
        client.delete(*keys)
    for registry in ("rq:queues", "rq:workers"):
        members = [m for m in client.smembers(registry) if name.encode() in m]
        if members:
            client.srem(registry, *members)
