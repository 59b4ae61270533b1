"""What the web UI tests share besides fixtures (tests/ui/conftest.py): the tiny collection's shape, viewports,
``UiCollection``. A module of its own, so test files import it by a name no other test folder uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from img_search.catalog import ModelRow
from img_search.embedding.base import Encoder
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.searcher import Searcher
from img_search.settings import Settings, load_settings

N_PHOTOS = 36
FOLDERS = ("beach", "city", "forest")
PHOTO_SIZE = (240, 160)
DUPLICATE_OF = "beach/photo00.jpg"  # copied byte for byte and re-encoded under copies/
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass(frozen=True)
class UiCollection:
    photos: Path
    index_dir: Path
    settings: Settings
    opener: Callable[[Settings, ModelRow], Searcher]
    pristine: Path  # a copy of the index as indexing left it (no map, no thumbnails)
    encoder: Encoder
    model: str  # the tiny SigLIP checkpoint's path, as indexed

    def index(self, folder: Path, index_dir: Path) -> None:
        """Index ``folder`` into ``index_dir`` with the tiny SigLIP model (the session's loaded encoder)."""
        index_folders([str(folder)], index_dir, IndexOptions(model=self.model, workers=0),
                      encoder_factory=lambda: self.encoder)


def ui_settings(index_dir: Path, tiny_models: dict[str, Path]) -> Settings:
    """The service's settings over ``index_dir``: tiny SigLIP and CLIP as the seed's two collections (32-d)."""
    return load_settings(index_dir, precision="fp32", service={
        "clip_model": str(tiny_models["clip"]), "siglip_model": str(tiny_models["siglip"]), "clip_dim": 32,
        "siglip_dim": 32})
