"""Back-fill of photo metadata for files `index` does not decode this run.

Files that go through the decode workers get their metadata there (``pipeline.reader.FileLoader``, from the bytes
and image already in memory). Every other live image of the indexed folders whose metadata is missing (a catalog
upgraded from schema v2, files indexed with metadata reading off, moved or copied files whose vector was reused) or
stale (its XMP sidecar appeared, changed or went away since it was read) is read here, from the file's headers:
``Image.open`` is lazy, so nothing but the headers is parsed, plus a reduced decode for the dominant colours (JPEG
at a DCT scale of 1/8 where the colour grid allows; other formats in full). Results are committed in batches of
``BATCH`` (``Catalog.set_photo_metadata``, which refreshes the text index), so an interrupted back-fill keeps what it
read. The reads run in the calling process: a process pool was no faster here (docs/PERFORMANCE.md,
"Photo metadata": a spawn pool of 2 took 1.00-1.36x the serial time for 200 photos on the 2-core machine) and the
``multiprocessing.Pool`` it had hung for good in the full test suite (issue 9; such a pool waits forever for the
task of a worker that dies, as every worker of its forkserver variant did: docs/RELIABILITY.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from img_search.catalog import Catalog, PhotoMetadata
from img_search.data.metadata import read_metadata, sidecar_mtimes
from img_search.pipeline.progress import Progress

logger = logging.getLogger(__name__)

BATCH = 256  # files per catalog transaction


def stale_metadata(catalog: Catalog, roots: Sequence[str], *, skip: Iterable[str] = (),
                   force: Iterable[str] = ()) -> list[str]:
    """Live images under ``roots`` whose metadata is missing, or was read with another version of their XMP sidecar
    (mtime differs, or the sidecar appeared / went away), plus ``force`` (files whose content changed without a
    decode: reused vectors), minus ``skip`` (files the decode workers read this run). Costs one catalog query per
    500 files and one directory listing per folder; no file is opened."""
    skipped = set(skip)
    live = [p for root in roots for p, row in catalog.images_under(root).items()
            if row.status == "ok" and p not in skipped]
    state = catalog.metadata_state(live)
    sidecars = sidecar_mtimes(live)
    forced = set(force)
    return [p for p in live if p in forced or p not in state or state[p] != sidecars.get(p)]


def backfill_metadata(catalog: Catalog, paths: Sequence[str], *, progress: Progress | None = None) -> int:
    """Read (``data.metadata.read_metadata``, never raises) and record the metadata of ``paths``
    (``stale_metadata``'s list), in the calling process; returns how many were recorded."""
    if not paths:
        return 0
    logger.info("reading photo metadata of %d files not decoded this run", len(paths))
    if progress is not None:
        progress.start(len(paths), "metadata")
    done, writing = 0, False
    pending: list[tuple[str, PhotoMetadata]] = []

    def flush() -> None:
        nonlocal done, pending, writing
        writing = True
        done += catalog.set_photo_metadata(pending)
        writing = False
        if progress is not None:
            progress.advance(len(pending))
        pending = []

    try:
        for path in paths:
            pending.append((path, read_metadata(path)))
            if len(pending) >= BATCH:
                flush()
    finally:
        try:
            if pending and not writing:  # an interrupted back-fill keeps what it read
                flush()
        finally:
            if progress is not None:
                progress.stop()
    return done
