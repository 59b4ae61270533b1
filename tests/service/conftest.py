"""Fixtures of the service tests: a folder indexed with the tiny CLIP and SigLIP models (once per session, read
only), service settings naming them as the seed's two collections, and a TestClient over the app.

The app gets the session's loaded encoders through its ``opener`` (what ``default_opener`` would load from the
same local checkpoints), so a test pays for no model load; the real loading path runs in the uvicorn tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import make_jpeg

from img_search.catalog import ModelRow
from img_search.embedding import load_encoder
from img_search.embedding.base import Encoder
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.searcher import Searcher, open_searcher
from img_search.service.app import create_app
from img_search.service.embedding import LockedEncoder
from img_search.settings import Settings, load_settings

API_KEY = "test-admin-key"
N_PHOTOS = 12


@dataclass(frozen=True)
class Models:
    clip: Path
    siglip: Path
    encoders: dict[str, Encoder]  # canonical model name -> loaded encoder

    def index(self, folder: Path, index_dir: Path, which: str) -> None:
        path = self.clip if which == "clip" else self.siglip
        encoder = self.encoders[str(path)]
        index_folders([str(folder)], index_dir, IndexOptions(model=str(path), workers=0),
                      encoder_factory=lambda: encoder)

    def opener(self) -> Callable[[Settings, ModelRow], Searcher]:
        def open_one(settings: Settings, row: ModelRow) -> Searcher:
            return open_searcher(settings, row.name, encoder=LockedEncoder(self.encoders[row.name]))

        return open_one


@pytest.fixture(scope="session")
def models(tiny_models: dict[str, Path]) -> Models:
    clip, siglip = tiny_models["clip"], tiny_models["siglip"]
    return Models(clip, siglip, {str(p): load_encoder(str(p), device="cpu") for p in (clip, siglip)})


def make_photos(folder: Path, n: int = N_PHOTOS, start: int = 0) -> Path:
    for i in range(start, start + n):
        make_jpeg(folder / ("a" if i % 2 else "b") / f"img{i:02d}.jpg", seed=i)
    return folder


def service_settings(index_dir: Path, models: Models, **service: Any) -> Settings:
    values: dict[str, Any] = {"clip_model": str(models.clip), "siglip_model": str(models.siglip), "clip_dim": 32,
                              "siglip_dim": 32, "api_key": API_KEY}
    values.update(service)
    # float32, as the session's encoders compute: "auto" may pick int8 on this CPU, and tests compare with them
    return load_settings(index_dir, precision="fp32", service=values)


@pytest.fixture(scope="session")
def indexed(tmp_path_factory: pytest.TempPathFactory, models: Models) -> tuple[Path, Path]:
    """(photo folder, index dir) with every photo in both collections. Shared: tests must not write to it."""
    root = tmp_path_factory.mktemp("indexed")
    photos = make_photos(root / "photos")
    index_dir = root / "index"
    models.index(photos, index_dir, "clip")
    models.index(photos, index_dir, "siglip")
    return photos, index_dir


@pytest.fixture()
def fresh_index(tmp_path: Path, models: Models) -> Callable[..., tuple[Path, Path]]:
    """``fresh_index(clip=True, siglip=True) -> (photos, index dir)``: a private folder and index, for tests that
    change them; ``siglip`` may also be a sub-folder name to embed only that part with SigLIP."""

    def build(clip: bool = True, siglip: bool | str = True) -> tuple[Path, Path]:
        photos = make_photos(tmp_path / "photos")
        index_dir = tmp_path / "index"
        if clip:
            models.index(photos, index_dir, "clip")
        if siglip:
            models.index(photos / siglip if isinstance(siglip, str) else photos, index_dir, "siglip")
        return photos, index_dir

    return build


@pytest.fixture()
def make_client(models: Models) -> Iterator[Callable[..., TestClient]]:
    """``make_client(index_dir, **service_settings) -> TestClient`` with its lifespan started; closed after."""
    clients: list[TestClient] = []

    def make(index_dir: Path, **service: Any) -> TestClient:
        app = create_app(service_settings(index_dir, models, **service), opener=models.opener())
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: Callable[..., TestClient], indexed: tuple[Path, Path]) -> TestClient:
    """The service over the shared index, SigLIP rollout at 0 % (settings' default)."""
    return make_client(indexed[1])
