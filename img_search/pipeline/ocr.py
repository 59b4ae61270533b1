"""Text in images during ``img-search index --ocr``, on the one read -> encode -> write loop (``pipeline.loop``).

Two places, one reader (``data.ocr.OcrReader``, incremental by content hash like the vectors):

- files the run decodes anyway (new or changed): ``OcrLoader`` wraps the file loader, so the decode workers read the
  text of the picture they just decoded; it travels in ``ReadItem.ocr`` to the catalog writer (``ImageRecord.ocr``),
  committed in the same transaction as the file's vector;
- live images of the indexed folders whose content has no text yet (a collection indexed before ``--ocr`` was used,
  files whose vector was reused): ``backfill_ocr`` runs the same loop with no encoder (nothing is re-embedded), one
  file per content hash, and records the text with ``Catalog.set_ocr``.

A picture whose text cannot be read is recorded with an empty text (``data.ocr.OcrFailure``, reason logged) and the
run goes on; a file that cannot even be decoded in the back-fill is logged and left for the next run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog, OcrText
from img_search.data.folder import FileEntry
from img_search.data.ocr import OcrFailure, OcrReader
from img_search.pipeline.loop import Sink
from img_search.pipeline.progress import Progress
from img_search.pipeline.reader import Loaded, ReadBatch

logger = logging.getLogger(__name__)

# The back-fill's batch: one picture. Reading one costs ~0.9 s of CPU (docs/PERFORMANCE.md, "Text in images (OCR)"),
# so a batch of the run's --batch-size (32) held the progress bar still for half a minute or more per worker and gave
# its ETA a handful of samples; with one picture per batch the bar advances as each picture's text is read. The
# back-fill batches nothing else (no model forward), and its one SQLite transaction per picture costs milliseconds.
OCR_BACKFILL_BATCH = 1


def ocr_threads(workers: int) -> int | None:
    """Intra-op threads of each OCR engine: one per decode process (parallelism comes from ``--workers``); None
    (the runtime's default, all cores) when reading in the main process. Measured (bench/ocr_throughput.py,
    docs/PERFORMANCE.md "Text in images (OCR)"): a second ONNX Runtime thread per engine cost 1.5x the CPU time per
    picture and was slower, not faster, on a shared 2-core machine, where the encoder's threads compete too."""
    return 1 if workers > 0 else None


class OcrLoader:
    """A loader (``Callable[[FileEntry], Loaded]``, picklable) that reads the text of each picture ``inner`` loads.

    When the engine itself cannot be built in a worker (a broken install), the picture loads without text (None:
    not recorded, so the next run tries again) and the reason is logged once per process; the run goes on.
    """

    def __init__(self, inner: Callable[[FileEntry], Loaded], reader: OcrReader) -> None:
        self.inner = inner
        self.reader = reader
        self._broken: str | None = None

    def __call__(self, entry: FileEntry) -> Loaded:
        loaded = self.inner(entry)
        if self._broken is not None:
            return loaded
        try:
            text = self.reader(loaded.image, loaded.content_hash, entry.path)
        except Exception as exc:  # the engine could not be built: no text this run, the image still indexes
            self._broken = f"{type(exc).__name__}: {exc}"
            logger.error("text reading is off in this process: %s", self._broken)
            return loaded
        return dataclasses.replace(loaded, ocr=text) if text is not None else loaded


@dataclass
class OcrCounts:
    """Pictures whose text was read this run: ``read`` in all, ``with_text`` of them where text was found,
    ``failed`` where the engine failed (recorded with no text); ``skipped``: files of the back-fill that could not be
    decoded (left for the next run); ``seconds``: wall time of the back-fill pass (reading in the decode workers
    overlaps with embedding and is not timed apart)."""

    read: int = 0
    with_text: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def count(self, texts: Sequence[OcrText | None]) -> None:
        for text in texts:
            if text is None:
                continue
            self.read += 1
            self.failed += isinstance(text, OcrFailure)
            self.with_text += bool(text.text)

    def add(self, other: OcrCounts) -> None:
        self.read += other.read
        self.with_text += other.with_text
        self.failed += other.failed
        self.skipped += other.skipped
        self.seconds += other.seconds


class CountingSink:
    """Wraps a sink and counts the text read in each batch it receives (in the main process)."""

    def __init__(self, inner: Sink, counts: OcrCounts) -> None:
        self.inner = inner
        self.counts = counts

    def put(self, batch: ReadBatch[Any], vectors: NDArray[np.float32] | None) -> None:
        self.counts.count([i.ocr for i in batch.ok])
        self.inner.put(batch, vectors)

    def close(self) -> None:
        self.inner.close()


class OcrSink:
    """The back-fill's sink: each batch's text in one transaction (``Catalog.set_ocr``, which refreshes the text
    index of every image with that content), on its own catalog connection; undecodable files are counted and
    logged, never recorded as failures of an image that is indexed."""

    def __init__(self, catalog_path: Path, counts: OcrCounts) -> None:
        self.catalog = Catalog(catalog_path)
        self.counts = counts

    def put(self, batch: ReadBatch[Any], vectors: NDArray[np.float32] | None) -> None:
        items = [(i.content_hash, i.ocr) for i in batch.ok if i.ocr is not None and i.content_hash is not None]
        if items:
            self.catalog.set_ocr(items)
        self.counts.count([i.ocr for i in batch.ok])
        for item in batch.failed:
            self.counts.skipped += 1
            logger.warning("could not read %s for its text (left for the next run): %s", item.source.path, item.error)

    def close(self) -> None:
        self.catalog.close()


def pending_ocr(catalog: Catalog, roots: Sequence[str]) -> list[FileEntry]:
    """Live images under ``roots`` whose content has no text recorded: one file per content hash (copies share the
    text), in path order."""
    done = catalog.ocr_hashes()
    pending: dict[bytes, FileEntry] = {}
    for root in roots:
        for path, row in sorted(catalog.images_under(root).items()):
            h = row.content_hash
            if row.status != "ok" or h is None or h in done or h in pending:
                continue
            pending[h] = FileEntry(path, row.size or 0, row.mtime_ns or 0)
    return list(pending.values())


def backfill_ocr(catalog: Catalog, roots: Sequence[str], reader: OcrReader, load: Callable[[FileEntry], Loaded], *,
                 batch_size: int, workers: int, progress: Progress) -> OcrCounts:
    """Read the text of every live image under ``roots`` that has none yet (``pending_ocr``), through the one loop
    with no encoder; ``load`` is the plain file loader (``OcrLoader`` wraps it here). Returns the counts.

    ``progress`` advances by one picture as each one's text is read and committed: the loop runs in batches of at most
    ``OCR_BACKFILL_BATCH`` pictures, whatever ``batch_size`` (the run's batch size for the model) says."""
    from img_search.pipeline.loop import run_loop

    counts = OcrCounts()
    todo = pending_ocr(catalog, roots)
    if not todo:
        return counts
    logger.info("reading the text in %d pictures indexed earlier", len(todo))
    stats = run_loop(todo, OcrLoader(load, reader), None, lambda: OcrSink(catalog.path, counts),
                     batch_size=min(batch_size, OCR_BACKFILL_BATCH), workers=workers, progress=progress,
                     description="reading text")
    counts.seconds = stats.seconds
    return counts
