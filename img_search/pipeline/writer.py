"""Catalog sink: a background thread that commits each encoded batch to the catalog in one transaction.

Encoding the next batch overlaps with committing this one. Errors in the thread are re-raised in the
caller at the next ``put`` or at ``close``, so a failing disk never goes unnoticed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog, ImageRecord
from img_search.data.folder import FileEntry
from img_search.pipeline.reader import ReadBatch

logger = logging.getLogger(__name__)

_STOP = object()
QUEUE_DEPTH = 4


class CatalogWriter:
    def __init__(self, catalog_path: Path, model_id: int | None, on_commit: Callable[[int, int], None] | None = None,
                 *, precision: str = "fp32", runtime: str = "torch"):
        """``precision`` / ``runtime``: how the image tower computed the vectors (recorded with each one)."""
        self.catalog_path = catalog_path
        self.model_id = model_id
        self.on_commit = on_commit
        self.precision, self.runtime = precision, runtime
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="img-search-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        catalog: Catalog | None = None
        try:
            catalog = Catalog(self.catalog_path)
        except BaseException as exc:  # re-raised in the caller by put/close
            logger.debug("cannot open the catalog for writing: %s", exc)  # the caller reports it
            self._error = exc
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if self._error is not None:
                    continue  # drain so put() never blocks forever
                records: list[ImageRecord]
                vectors: NDArray[np.float32] | None
                records, vectors = item  # type: ignore[misc]
                try:
                    assert catalog is not None
                    catalog.record(records, model_id=self.model_id, vectors=vectors, precision=self.precision,
                                   runtime=self.runtime)
                    if self.on_commit:
                        n_ok = 0 if vectors is None else int(vectors.shape[0])
                        self.on_commit(n_ok, len(records) - n_ok)
                except BaseException as exc:
                    logger.debug("catalog write failed: %s", exc)  # the caller reports it
                    self._error = exc
        finally:
            if catalog is not None:
                catalog.close()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put_records(self, records: Sequence[ImageRecord], vectors: NDArray[np.float32] | None) -> None:
        self._check()
        self._queue.put((list(records), vectors))

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
        self._queue.put(_STOP)
        self._thread.join()
        self._check()
