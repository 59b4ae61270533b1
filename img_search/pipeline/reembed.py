"""Re-embedding: the catalog's images (by content hash) -> another model's vectors, through ``loop.run_loop``.

``index`` starts from folders and diffs them against the catalog; re-embedding starts from the catalog itself: every
live image's bytes, named by their content hash, get a vector of the target model. The sources are ``HashSource``s
(a content hash and the live paths that held those bytes when indexed), the loader (``HashLoader``) reads the first
path whose bytes still hash to it, and the sink (``VectorSink``) upserts vectors keyed by (content hash, model):
nothing else of the catalog is written, so a re-embedding never races with an ``index`` run over image rows, and
running a batch twice (a retried job) leaves exactly what running it once does.

Writers: each batch is one SQLite transaction (``BEGIN IMMEDIATE``; WAL lets readers on, ``busy_timeout`` queues
the writers of several worker processes). The saved search index is not touched here: ``VectorStore.sync`` needs
the catalog's writer lock (``catalog.lock.IndexLock``) and runs once at the end of a re-embedding
(``jobs.tasks.finalize_reembedding``); searches catch up in memory meanwhile.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog
from img_search.data.images import check_pixel_limit, content_hash, decode_image, read_file
from img_search.embedding.base import Encoder, ModelInfo
from img_search.embedding.precision import TowerChoice
from img_search.errors import ConflictError, ImgSearchError
from img_search.pipeline.loop import LoopStats, run_loop
from img_search.pipeline.progress import Progress
from img_search.pipeline.reader import Loaded, ReadBatch
from img_search.pipeline.runner import prepare_encoder as prepare_encoder

logger = logging.getLogger(__name__)


class StaleSourceError(ConflictError):
    """None of an image's recorded paths holds its recorded bytes any more (changed or removed since indexing)."""


@dataclass(frozen=True, slots=True)
class HashSource:
    """One vector to compute: the content hash (16-byte BLAKE2b, ``data.images.content_hash``) and the live paths
    the catalog records for it, tried in order."""

    content_hash: bytes
    paths: tuple[str, ...]


class HashLoader:
    """Loads a ``HashSource``: the first of its paths whose bytes still hash to it, decoded from memory.

    Picklable (it runs in the decode workers). Raises ``StaleSourceError`` (carried as a failed item by the reader)
    when no path holds the bytes any more; the next ``index`` of that folder records what is there now.
    """

    def __init__(self, max_image_pixels: int | None = None, min_side: int | None = None) -> None:
        check_pixel_limit(max_image_pixels)
        self.max_image_pixels = max_image_pixels
        self.min_side = min_side  # JPEGs decoded at a reduced scale keeping both sides >= it (as `index` does)

    def __call__(self, source: HashSource) -> Loaded:
        problems: list[str] = []
        for path in source.paths:
            try:
                data = read_file(path)
            except ImgSearchError as exc:
                problems.append(f"{path}: {exc}")
                continue
            if content_hash(data) != source.content_hash:
                problems.append(f"{path}: changed since it was indexed")
                continue
            return Loaded(decode_image(data, max_image_pixels=self.max_image_pixels, min_side=self.min_side),
                          source.content_hash)
        raise StaleSourceError("no file holds these bytes any more (" + "; ".join(problems) + ")")


def plan_reembedding(catalog: Catalog, *, missing_for: int | None = None) -> list[HashSource]:
    """Every live image of the catalog as one ``HashSource`` per distinct content hash, ordered by first path.

    ``missing_for``: a model id; hashes that already have a vector of it are left out (a resumed or topped-up
    re-embedding). Images that failed or were deleted are never included.
    """
    rows = [r for r in catalog.images_under("/").values() if r.status == "ok" and r.content_hash is not None]
    done = catalog.embedded_hashes(missing_for) if missing_for is not None else set()
    paths: dict[bytes, list[str]] = {}
    for row in sorted(rows, key=lambda r: r.path):
        assert row.content_hash is not None
        if row.content_hash not in done:
            paths.setdefault(row.content_hash, []).append(row.path)
    return [HashSource(h, tuple(p)) for h, p in paths.items()]


def register_model(catalog: Catalog, name: str, info: ModelInfo) -> int:
    """The catalog id of the target model, registered if new (never with ``recompute``: a re-embedding must not
    delete vectors). Several workers may register the same model at once: the loser of the race reads the row."""
    def ensure() -> int:
        return catalog.ensure_model(name, family=info.family, dim=info.dim, logit_scale=info.logit_scale,
                                    logit_bias=info.logit_bias)

    try:
        return ensure()
    except sqlite3.IntegrityError:  # another worker inserted it between our look-up and our insert
        return ensure()


def upsert_vectors(catalog: Catalog, model_id: int, hashes: Sequence[bytes], vectors: NDArray[np.float32], *,
                   precision: str = "fp32", runtime: str = "torch", decode: str = "full") -> None:
    """``Catalog.upsert_vectors``: one transaction, idempotent, image rows untouched."""
    catalog.upsert_vectors(model_id, hashes, vectors, precision=precision, runtime=runtime, decode=decode)


class VectorSink:
    """``loop.Sink`` writing each batch's vectors with ``upsert_vectors`` on its own writer connection."""

    def __init__(self, catalog_path: Path, model_id: int, *, precision: str = "fp32", runtime: str = "torch",
                 decode: str = "full") -> None:
        self.catalog = Catalog(catalog_path)
        self.model_id = model_id
        self.precision, self.runtime, self.decode = precision, runtime, decode

    def put(self, batch: ReadBatch[HashSource], vectors: NDArray[np.float32] | None) -> None:
        if vectors is not None and batch.ok:
            upsert_vectors(self.catalog, self.model_id, [i.source.content_hash for i in batch.ok], vectors,
                           precision=self.precision, runtime=self.runtime, decode=self.decode)

    def close(self) -> None:
        self.catalog.close()


def reembed(sources: Sequence[HashSource], encoder: Encoder, catalog_path: Path, model_id: int, *, batch_size: int,
            workers: int, progress: Progress, max_image_pixels: int | None = None,
            choice: TowerChoice | None = None) -> LoopStats:
    """Embed ``sources`` with ``encoder`` and upsert their vectors as ``model_id``: ``loop.run_loop`` with the
    ``HashLoader`` and a ``VectorSink``. ``batch_size`` images per forward pass, ``workers`` decode processes (0:
    decode in this thread); ``choice``: the image tower's precision and runtime, recorded with each vector
    (``prepare_encoder``; None: float32 torch). Images are decoded as ``index`` decodes them for the target model's
    collection (``runner.decode_mode``: the mode its vectors hold, else reduced-scale JPEGs) and the mode is recorded
    with each vector. Returns the loop's stats (``failed`` items carry their reason)."""
    from img_search.data.images import reduced_decode_side
    from img_search.pipeline.runner import decode_mode

    precision, runtime = (choice.precision, choice.runtime) if choice is not None else ("fp32", "torch")
    with Catalog(catalog_path, readonly=True) as catalog:
        mode = decode_mode(catalog, model_id, full_decode=False, recompute=False)
    min_side = reduced_decode_side(getattr(encoder.image_preprocessor(), "input_side", None), mode)

    def sink() -> VectorSink:
        return VectorSink(catalog_path, model_id, precision=precision, runtime=runtime, decode=mode)

    return run_loop(sources, HashLoader(max_image_pixels, min_side), encoder, sink, batch_size=batch_size,
                    workers=workers, progress=progress, description="re-embedding")
