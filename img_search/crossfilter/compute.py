"""One crossfilter run: scan ``<uuid>.jpg`` files -> embed the missing ones through the pipeline loop -> UMAP.

Steps (seed 004's, on this project's machinery):

1. scan ``input_dir`` recursively for ``*.jpg`` / ``*.jpeg`` files (any case); the name without its extension must be
   a UUID in its canonical 8-4-4-4-12 hex form (any case; ``uuid.UUID`` parses it and prints it back the same, lower
   case); other ``.jpg`` names are skipped and counted (``invalid_names``), as is a UUID seen a second time
   (``duplicate_uuids``: the first path in sorted order wins); other files are ignored;
2. without ``recompute``, drop the UUIDs the database already holds (incremental);
3. embed the rest with ``pipeline.loop.run_loop`` (decode workers, batches of ``batch_size``, the encoder, and the
   ``db.EmbeddingsWriter`` sink committing each batch from a background thread); images that cannot be decoded are
   reported in ``failed`` and not written, so a re-run retries them;
4. with ``reproject`` (the default), fit UMAP on every stored vector (``explore.sphere.fit_sphere``: cosine in,
   haversine out, random_state 42) and replace the stored model and projections; skipped when nothing changed since
   the stored projection (the fit is deterministic: it would give the same result) or when fewer than
   ``MIN_FIT_POINTS`` vectors are stored.
"""

from __future__ import annotations

import logging
import os
import time
import uuid as uuid_lib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from img_search.crossfilter import db as cfdb
from img_search.crossfilter.types import get_embedding_type
from img_search.data.images import content_hash, decode_image, read_file
from img_search.embedding.base import Encoder
from img_search.errors import InvalidInputError, NotFoundError, UnavailableError
from img_search.explore.sphere import require_umap
from img_search.files import check_output_file
from img_search.pipeline.progress import LogProgress, Progress
from img_search.pipeline.reader import Loaded

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10  # the seed's default
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
MAX_EXAMPLES = 20  # skipped names listed in the summary


@dataclass(frozen=True, slots=True)
class UuidImage:
    """A source of the loop: one ``<uuid>.jpg`` file."""

    path: str
    uuid: str


class UuidImageLoader:
    """Picklable loader for the decode workers: file bytes -> RGB image (``data.images``)."""

    def __init__(self, max_image_pixels: int | None = None) -> None:
        self.max_image_pixels = max_image_pixels

    def __call__(self, source: UuidImage) -> Loaded:
        data = read_file(source.path, max_image_pixels=self.max_image_pixels)
        return Loaded(decode_image(data, max_image_pixels=self.max_image_pixels), content_hash(data))


def canonical_uuid(stem: str) -> bool:
    """Whether ``stem`` is a UUID written in its canonical hyphenated form (any case)."""
    try:
        return str(uuid_lib.UUID(stem)) == stem.lower()
    except ValueError:
        return False


@dataclass
class Scan:
    images: list[UuidImage] = field(default_factory=list)
    jpeg_files: int = 0
    invalid_names: list[str] = field(default_factory=list)
    duplicate_uuids: list[str] = field(default_factory=list)


def scan_uuid_images(input_dir: Path) -> Scan:
    """Every ``<uuid>.jpg`` below ``input_dir`` (sorted by path; symlinked folders are not followed)."""
    scan = Scan()
    seen: dict[str, str] = {}
    for folder, dirs, files in os.walk(input_dir):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in JPEG_SUFFIXES:
                continue
            path = os.path.join(folder, name)
            scan.jpeg_files += 1
            if not canonical_uuid(stem):
                scan.invalid_names.append(path)
                continue
            if stem in seen:
                scan.duplicate_uuids.append(path)
                logger.warning("UUID %s appears twice: %s and %s (the first is used)", stem, seen[stem], path)
                continue
            seen[stem] = path
            scan.images.append(UuidImage(path, stem))
    return scan


@dataclass
class CrossfilterSummary:
    embedding_type: str
    model: str
    database: str
    jpeg_files: int = 0
    valid: int = 0
    invalid_names: int = 0
    invalid_examples: list[str] = field(default_factory=list)
    duplicate_uuids: int = 0
    already_present: int = 0
    embedded: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    stored: int = 0  # vectors in the table after the run
    umap: str = "not asked"  # "fitted on N", "up to date", "skipped: ...", "not asked"
    seconds: float = 0.0
    embed_seconds: float = 0.0
    umap_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_embeddings(input_dir: Path, output_db: Path, *, embedding_type: str = "SIGLIP2", model: str | None = None,
                       batch_size: int = DEFAULT_BATCH_SIZE, recompute: bool = False, reproject: bool = True,
                       workers: int = 0, encoder_factory: Callable[[str, str], Encoder] | None = None,
                       progress: Progress | None = None, max_image_pixels: int | None = None) -> CrossfilterSummary:
    """Bring ``output_db`` up to date with the ``<uuid>.jpg`` images under ``input_dir`` (see the module docstring).

    ``model``: a checkpoint (Hub id or local directory) replacing the type's default, loaded with the type's encoder
    family. ``encoder_factory(checkpoint, encoder_name)`` builds the encoder (default: ``embedding.load_encoder`` on
    CPU/GPU at fp32); it is called only when some image needs embedding.
    Checked before any work: ``NotFoundError`` (no input folder), ``InvalidInputError`` (batch size, workers, unknown
    embedding type: the message lists the valid ones; ``output_db`` a folder or in a folder that does not exist),
    ``UnavailableError`` (umap-learn missing with ``reproject``; msgpack missing when there is something to embed).
    Then the encoder's errors (raised before a new database file is created; a database this run created is removed
    when the run fails before storing any row). ``ConflictError``-free: SQLite waits up to 30 s for a lock.
    """
    t0 = time.monotonic()
    etype = get_embedding_type(embedding_type)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"--batch_size must be a whole number >= 1, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidInputError(f"--workers must be a whole number >= 0 (0: decode in this process), got {workers!r}")
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NotFoundError(f"input folder {str(input_dir)!r} does not exist or is not a folder")
    checkpoint = model or etype.checkpoint
    tables = cfdb.Tables(etype.name)
    output_db = check_output_file(output_db, "--output_embeddings_db", create_parent=True)  # as the seed
    if reproject:  # before any embedding: a missing umap-learn must not surface after minutes of work
        require_umap("--reproject_umap_embeddings (the default; --no-reproject_umap_embeddings skips it)")
    summary = CrossfilterSummary(etype.name, checkpoint, str(output_db))
    scan = scan_uuid_images(input_dir)
    summary.jpeg_files, summary.valid = scan.jpeg_files, len(scan.images)
    summary.invalid_names, summary.invalid_examples = len(scan.invalid_names), scan.invalid_names[:MAX_EXAMPLES]
    summary.duplicate_uuids = len(scan.duplicate_uuids)
    if scan.invalid_names:
        logger.warning("skipped %d .jpg %s whose name is not a UUID (e.g. %s)", len(scan.invalid_names),
                       "file" if len(scan.invalid_names) == 1 else "files", scan.invalid_names[0])
    created = not output_db.exists()
    conn = None if created else _open(output_db, tables)
    try:
        todo = scan.images
        if not recompute and conn is not None:
            present = cfdb.existing_uuids(conn, tables)
            todo = [s for s in scan.images if s.uuid not in present]
            summary.already_present = len(scan.images) - len(todo)
        encoder = None
        if todo:
            cfdb.require_msgpack()
            # the model loads before a new database is created: a missing or invalid --model leaves no empty file
            encoder = (encoder_factory or _default_encoder)(checkpoint, etype.encoder)
        if conn is None:
            conn = _open(output_db, tables)
        if encoder is not None:
            _embed(todo, output_db, tables, encoder, batch_size, workers, progress or LogProgress(),
                   max_image_pixels, summary)
        summary.stored = conn.execute(f'SELECT COUNT(*) FROM "{tables.embeddings}"').fetchone()[0]
        if reproject:
            t1 = time.monotonic()
            summary.umap = _reproject(conn, tables, changed=summary.embedded > 0)
            summary.umap_seconds = time.monotonic() - t1
    except BaseException:
        if conn is not None:
            conn.close()
            conn = None
        if created:
            _remove_if_empty(output_db, tables)
        raise
    finally:
        if conn is not None:
            conn.close()
    summary.seconds = time.monotonic() - t0
    return summary


def _open(path: Path, tables: cfdb.Tables) -> Any:
    """The database at ``path`` (created when missing) with the embedding type's tables.

    Raises ``InvalidInputError`` when ``path`` is a file that is not an SQLite database (it is left as it was) and
    ``UnavailableError`` when SQLite cannot open or write it (a read-only file, a damaged database)."""
    import sqlite3

    conn = None
    try:
        conn = cfdb.connect(path)
        tables.create(conn)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        where = f"--output_embeddings_db {str(path)!r}"
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise InvalidInputError(f"{where}: the file is not an SQLite database; give crossfilter's database or "
                                    "a new file name") from None
        raise UnavailableError(f"{where}: SQLite cannot open or write it ({exc})") from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


def _remove_if_empty(path: Path, tables: cfdb.Tables) -> None:
    """Remove a database this run created when the run failed before committing any row (with its WAL files)."""
    if not path.exists():
        return
    try:
        conn = cfdb.connect(path)
        try:
            rows = conn.execute(f'SELECT COUNT(*) FROM "{tables.embeddings}"').fetchone()[0]
        finally:
            conn.close()
    except Exception as exc:  # an unreadable database is left for the user to inspect
        logger.debug("kept %s after the failed run: %s", path, exc)
        return
    if rows == 0:
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            name.unlink(missing_ok=True)
        logger.info("removed %s: this run created it and failed before storing any embedding", path)


def _default_encoder(checkpoint: str, encoder: str) -> Encoder:
    from img_search.embedding import load_encoder

    return load_encoder(checkpoint, encoder=encoder, device="auto", precision="fp32")


def _embed(todo: list[UuidImage], output_db: Path, tables: cfdb.Tables, encoder: Encoder, batch_size: int,
           workers: int, progress: Progress, max_image_pixels: int | None, summary: CrossfilterSummary) -> None:
    from img_search.pipeline.loop import run_loop

    sink = cfdb.EmbeddingsWriter  # built by the loop after the decode workers fork
    stats = run_loop(todo, UuidImageLoader(max_image_pixels), encoder, lambda: sink(output_db, tables),
                     batch_size=batch_size, workers=workers, progress=progress, description="embedding")
    summary.embedded = stats.embedded
    summary.embed_seconds = stats.seconds
    summary.failed = [{"path": i.source.path, "uuid": i.source.uuid, "reason": i.error or ""} for i in stats.failed]
    for f in summary.failed[:MAX_EXAMPLES]:
        logger.warning("could not embed %s: %s", f["path"], f["reason"])


def _reproject(conn: Any, tables: cfdb.Tables, *, changed: bool) -> str:
    from img_search.explore.sphere import MIN_FIT_POINTS, fit_sphere

    uuids, vectors = cfdb.read_embeddings(conn, tables)
    if len(uuids) < MIN_FIT_POINTS:
        logger.warning("%d embeddings stored: too few for a UMAP projection (at least %d)", len(uuids),
                       MIN_FIT_POINTS)
        return f"skipped: {len(uuids)} embeddings, UMAP needs at least {MIN_FIT_POINTS}"
    if not changed and cfdb.has_model(conn, tables) and cfdb.projected_uuids(conn, tables) == set(uuids):
        return "up to date"
    logger.info("fitting UMAP on %d embeddings", len(uuids))
    model, lat, lon = fit_sphere(vectors)
    cfdb.write_projection(conn, tables, model, uuids, lat, lon)
    return f"fitted on {len(uuids)}"
