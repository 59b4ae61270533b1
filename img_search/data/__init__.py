"""Data sources for the embedding pipelines: image and text datasets, and the registries that name them.

``DATASETS`` maps a name (the ``type`` key of a Hydra ``datasets/`` config) to an ``ImageDataset`` class,
``TEXT_DATASETS`` to a ``TextDataset`` class. Classes are registered as ``"module:Class"`` and imported only
when a dataset is created, so importing this package pulls in neither torch nor ``datasets``.

Lifecycle of a dataset: construct it with its config (cheap, no I/O) -> ``build()`` (download, scan, open;
idempotent; under Accelerate the main process builds first so the other ranks read from the cache) ->
``length()``, ``refs()`` / ``records()`` and iteration. Ids are stable across runs (INQUIRE's
``inat24_file_name``, a file's path under the folder root, ``<image>#<n>`` for captions), unique, and what the
pipelines write to the ``id`` column and skip on resume.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from img_search.errors import DatasetError, UnknownNameError
from img_search.registry import Registry
from img_search.wording import noun

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image of a dataset as the pipeline passes it around: its row position and its stable id."""

    index: int
    id: str


@dataclass(frozen=True, slots=True)
class ImageExample:
    """One decoded image (RGB PIL) with its id, as iteration yields it."""

    id: str
    image: Any


@dataclass(frozen=True, slots=True)
class CaptionRecord:
    """One caption: its own stable id, the id of the image it describes, and the raw text."""

    caption_id: str
    image_id: str
    caption: str


class ImageDataset(ABC):
    """A table of images with stable ids. Subclasses implement ``_open`` and ``image``."""

    def __init__(self, *, name: str) -> None:
        if not name:
            raise DatasetError("a dataset needs a non-empty `name` (it is written to the dataset_name column)")
        self.name = name
        self._refs: list[ImageRef] | None = None

    def build(self) -> None:
        """Prepare the data (download, scan, open) and index its rows; idempotent."""
        if self._refs is None:
            self._refs = unique_refs(self._open(), self.name)
            logger.info("dataset %s: %d images", self.name, len(self._refs))

    @abstractmethod
    def _open(self) -> list[str]:
        """Make the rows readable and return each row's id, in row order (duplicates are dropped later)."""

    @abstractmethod
    def image(self, index: int) -> Any:
        """The RGB PIL image of row ``index``; ``ImageDecodeError`` when it cannot be decoded."""

    def refs(self) -> list[ImageRef]:
        if self._refs is None:
            raise DatasetError(f"dataset {self.name!r} is not built yet: call build() first")
        return self._refs

    def length(self) -> int:
        return len(self.refs())

    def __len__(self) -> int:
        return self.length()

    def __iter__(self) -> Iterator[ImageExample]:
        for ref in self.refs():
            yield ImageExample(ref.id, self.image(ref.index))


class TextDataset(ABC):
    """A list of captions with stable ids. Subclasses implement ``_read``."""

    def __init__(self, *, name: str) -> None:
        if not name:
            raise DatasetError("a dataset needs a non-empty `name` (it is written to the dataset_name column)")
        self.name = name
        self._records: list[CaptionRecord] | None = None

    def build(self) -> None:
        if self._records is None:
            records = self._read()
            seen: set[str] = set()
            for record in records:
                if record.caption_id in seen:
                    raise DatasetError(f"dataset {self.name!r}: caption id {record.caption_id!r} occurs twice")
                seen.add(record.caption_id)
            self._records = records
            logger.info("dataset %s: %d captions", self.name, len(records))

    @abstractmethod
    def _read(self) -> list[CaptionRecord]:
        """Read every caption, in file order."""

    def records(self) -> list[CaptionRecord]:
        if self._records is None:
            raise DatasetError(f"dataset {self.name!r} is not built yet: call build() first")
        return self._records

    def length(self) -> int:
        return len(self.records())

    def __len__(self) -> int:
        return self.length()

    def __iter__(self) -> Iterator[CaptionRecord]:
        return iter(self.records())


def unique_refs(ids: list[str], dataset: str) -> list[ImageRef]:
    """One ref per distinct id (the first row wins): INQUIRE lists an image once per query it was judged for."""
    refs: list[ImageRef] = []
    seen: set[str] = set()
    for index, raw in enumerate(ids):
        if raw is None or str(raw) == "":
            raise DatasetError(f"dataset {dataset!r}: row {index} has no id")
        key = str(raw)
        if key not in seen:
            seen.add(key)
            refs.append(ImageRef(index, key))
    if len(refs) < len(ids):
        logger.info("dataset %s: %d rows repeat an earlier image id and are embedded once", dataset,
                    len(ids) - len(refs))
    return refs


# name -> "module:Class"; imported on use so that optional libraries (datasets, pyarrow) stay optional
DATASETS: Registry[str] = Registry("image dataset")
DATASETS.add("inquire", "img_search.data.inquire:InquireDataset")
DATASETS.add("image_folder", "img_search.data.image_folder:ImageFolderDataset")
DATASETS.add("parquet_images", "img_search.data.parquet_images:ParquetImageDataset")

TEXT_DATASETS: Registry[str] = Registry("text dataset")
TEXT_DATASETS.add("captions_jsonl", "img_search.data.captions:CaptionsJsonlDataset")

D = TypeVar("D")


def _resolve(registry: Registry[str], kind: str) -> type[Any]:
    module_name, _, cls_name = registry.get(kind).partition(":")
    return getattr(importlib.import_module(module_name), cls_name)  # type: ignore[no-any-return]


def _instantiate(cls: type[D], params: Mapping[str, Any], what: str) -> D:
    accepted = [p.name for p in inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise UnknownNameError(
            f"{what} takes no {noun(len(unknown), 'parameter')} {', '.join(unknown)}; valid: {', '.join(accepted)}"
        )
    return cls(**params)


def create_dataset(config: Mapping[str, Any]) -> ImageDataset:
    """An ImageDataset from a config mapping: ``type`` names the registry entry, every other key is a parameter."""
    params = dict(config)
    kind = str(params.pop("type", "") or "")
    if not kind:
        raise UnknownNameError(f"the dataset config needs a `type`; valid types: {', '.join(DATASETS.names())}")
    dataset: ImageDataset = _instantiate(_resolve(DATASETS, kind), params, f"image dataset {kind!r}")
    return dataset


def create_text_dataset(config: Mapping[str, Any]) -> TextDataset:
    """A TextDataset from a config mapping (``type`` + parameters), like ``create_dataset``."""
    params = dict(config)
    kind = str(params.pop("type", "") or "")
    if not kind:
        valid = ", ".join(TEXT_DATASETS.names())
        raise UnknownNameError(f"the text dataset config needs a `type`; valid types: {valid}")
    dataset: TextDataset = _instantiate(_resolve(TEXT_DATASETS, kind), params, f"text dataset {kind!r}")
    return dataset


__all__ = [
    "DATASETS",
    "TEXT_DATASETS",
    "CaptionRecord",
    "ImageDataset",
    "ImageExample",
    "ImageRef",
    "TextDataset",
    "create_dataset",
    "create_text_dataset",
]
