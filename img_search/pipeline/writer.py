"""Sinks of the pipeline loop: a background thread commits each encoded batch in one transaction.

Encoding the next batch overlaps with committing this one. ``BackgroundWriter`` is the one writer thread (the
catalog's ``CatalogWriter`` and crossfilter's ``EmbeddingsWriter`` are built on it). Errors in the thread are
re-raised in the caller at the next ``put`` or at ``close``, so a failing disk never goes unnoticed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog, ImageRecord
from img_search.data.folder import FileEntry
from img_search.pipeline.reader import ReadBatch

logger = logging.getLogger(__name__)

QUEUE_DEPTH = 4
_STOP = object()

C = TypeVar("C")
T = TypeVar("T")


class BackgroundWriter(Generic[C, T]):
    """A thread that owns one store connection and writes queued items in order, one ``write`` call each.

    ``connect()`` runs in the thread (SQLite connections stay in their thread); ``write(conn, item)`` commits one
    item (one transaction); ``disconnect(conn)`` runs when the thread ends. The queue holds at most ``QUEUE_DEPTH``
    items, so a slow disk slows the producer instead of buffering the whole run in memory. The first error in the
    thread is re-raised in the caller at the next ``submit`` or at ``close``; later items are drained unwritten so
    ``submit`` never blocks forever."""

    def __init__(self, connect: Callable[[], C], write: Callable[[C, T], None], disconnect: Callable[[C], None],
                 *, name: str) -> None:
        self._connect, self._write, self._disconnect = connect, write, disconnect
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: C | None = None
        try:
            conn = self._connect()
        except BaseException as exc:  # re-raised in the caller by submit/close
            logger.debug("%s: cannot open the store for writing: %s", self._thread.name, exc)
            self._error = exc
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if self._error is not None or conn is None:
                    continue
                try:
                    self._write(conn, item)  # type: ignore[arg-type]
                except BaseException as exc:
                    logger.debug("%s: write failed: %s", self._thread.name, exc)  # the caller reports it
                    self._error = exc
        finally:
            if conn is not None:
                self._disconnect(conn)

    def check(self) -> None:
        """Re-raise the thread's first error, if any."""
        if self._error is not None:
            raise self._error

    def submit(self, item: T) -> None:
        """Queue one item (blocks while ``QUEUE_DEPTH`` items wait). Raises the thread's earlier error, if any."""
        self.check()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until everything queued is written; re-raise the thread's error, if any."""
        self._queue.put(_STOP)
        self._thread.join()
        self.check()


class CatalogWriter:
    """Pipeline sink (``pipeline.loop.Sink``) committing each batch's records and vectors to the catalog."""

    def __init__(self, catalog_path: Path, model_id: int | None, on_commit: Callable[[int, int], None] | None = None,
                 *, precision: str = "fp32", runtime: str = "torch", decode: str = "full"):
        """``precision`` / ``runtime``: how the image tower computed the vectors, ``decode``: how their images were
        decoded (``data.images`` decode modes), all recorded with each vector in the batch's transaction;
        ``on_commit(n_embedded, n_failed)`` runs in the writer thread after each committed batch."""
        self.catalog_path = catalog_path
        self.model_id = model_id
        self.on_commit = on_commit
        self.precision, self.runtime, self.decode = precision, runtime, decode
        self._writer: BackgroundWriter[Catalog, tuple[list[ImageRecord], NDArray[np.float32] | None]] = (
            BackgroundWriter(lambda: Catalog(catalog_path), self._commit, Catalog.close, name="img-search-writer"))

    def _commit(self, catalog: Catalog, item: tuple[list[ImageRecord], NDArray[np.float32] | None]) -> None:
        records, vectors = item
        catalog.record(records, model_id=self.model_id, vectors=vectors, precision=self.precision,
                       runtime=self.runtime, decode=self.decode)
        if self.on_commit:
            n_ok = 0 if vectors is None else int(vectors.shape[0])
            self.on_commit(n_ok, len(records) - n_ok)

    def put_records(self, records: Sequence[ImageRecord], vectors: NDArray[np.float32] | None) -> None:
        self._writer.submit((list(records), vectors))

    def put(self, batch: ReadBatch[FileEntry], vectors: NDArray[np.float32] | None) -> None:
        """Sink protocol: ok files (with their vectors, in order) and failures of one batch."""
        records = [ImageRecord(i.source.path, i.source.size, i.source.mtime_ns, i.content_hash, i.width, i.height,
                               metadata=i.metadata, ocr=i.ocr)
                   for i in batch.ok]
        records += [ImageRecord(i.source.path, i.source.size, i.source.mtime_ns, error=i.error)
                    for i in batch.failed]
        self.put_records(records, vectors)

    def close(self) -> None:
        """Wait until everything queued is committed."""
        self._writer.close()
