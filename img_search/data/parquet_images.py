"""An image table read through Hugging Face ``datasets``: a Hub dataset, local Parquet files, or a saved dataset.

Images are read undecoded (``Image(decode=False)``) and decoded with ``data.images.decode_image`` — the same
decoder as folders get (EXIF orientation, every mode to RGB, the pixel limit, ``ImageDecodeError`` with a reason).
The image column may be a ``datasets`` Image feature, a plain ``{bytes, path}`` struct (a Parquet file written
without Hugging Face metadata), raw bytes, or a file path.

Several splits are read as one table, in the order given. Offline, a Hub dataset that is not in the local cache
fails with ``DatasetError`` naming the local alternatives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from img_search.data import ImageDataset
from img_search.data.images import decode_image, load_image, to_rgb
from img_search.errors import DatasetError, ImageDecodeError
from img_search.wording import noun

logger = logging.getLogger(__name__)

DataFiles = str | list[str] | dict[str, str | list[str]]


class ParquetImageDataset(ImageDataset):
    """Rows of ``splits`` of a ``datasets`` table; ``id_column`` holds stable ids (None: ``<split>-<row>``)."""

    def __init__(
        self,
        *,
        name: str,
        path: str | None = None,
        config_name: str | None = None,
        data_files: DataFiles | None = None,
        load_from_disk: str | None = None,
        splits: Sequence[str] = ("train",),
        image_column: str = "image",
        id_column: str | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        max_image_pixels: int | None = None,
    ) -> None:
        super().__init__(name=name)
        if not (path or data_files or load_from_disk):
            raise DatasetError(
                f"dataset {name!r} needs a source: a Hub repo id in `path`, local Parquet files in `data_files`, "
                "or a directory written by save_to_disk in `load_from_disk`"
            )
        if isinstance(splits, str):
            splits = [splits]
        if not splits:
            raise DatasetError(f"dataset {name!r}: `splits` is empty")
        self.path = path
        self.config_name = config_name
        self.data_files = _plain(data_files)
        self.load_from_disk = load_from_disk
        self.splits = [str(s) for s in splits]
        self.image_column = image_column
        self.id_column = id_column
        self.revision = revision
        self.cache_dir = cache_dir
        self.max_image_pixels = max_image_pixels
        self._images: Any = None

    def describe(self) -> str:
        if self.load_from_disk:
            return f"saved dataset {self.load_from_disk}"
        if self.data_files:
            return f"Parquet files {self.data_files}"
        return f"Hub dataset {self.path}" + (f" (config {self.config_name})" if self.config_name else "")

    def _open(self) -> list[str]:
        import datasets

        datasets.disable_progress_bars()
        parts = [self._load_split(split) for split in self.splits]
        for split, part in zip(self.splits, parts, strict=True):
            self._check_columns(part, split)
        table = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        ids: list[str] = []
        for split, part in zip(self.splits, parts, strict=True):
            if self.id_column:
                column = part.select_columns([self.id_column]).with_format("arrow")[self.id_column]
                ids += [None if v is None else str(v) for v in column.to_pylist()]  # type: ignore[misc]
            else:
                ids += [f"{split}-{row}" for row in range(len(part))]
        images = table.select_columns([self.image_column])
        if isinstance(images.features[self.image_column], datasets.Image):
            images = images.cast_column(self.image_column, datasets.Image(decode=False))
        self._images = images
        return ids

    def _load_split(self, split: str) -> Any:
        import datasets

        try:
            if self.load_from_disk:
                loaded = datasets.load_from_disk(self.load_from_disk)
                if isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise DatasetError(f"{self.describe()} has no split {split!r} (splits: {', '.join(loaded)})")
                    return loaded[split]
                return loaded
            if self.data_files:
                return datasets.load_dataset("parquet", data_files=self.data_files, split=split,
                                             cache_dir=self.cache_dir)
            return datasets.load_dataset(self.path, self.config_name, split=split, revision=self.revision,
                                         cache_dir=self.cache_dir)
        except DatasetError:
            raise
        except (OSError, ValueError, ImportError) as exc:  # ConnectionError and FileNotFoundError are OSErrors
            raise DatasetError(
                f"cannot load split {split!r} of {self.describe()}: {type(exc).__name__}: {exc}. Without network "
                "access, download the dataset where the Hub is reachable and point `data_files` at its Parquet files "
                "(or `load_from_disk` at a saved copy)"
            ) from exc

    def _check_columns(self, part: Any, split: str) -> None:
        wanted = [c for c in (self.image_column, self.id_column) if c]
        missing = [c for c in wanted if c not in part.column_names]
        if missing:
            raise DatasetError(
                f"split {split!r} of {self.describe()} lacks {noun(len(missing), 'column')} {', '.join(missing)} "
                f"(it has: {', '.join(part.column_names)}); set image_column / id_column"
            )

    def image(self, index: int) -> Any:
        if self._images is None:
            raise DatasetError(f"dataset {self.name!r} is not built yet: call build() first")
        return self._decode(self._images[index][self.image_column])

    def _decode(self, value: Any) -> Any:
        if value is None:
            raise ImageDecodeError("the row has no image")
        if isinstance(value, Mapping):
            data, path = value.get("bytes"), value.get("path")
            if data:
                return decode_image(bytes(data), max_image_pixels=self.max_image_pixels)
            if path:
                return load_image(str(path), max_image_pixels=self.max_image_pixels)
            raise ImageDecodeError("the row's image has neither bytes nor a path")
        if isinstance(value, bytes | bytearray | memoryview):
            return decode_image(bytes(value), max_image_pixels=self.max_image_pixels)
        if isinstance(value, str):
            return load_image(value, max_image_pixels=self.max_image_pixels)
        if hasattr(value, "mode") and hasattr(value, "convert"):  # an already decoded PIL image
            return to_rgb(value)
        raise ImageDecodeError(f"cannot read an image from a value of type {type(value).__name__}")


def _plain(data_files: Any) -> DataFiles | None:
    """Hydra hands over ListConfig / DictConfig; ``datasets`` wants plain lists and dicts."""
    if data_files is None or isinstance(data_files, str):
        return data_files
    if isinstance(data_files, Mapping):
        return {str(k): v if isinstance(v, str) else [str(x) for x in v] for k, v in data_files.items()}
    return [str(x) for x in data_files]
