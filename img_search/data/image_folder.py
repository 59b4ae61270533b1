"""A folder of image files as an ``ImageDataset``: the id of an image is its path relative to the root (POSIX).

The walk is ``folder.scan_folder``'s (same rules as ``img-search index``: hidden names skipped, symlinked folders
not followed); files the scan could not stat are logged and left out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from img_search.data import ImageDataset
from img_search.data.folder import scan_folder
from img_search.data.images import load_image
from img_search.errors import DatasetError

logger = logging.getLogger(__name__)


def printable_id(path: str) -> str:
    """A path as valid UTF-8 text: names that are not UTF-8 (surrogate-escaped) keep their bytes as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class ImageFolderDataset(ImageDataset):
    def __init__(self, *, name: str, root: str, include_hidden: bool = False,
                 max_image_pixels: int | None = None) -> None:
        super().__init__(name=name)
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.include_hidden = include_hidden
        self.max_image_pixels = max_image_pixels
        self._paths: list[str] = []

    def _open(self) -> list[str]:
        if not os.path.isdir(self.root):
            raise DatasetError(f"image folder {self.root} does not exist or is not a folder")
        scan = scan_folder(self.root, include_hidden=self.include_hidden)
        for problem in scan.problems:
            logger.warning("skipping %s: %s", problem.path, problem.reason)
        self._paths = [entry.path for entry in scan.files]
        return [printable_id(Path(os.path.relpath(path, self.root)).as_posix()) for path in self._paths]

    def image(self, index: int) -> Any:
        return load_image(self._paths[index], max_image_pixels=self.max_image_pixels)
