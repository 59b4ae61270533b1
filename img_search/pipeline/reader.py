"""Reader stage: file paths -> decoded, preprocessed pixel arrays, in parallel worker processes.

A torch ``DataLoader`` runs ``ImageFileDataset.__getitem__`` (read bytes, hash, decode, preprocess) in
``workers`` processes and ``collate`` turns each chunk into a ``ReadBatch``: the model never waits for
JPEG decoding, and a file that fails is carried along as a failure, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from img_search.data.folder import FileEntry
from img_search.data.images import DEFAULT_MAX_IMAGE_PIXELS, content_hash, decode_image, read_file
from img_search.embedding.base import ImagePreprocessor, PixelBatch, collate_pixels
from img_search.errors import ImageDecodeError


@dataclass(frozen=True, slots=True)
class ReadItem:
    entry: FileEntry
    content_hash: bytes | None = None
    width: int | None = None
    height: int | None = None
    pixels: PixelBatch | None = None
    error: str | None = None


@dataclass
class ReadBatch:
    ok: list[ReadItem] = field(default_factory=list)
    failed: list[ReadItem] = field(default_factory=list)
    pixels: PixelBatch = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ok) + len(self.failed)


def read_one(entry: FileEntry, preprocess: ImagePreprocessor, max_image_pixels: int) -> ReadItem:
    try:
        data = read_file(entry.path)
        digest = content_hash(data)
        image = decode_image(data, max_image_pixels=max_image_pixels)
        pixels = preprocess(image)
    except ImageDecodeError as exc:
        return ReadItem(entry, error=str(exc))
    except Exception as exc:  # a processor bug on one odd file must not end the run
        return ReadItem(entry, error=f"preprocessing failed: {type(exc).__name__}: {exc}")
    return ReadItem(entry, digest, image.width, image.height, pixels)


class ImageFileDataset:
    """Map-style dataset (torch's protocol: ``__len__`` / ``__getitem__``) over the files to embed."""

    def __init__(self, entries: Sequence[FileEntry], preprocess: ImagePreprocessor,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.entries = list(entries)
        self.preprocess = preprocess
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ReadItem:
        return read_one(self.entries[index], self.preprocess, self.max_image_pixels)


def collate(items: list[ReadItem]) -> ReadBatch:
    batch = ReadBatch()
    for item in items:
        (batch.ok if item.error is None else batch.failed).append(item)
    batch.pixels = collate_pixels([i.pixels for i in batch.ok if i.pixels is not None])
    # the arrays now live in the batch; drop per-item copies so they are not pickled twice
    batch.ok = [ReadItem(i.entry, i.content_hash, i.width, i.height) for i in batch.ok]
    return batch


def read_batches(
    dataset: ImageFileDataset, *, batch_size: int, workers: int, prefetch_batches: int = 2
) -> Iterator[ReadBatch]:
    """An iterator of ReadBatches in file order; ``workers=0`` decodes in the calling process.

    The worker processes are forked here, eagerly, so callers can start their own threads afterwards.
    """
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch_batches, persistent_workers=False, multiprocessing_context="fork")
    loader: DataLoader[ReadItem] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        **kwargs,
    )
    return iter(loader)
