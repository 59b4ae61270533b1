"""Reader stage: sources -> decoded, preprocessed pixel arrays, in parallel worker processes.

A torch ``DataLoader`` runs ``SourceDataset.__getitem__`` (load -> RGB image -> the encoder's
preprocessor) in ``workers`` processes and ``collate`` turns each chunk into a ``ReadBatch``: the
model never waits for JPEG decoding, and a source that fails is carried along as a failure, never an
exception. What a source is depends on the caller: a ``FileEntry`` for folders (loaded by
``load_file``), a dataset row for the dataset pipelines; the loader is a picklable callable.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from img_search.data.folder import FileEntry
from img_search.data.images import check_pixel_limit, content_hash, decode_image, full_size, read_file
from img_search.embedding.base import ImagePreprocessor, PixelBatch, collate_pixels
from img_search.errors import ImageDecodeError

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a loader returns for one source: the RGB image and, where known, a content hash and the photo's metadata
    (``catalog.PhotoMetadata``, read from the same bytes: ``data.metadata``). ``model_image``: the picture the model
    gets when it is not ``image`` (decoded at a reduced scale while ``image`` is the full decode that text reading
    needs)."""

    image: Any
    content_hash: bytes | None = None
    metadata: Any = None
    ocr: Any = None  # catalog.OcrText when the text was read (pipeline.ocr.OcrLoader)
    model_image: Any = None


@dataclass(frozen=True, slots=True)
class ReadItem(Generic[S]):
    source: S
    content_hash: bytes | None = None
    width: int | None = None
    height: int | None = None
    pixels: PixelBatch | None = None
    error: str | None = None
    metadata: Any = None  # catalog.PhotoMetadata when the loader read it
    ocr: Any = None  # catalog.OcrText when the loader read the text


@dataclass
class ReadBatch(Generic[S]):
    ok: list[ReadItem[S]] = field(default_factory=list)
    failed: list[ReadItem[S]] = field(default_factory=list)
    pixels: PixelBatch = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ok) + len(self.failed)


class FileLoader:
    """Loads a FileEntry: read bytes once (``read_file``: regular files only, refused after the header when they
    are not an image within the pixel limit), hash them, decode from memory, and (``read_metadata``) read the photo's
    metadata from the same bytes and decoded image (``data.metadata.read_metadata``: never fails the image).

    ``max_image_pixels``: None for the process-wide limit, or a lower one (checked here, before any worker
    forks: InvalidInputError when above the process-wide limit). ``min_side``: decode JPEGs at a reduced scale
    keeping both sides >= it (``data.images.decode_image``; None: in full); with ``keep_full`` the picture is also
    decoded in full as ``Loaded.image`` (text reading needs every pixel) and the reduced one goes to the model as
    ``Loaded.model_image``.
    """

    def __init__(self, max_image_pixels: int | None = None, *, read_metadata: bool = False,
                 min_side: int | None = None, keep_full: bool = False) -> None:
        check_pixel_limit(max_image_pixels)
        self.max_image_pixels = max_image_pixels
        self.read_metadata = read_metadata
        self.min_side = min_side
        self.keep_full = keep_full

    def __call__(self, entry: FileEntry) -> Loaded:
        data = read_file(entry.path, max_image_pixels=self.max_image_pixels)
        image = decode_image(data, max_image_pixels=self.max_image_pixels, min_side=self.min_side)
        model_image = None
        if self.keep_full and full_size(image) != image.size:
            model_image, image = image, decode_image(data, max_image_pixels=self.max_image_pixels)
        metadata = None
        if self.read_metadata:
            from img_search.data.metadata import read_metadata

            metadata = read_metadata(entry.path, data, image)
        return Loaded(image, content_hash(data), metadata, model_image=model_image)


def read_one(source: S, load: Callable[[S], Loaded], preprocess: ImagePreprocessor | None) -> ReadItem[S]:
    """Load one source and prepare its pixels (``preprocess`` None: no pixels, for passes that embed nothing);
    a failure comes back as a ``ReadItem`` with ``error``."""
    try:
        loaded = load(source)
        model_image = loaded.model_image if loaded.model_image is not None else loaded.image
        pixels = preprocess(model_image) if preprocess is not None else None
        width, height = full_size(loaded.image)  # the picture's own size, however it was decoded
    except ImageDecodeError as exc:
        return ReadItem(source, error=str(exc))
    except Exception as exc:  # one odd input must not end the run
        return ReadItem(source, error=f"{type(exc).__name__}: {exc}")
    return ReadItem(source, loaded.content_hash, width, height, pixels, metadata=loaded.metadata, ocr=loaded.ocr)


class DecodeGate:
    """Decode workers take turns with a CPU model: they start an image only while the model is not computing.

    Why (issue 8, docs/PERFORMANCE.md "Decode workers take turns with the model"): a CPU runtime splits each operator
    of the forward pass evenly over its threads, one per core, and each operator ends at a barrier. A decode process
    running beside it takes a core from one of those threads for a scheduler slice, and the other threads wait for
    it at the barrier: the model loses about twice the CPU share the decoder takes. With the gate, decoding happens
    while the main process waits for a batch, on every core (one worker per core), and the model's passes run
    undisturbed.

    The gate is a pipe made before the workers fork (they inherit it): open while it holds one byte, so a worker
    waits with ``select`` until it is readable and never reads it; only the process that made it writes or takes
    the byte. No lock is shared, so a worker killed at any point cannot block the model's process. It starts open, so
    the first batches decode while the model loads. ``model_turn()`` closes it around one forward pass; a worker
    already inside an image finishes that image. ``close()`` releases the pipe (the workers must be stopped first).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._owner = os.getpid()
        self._open = False
        self._set_open(True)

    def _set_open(self, open_: bool) -> None:
        if open_ and not self._open:
            os.write(self._write, b"1")
        elif not open_ and self._open:
            os.read(self._read, 1)
        self._open = open_

    def wait(self) -> None:
        """Block until the model is not computing (called by a worker before each image)."""
        import select

        while not select.select([self._read], [], [])[0]:
            pass

    @contextmanager
    def model_turn(self) -> Iterator[None]:
        """Close the gate for the block (one forward pass); it opens again however the block ends."""
        self._set_open(False)
        try:
            yield
        finally:
            self._set_open(True)

    def close(self) -> None:
        """Release the pipe (in the process that made the gate; a no-op elsewhere and when already closed)."""
        if os.getpid() == self._owner and self._read >= 0:
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1


class SourceDataset(Generic[S]):
    """Map-style dataset (torch's protocol: ``__len__`` / ``__getitem__``) over the sources to embed.

    ``gate``: when given, each item waits for it before loading (``DecodeGate``: decode workers yield the cores to a
    CPU model)."""

    def __init__(self, sources: Sequence[S], load: Callable[[S], Loaded],
                 preprocess: ImagePreprocessor | None, gate: DecodeGate | None = None) -> None:
        self.sources = sources
        self.load = load
        self.preprocess = preprocess
        self.gate = gate

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> ReadItem[S]:
        if self.gate is not None:
            self.gate.wait()
        return read_one(self.sources[index], self.load, self.preprocess)


def collate(items: list[ReadItem[Any]]) -> ReadBatch[Any]:
    batch: ReadBatch[Any] = ReadBatch()
    for item in items:
        (batch.ok if item.error is None else batch.failed).append(item)
    batch.pixels = collate_pixels([i.pixels for i in batch.ok if i.pixels is not None])
    # the arrays now live in the batch; drop per-item copies so they are not pickled twice
    batch.ok = [ReadItem(i.source, i.content_hash, i.width, i.height, metadata=i.metadata, ocr=i.ocr)
                for i in batch.ok]
    return batch


def _die_with_parent(parent: int, worker_id: int) -> None:
    """Decode workers ignore SIGINT (a Ctrl-C reaches the terminal's whole process group: the parent handles it and
    stops them, which a worker dying of its own KeyboardInterrupt would only garble with a ``Process Process-2:``
    traceback) and must not outlive a killed parent (a SIGKILLed `index` would leave them blocked forever on a full
    result pipe): ask Linux to SIGKILL them when the parent dies.

    ``parent`` is the pid of the process that forks the workers, taken before the fork: a worker reads its own
    parent only after the fork, when a parent killed in between has already been replaced by init (or a subreaper),
    and torch's own watchdog, which compares with that, would then wait forever too.
    """
    import ctypes
    import os
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held back since the fork (_sigint_held): dropped
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def read_batches(
    dataset: SourceDataset[Any], *, batch_size: int, workers: int, prefetch_batches: int = 2
) -> Batches:
    """An iterator of ReadBatches in source order; ``workers=0`` decodes in the calling process.

    The worker processes are forked here, eagerly, so callers can start their own threads afterwards.
    """
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch_batches, persistent_workers=False, multiprocessing_context="fork",
                      worker_init_fn=functools.partial(_die_with_parent, os.getpid()))
    loader: DataLoader[ReadItem[Any]] = DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        **kwargs,
    )
    if workers == 0:
        return Batches(iter(loader))
    with _sigint_held():
        return Batches(iter(loader))


@contextmanager
def _sigint_held() -> Iterator[None]:
    """SIGINT blocked in this thread while the decode workers are forked: a Ctrl-C in that window waits (delivered
    here once unblocked, not lost), and each worker starts with it blocked until ``_die_with_parent`` ignores it,
    so none dies of a KeyboardInterrupt before its loop (a ``Process Process-2:`` traceback)."""
    import signal

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Batches:
    """The loader's batches; ``close()`` (or exhaustion, or an error while iterating) stops its decode workers at
    once, even before the first batch was asked for.

    Without this, an interrupted run leaves the workers running until the interrupted frame's traceback is freed (and
    a generator closed before its first ``next`` never runs its ``finally``). torch offers no public call for it:
    ``_shutdown_workers`` is what the iterator's own ``__del__`` calls.
    """

    def __init__(self, batches: Iterator[ReadBatch[Any]]) -> None:
        self._batches = batches

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> ReadBatch[Any]:
        try:
            return next(self._batches)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutdown = getattr(self._batches, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
