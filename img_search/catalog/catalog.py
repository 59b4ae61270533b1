"""A thin typed layer over the SQLite catalog (WAL mode): parameterised SQL only, explicit transactions.

One ``Catalog`` per thread (a connection is never used by two threads at once): the pipeline's writer thread opens
its own, and a multi-threaded reader keeps one per thread. Readers (``search``) work while an ``index`` run writes,
thanks to WAL, and open the catalog read-only (``readonly=True``), which also works on read-only media.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.catalog.metadata import (
    MetadataMixin,
    OcrText,
    PhotoMetadata,
    ids_for_paths,
    upsert_ocr,
    upsert_photo_metadata,
)
from img_search.catalog.recompute import RecomputeMixin
from img_search.catalog.schema import MIGRATIONS, READABLE_VERSIONS, SCHEMA_VERSION
from img_search.catalog.text_index import rebuild_text_index
from img_search.errors import (
    CatalogError,
    CatalogNotFoundError,
    CatalogReadOnlyError,
    CatalogVersionError,
    DimensionMismatchError,
    StorageFullError,
)
from img_search.files import storage_full
from img_search.wording import count

logger = logging.getLogger(__name__)

CATALOG_FILENAME = "catalog.sqlite3"
HASH_BYTES = 16
BUSY_TIMEOUT_MS = 30_000


def fs_bytes(path: str) -> bytes:
    return os.fsencode(path)


def fs_str(path: bytes) -> str:
    return os.fsdecode(path)


@dataclass(frozen=True, slots=True)
class ModelRow:
    id: int
    name: str
    family: str | None
    dim: int | None
    logit_scale: float | None
    logit_bias: float | None


@dataclass(frozen=True, slots=True)
class ImageRow:
    id: int
    path: str
    size: int | None
    mtime_ns: int | None
    content_hash: bytes | None
    width: int | None
    height: int | None
    status: str
    error: str | None


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What the pipeline writes for one file."""

    path: str
    size: int | None
    mtime_ns: int | None
    content_hash: bytes | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None  # set -> status 'error'
    metadata: PhotoMetadata | None = None  # read from the file's headers and XMP sidecar (None: not read this time)
    ocr: OcrText | None = None  # text read from the pixels (`index --ocr`; None: not read this time)


_IMAGE_COLS = "id, path, size, mtime_ns, content_hash, width, height, status, error"


def _image_row(r: Sequence[Any]) -> ImageRow:
    return ImageRow(r[0], fs_str(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8])


# SQLite result codes of a full device (https://www.sqlite.org/rescode.html): SQLITE_FULL (13, kept in the low byte of
# its extended codes) and SQLITE_IOERR_SHMSIZE (4874: the WAL index file could not be extended, as when a catalog is
# opened on a full disk)
_SQLITE_FULL = 13
_SQLITE_IOERR_SHMSIZE = 4874


def _device_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "disk is full" in str(exc)
    return code & 0xFF == _SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE


def prefix_bounds(folder: str) -> tuple[bytes, bytes]:
    """Byte range [lo, hi) of every path strictly under ``folder`` (BLOBs compare with memcmp)."""
    lo = fs_bytes(os.path.join(os.path.abspath(folder), ""))
    return lo, lo[:-1] + bytes([lo[-1] + 1])


class Catalog(MetadataMixin, RecomputeMixin):
    """One SQLite connection to the catalog of an index directory.

    ``readonly=True`` opens it for reading only: never created, never migrated, no journal-mode change, nothing
    written, so it works on read-only media and without write permission (there SQLite cannot create its WAL
    shared-memory file, so the file is opened ``immutable``: changes a concurrent writer makes are not seen; see
    https://www.sqlite.org/uri.html#uriimmutable). A catalog of an older schema is read as it is while its version is
    in ``READABLE_VERSIONS``, else refused with ``CatalogVersionError``. The connection may be handed to another
    thread but not used by two at once: a multi-threaded reader keeps one ``Catalog`` per thread
    (``search.collection.Collection`` does).

    Raises ``CatalogNotFoundError`` (no catalog; readers), ``CatalogReadOnlyError`` (a writer on read-only storage),
    ``CatalogVersionError`` and ``CatalogError`` (not a catalog).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.immutable = False
        try:
            if readonly:
                self.db = self._connect_readonly()
            else:
                self.db = self._connect_writer()
            self._check_version()
            if not readonly:
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: sqlite3.DatabaseError) -> CatalogError | StorageFullError:
        text = str(exc)
        if _device_full(exc):
            return storage_full(self.path, f"opening the catalog: {text}")
        if "readonly" in text or "read-only" in text:
            return CatalogReadOnlyError(
                f"the catalog {self.path} is on read-only storage or not writable by this user ({text}); "
                "`index` needs to write it: use a writable --index-dir"
            )
        if "not a database" in text or "malformed" in text:
            return CatalogError(f"{self.path} is not a usable img-search catalog ({text})")
        return CatalogError(f"cannot open the catalog {self.path}: {text}")

    def _connect_writer(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogReadOnlyError(
                f"cannot create the index directory {self.path.parent}: {exc.strerror or exc}"
            ) from None
        if not os.access(self.path.parent, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
            raise CatalogReadOnlyError(
                f"the index directory {self.path.parent} is read-only or not writable by this user; `index` needs "
                "to write it: use a writable --index-dir (search, similar and info work on it as it is)"
            )
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise CatalogNotFoundError(f"no catalog at {self.path}: run `img-search index FOLDER` first")
        base = "file:" + urllib.parse.quote(os.fsencode(self.path).decode("utf-8", "surrogateescape"))
        try:
            db = self._open_uri(base + "?mode=ro")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # WAL: needs the -shm file
            return db
        except sqlite3.OperationalError as exc:
            logger.debug("read-only open of %s failed (%s); opening it immutable", self.path, exc)
        self.immutable = True
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            logger.warning("%s holds changes not yet merged into the catalog; a read-only copy cannot see them "
                           "(open the catalog once where it is writable, e.g. run `img-search info` there)", wal)
        return self._open_uri(base + "?immutable=1")

    def _open_uri(self, uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return db

    @classmethod
    def in_dir(cls, index_dir: Path, *, readonly: bool = False) -> Catalog:
        return cls(Path(index_dir) / CATALOG_FILENAME, readonly=readonly)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def check_version(self) -> None:
        """Re-check the schema version (a long-lived reader after the catalog changed under it): raises
        ``CatalogVersionError`` when a newer img-search upgraded it, or it is older than readers read."""
        self._check_version()

    def _check_version(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise CatalogVersionError(
                f"catalog {self.path} has schema version {version}, newer than this img-search understands "
                f"({SCHEMA_VERSION}); upgrade img-search"
            )
        if not self.readonly:
            return
        if version == 0:
            raise CatalogNotFoundError(f"{self.path} holds no catalog yet: run `img-search index FOLDER` first")
        if version not in READABLE_VERSIONS:
            raise CatalogVersionError(
                f"catalog {self.path} has schema version {version}, older than this img-search reads; run "
                "`img-search index` on it once (where it is writable) to upgrade it"
            )

    def _migrate(self) -> None:
        version = self.schema_version
        for target in range(version, SCHEMA_VERSION):
            with self.transaction():
                # re-check inside the write lock: another process may have migrated meanwhile
                if self.schema_version > target:
                    continue
                MIGRATIONS[target](self.db)
                self.db.execute(f"PRAGMA user_version = {target + 1}")
            logger.info("catalog %s migrated to schema version %d", self.path, target + 1)

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the catalog as of one instant (WAL snapshot isolation)."""
        if self.db.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            self.db.execute("COMMIT")

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes whenever another connection commits (cheap change check)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), rolled back when the block raises.

        Raises ``StorageFullError`` when the device is full (SQLite's SQLITE_FULL, at a statement or at the COMMIT):
        the transaction is rolled back, earlier ones are kept and the connection stays usable.
        """
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:  # SQLite rolls back by itself on some errors (SQLITE_FULL, ...)
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not _device_full(exc):
                raise
            if self.db.in_transaction:  # a failed COMMIT leaves the transaction open
                self.db.execute("ROLLBACK")
            raise storage_full(self.path, str(exc)) from exc

    # -- models ---------------------------------------------------------------------------------
    def get_model(self, name: str) -> ModelRow | None:
        r = self.db.execute(
            "SELECT id, name, family, dim, logit_scale, logit_bias FROM models WHERE name = ?", (name,)
        ).fetchone()
        return ModelRow(*r) if r else None

    def models(self) -> list[ModelRow]:
        rows = self.db.execute("SELECT id, name, family, dim, logit_scale, logit_bias FROM models ORDER BY id")
        return [ModelRow(*r) for r in rows]

    def ensure_model(
        self, name: str, *, family: str, dim: int, logit_scale: float, logit_bias: float | None, recompute: bool = False
    ) -> int:
        """Register a model (or refresh its learned values); a changed dimension needs ``recompute``."""
        existing = self.get_model(name)
        with self.transaction() as db:
            if existing is None:
                cur = db.execute(
                    "INSERT INTO models (name, family, dim, logit_scale, logit_bias, created_at) VALUES (?,?,?,?,?,?)",
                    (name, family, dim, logit_scale, logit_bias, time.time()),
                )
                return int(cur.lastrowid or 0)
            if existing.dim is not None and existing.dim != dim:
                if not recompute:
                    raise DimensionMismatchError(
                        f"model {name!r} was indexed with {existing.dim}-dim vectors but now gives {dim}-dim ones "
                        "(the checkpoint changed); re-run `img-search index` with --recompute"
                    )
                db.execute("DELETE FROM embeddings WHERE model_id = ?", (existing.id,))
            db.execute(
                "UPDATE models SET family = ?, dim = ?, logit_scale = ?, logit_bias = ? WHERE id = ?",
                (family, dim, logit_scale, logit_bias, existing.id),
            )
            return existing.id

    # -- roots ----------------------------------------------------------------------------------
    def touch_root(self, folder: str) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO roots (path, added_at, last_indexed_at) VALUES (?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET last_indexed_at = excluded.last_indexed_at",
                (fs_bytes(os.path.abspath(folder)), now, now),
            )

    def roots(self) -> list[tuple[str, float | None]]:
        return [(fs_str(p), t) for p, t in self.db.execute("SELECT path, last_indexed_at FROM roots ORDER BY path")]

    # -- images ---------------------------------------------------------------------------------
    def images_under(self, folder: str) -> dict[str, ImageRow]:
        lo, hi = prefix_bounds(folder)
        rows = self.db.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE path >= ? AND path < ?", (lo, hi))
        return {row.path: row for row in map(_image_row, rows)}

    def image(self, path: str) -> ImageRow | None:
        r = self.db.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE path = ?", (fs_bytes(path),)).fetchone()
        return _image_row(r) if r else None

    def images_by_id(self, ids: Iterable[int], *, live_only: bool = False) -> dict[int, ImageRow]:
        """Rows of the given image ids (``live_only``: only those with status 'ok'); unknown ids are left out."""
        out: dict[int, ImageRow] = {}
        id_list = [int(i) for i in ids]
        where = " AND status = 'ok'" if live_only else ""
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self.db.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE id IN ({marks}){where}", chunk):
                out[r[0]] = _image_row(r)
        return out

    def embedded_hashes(self, model_id: int) -> set[bytes]:
        return {r[0] for r in self.db.execute("SELECT content_hash FROM embeddings WHERE model_id = ?", (model_id,))}

    def embedded_sizes(self, model_id: int) -> set[int]:
        """Sizes of files whose content already has a vector: only new files of these sizes are worth hashing."""
        rows = self.db.execute(
            "SELECT DISTINCT i.size FROM images i JOIN embeddings e "
            "ON e.content_hash = i.content_hash AND e.model_id = ? WHERE i.size IS NOT NULL",
            (model_id,),
        )
        return {r[0] for r in rows}

    def dims_for_hash(self, content_hash: bytes) -> tuple[int | None, int | None]:
        r = self.db.execute(
            "SELECT width, height FROM images WHERE content_hash = ? AND width IS NOT NULL LIMIT 1", (content_hash,)
        ).fetchone()
        return (r[0], r[1]) if r else (None, None)

    @staticmethod
    def _upsert_images(db: sqlite3.Connection, records: Iterable[ImageRecord], now: float) -> None:
        db.executemany(
            "INSERT INTO images (path, size, mtime_ns, content_hash, width, height, status, error, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (path) DO UPDATE SET size = excluded.size, "
            "mtime_ns = excluded.mtime_ns, content_hash = excluded.content_hash, width = excluded.width, "
            "height = excluded.height, status = excluded.status, error = excluded.error, "
            "updated_at = excluded.updated_at",
            [
                (fs_bytes(r.path), r.size, r.mtime_ns, r.content_hash, r.width, r.height,
                 "error" if r.error else "ok", r.error, now)
                for r in records
            ],
        )

    def record(
        self,
        records: Sequence[ImageRecord],
        *,
        model_id: int | None = None,
        vectors: NDArray[np.float32] | None = None,
        precision: str = "fp32",
        runtime: str = "torch",
        decode: str = "full",
    ) -> None:
        """Write image rows and (for the ok ones, in order) their vectors in ONE transaction.

        ``vectors``: float32 (n_ok, dim), computed by the image tower at ``precision`` on ``runtime`` from images
        decoded as ``decode`` (``data.images`` decode modes), all recorded with each vector. A run killed at any point
        leaves either all of a batch or none of it, so a re-run neither loses nor duplicates anything. With
        ``model_id``, the records (embedded or failed) are done for that model's recompute under way, if any
        (``catalog.recompute``), in the same transaction.
        """
        now = time.time()
        ok = [r for r in records if r.error is None]
        with self.transaction() as db:
            if vectors is not None and len(ok):
                if model_id is None or vectors.shape[0] != len(ok):
                    raise ValueError("vectors must match the ok records one to one, with a model id")
                self._upsert_vectors(db, model_id, [r.content_hash for r in ok], vectors, precision, runtime, decode,
                                     now)
            self._upsert_images(db, records, now)
            self._upsert_texts(db, records, now)
            if model_id is not None:
                self.mark_recomputed(db, model_id, paths=[fs_bytes(r.path) for r in records])

    @staticmethod
    def _upsert_texts(db: sqlite3.Connection, records: Sequence[ImageRecord], now: float) -> None:
        """The metadata and OCR text carried by ``records``, and their text-index rows (names included)."""
        ids = ids_for_paths(db, [fs_bytes(r.path) for r in records])
        upsert_photo_metadata(db, [(ids[fs_bytes(r.path)], r.metadata) for r in records
                                   if r.metadata is not None and r.error is None], now)
        ocr = [(r.content_hash, r.ocr) for r in records if r.ocr is not None and r.content_hash is not None]
        upsert_ocr(db, ocr, now)
        touched = set(ids.values())
        # a moved or renamed file keeps its tags and description (they belong to the file, its row is new)
        touched.update(MetadataMixin._adopt_annotations(db, [ids[fs_bytes(r.path)] for r in records
                                                             if r.error is None and r.content_hash is not None]))
        if ocr:  # other copies of the same content get the text too
            touched.update(MetadataMixin._ids_with_hashes(db, [h for h, _ in ocr]))
        rebuild_text_index(db, touched)

    def upsert_vectors(self, model_id: int, hashes: Sequence[bytes | None], vectors: NDArray[np.float32], *,
                       precision: str = "fp32", runtime: str = "torch", decode: str = "full") -> None:
        """Write ``vectors`` ((n, dim) float32, row i for ``hashes[i]``) of ``model_id`` in one transaction, with how
        the image tower computed them and how their images were decoded; a vector already stored for a (hash, model)
        is replaced, so writing a batch twice changes nothing. Image rows are not touched (re-embedding jobs); the
        files holding these bytes are done for the model's recompute under way, if any. ``ValueError`` if counts
        differ."""
        if vectors.shape[0] != len(hashes):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(hashes)} content hashes")
        with self.transaction() as db:
            self._upsert_vectors(db, model_id, hashes, vectors, precision, runtime, decode, time.time())

    @staticmethod
    def _upsert_vectors(db: sqlite3.Connection, model_id: int, hashes: Sequence[bytes | None],
                        vectors: NDArray[np.float32], precision: str, runtime: str, decode: str, now: float) -> None:
        from img_search.data.images import decode_factor

        decode_factor(decode)  # InvalidInputError for a name that is not a decode mode
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        db.executemany(
            "INSERT INTO embeddings (content_hash, model_id, vector, dtype, precision, runtime, decode, created_at) "
            "VALUES (?, ?, ?, 'float32', ?, ?, ?, ?) ON CONFLICT (content_hash, model_id) DO UPDATE SET "
            "vector = excluded.vector, precision = excluded.precision, runtime = excluded.runtime, "
            "decode = excluded.decode, created_at = excluded.created_at",
            [(h, model_id, vecs[i].tobytes(), precision, runtime, decode, now) for i, h in enumerate(hashes)],
        )
        RecomputeMixin.mark_recomputed(db, model_id, hashes=hashes)

    def mark_deleted(self, paths: Iterable[str]) -> int:
        """Mark the images at ``paths`` deleted (their vectors stay, keyed by content); live copies of the same bytes
        recorded earlier in the run (a move or rename) adopt their tags and description. Returns how many."""
        rows = [(time.time(), fs_bytes(p)) for p in paths]
        with self.transaction() as db:
            db.executemany("UPDATE images SET status = 'deleted', error = NULL, updated_at = ? WHERE path = ?", rows)
            gone = list(ids_for_paths(db, [p for _, p in rows]).values())
            hashes: set[bytes] = set()
            for start in range(0, len(gone), 500):
                chunk = gone[start : start + 500]
                hashes.update(h for (h,) in db.execute(
                    f"SELECT content_hash FROM images WHERE id IN ({','.join('?' * len(chunk))}) "
                    "AND content_hash IS NOT NULL", chunk))
            adopted = MetadataMixin._adopt_annotations(db, MetadataMixin._ids_with_hashes(db, sorted(hashes)))
            rebuild_text_index(db, set(gone) | adopted)
        return len(rows)

    # -- vectors --------------------------------------------------------------------------------
    def load_vectors(self, model_id: int, dim: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Every live image's vector for a model: (image ids, (n, dim) float32), in image-id order."""
        rows = self.db.execute(
            "SELECT i.id, e.vector FROM images i JOIN embeddings e "
            "ON e.content_hash = i.content_hash AND e.model_id = ? WHERE i.status = 'ok' ORDER BY i.id",
            (model_id,),
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        blob = b"".join(r[1] for r in rows)
        if not rows:
            return ids, np.empty((0, dim), np.float32)
        return ids, np.frombuffer(blob, dtype=np.float32).reshape(len(rows), dim)

    def live_entries(self, model_id: int) -> tuple[NDArray[np.int64], NDArray[np.bytes_]]:
        """(image id, content hash) of every live image with a vector for the model, in id order."""
        rows = self.db.execute(
            "SELECT i.id, i.content_hash FROM images i JOIN embeddings e "
            "ON e.content_hash = i.content_hash AND e.model_id = ? WHERE i.status = 'ok' ORDER BY i.id",
            (model_id,),
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        hashes = np.array([r[1] for r in rows], dtype=f"S{HASH_BYTES}") if rows else np.empty(0, f"S{HASH_BYTES}")
        return ids, hashes

    def vectors_for_ids(self, model_id: int, dim: int, ids: Iterable[int]) -> NDArray[np.float32]:
        """Vectors of the given image ids, in the given order.

        CROSS JOIN fixes SQLite's join order (https://www.sqlite.org/optoverview.html#crossjoin): images by id first,
        then each vector by its primary key. Left to itself the planner drives from the model's index and scans every
        vector of the model once per chunk (minutes instead of milliseconds at 100k images)."""
        id_list = [int(i) for i in ids]
        found: dict[int, bytes] = {}
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT i.id, e.vector FROM images i CROSS JOIN embeddings e ON e.content_hash = i.content_hash "
                f"AND e.model_id = ? WHERE i.id IN ({marks})",
                [model_id, *chunk],
            )
            found.update(rows)
        missing = [i for i in id_list if i not in found]
        if missing:
            raise CatalogError(f"{len(missing)} images lost their vectors while being read (e.g. id {missing[0]})")
        if not id_list:
            return np.empty((0, dim), np.float32)
        return np.frombuffer(b"".join(found[i] for i in id_list), dtype=np.float32).reshape(len(id_list), dim)

    def live_vectors(self, model_id: int, dim: int, ids: Sequence[int]
                     ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """(ids, (n, dim) float32 vectors) of those of ``ids`` that are live and have a vector, in the given order
        (an image removed or re-embedded away meanwhile is left out, not an error: filtered search)."""
        found: dict[int, bytes] = {}
        id_list = [int(i) for i in ids]
        for start in range(0, len(id_list), 500):
            chunk = id_list[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(
                f"SELECT i.id, e.vector FROM images i CROSS JOIN embeddings e ON e.content_hash = i.content_hash "
                f"AND e.model_id = ? WHERE i.status = 'ok' AND i.id IN ({marks})", [model_id, *chunk]))
        kept = [i for i in id_list if i in found]
        vectors = np.frombuffer(b"".join(found[i] for i in kept), np.float32).reshape(len(kept), dim)
        return np.asarray(kept, np.int64), vectors

    def vector_for(self, model_id: int, content_hash: bytes) -> NDArray[np.float32] | None:
        r = self.db.execute(
            "SELECT vector FROM embeddings WHERE model_id = ? AND content_hash = ?", (model_id, content_hash)
        ).fetchone()
        return np.frombuffer(r[0], dtype=np.float32).copy() if r else None

    # -- runs and stats -------------------------------------------------------------------------
    def start_run(self, model_id: int | None) -> int:
        """Record a new run as 'running' and return its id. Call it under the writer lock (``catalog/lock.py``).

        Every other run still 'running' then belongs to a writer that is gone (killed: SIGKILL, OOM, power loss)
        without reaching ``finish_run``; in the same transaction each is marked 'interrupted', ``finished_at`` the
        time this run noticed it (unix seconds; when that writer died is not known), so ``info`` does not report it
        running forever.
        """
        now = time.time()
        with self.transaction() as db:
            stale = db.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ? WHERE status = 'running'", (now,)
            ).rowcount
            cur = db.execute(
                "INSERT INTO runs (model_id, started_at, status) VALUES (?, ?, 'running')", (model_id, now)
            )
            run_id = int(cur.lastrowid or 0)
        if stale:
            logger.warning("%s of %s never finished (the process was killed); marked interrupted",
                           count(stale, "earlier run"), self.path)
        return run_id

    def finish_run(self, run_id: int, *, status: str, stats: dict[str, Any], model_id: int | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, stats = ?, model_id = COALESCE(?, model_id) WHERE id = ?",
                (time.time(), status, json.dumps(stats), model_id, run_id),
            )

    def last_run(self) -> dict[str, Any] | None:
        r = self.db.execute(
            "SELECT id, model_id, started_at, finished_at, status, stats FROM runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if not r:
            return None
        return {"id": r[0], "model_id": r[1], "started_at": r[2], "finished_at": r[3], "status": r[4],
                "stats": json.loads(r[5]) if r[5] else None}

    def status_counts(self) -> dict[str, int]:
        return {s: n for s, n in self.db.execute("SELECT status, COUNT(*) FROM images GROUP BY status")}

    def embedding_counts(self) -> dict[int, int]:
        """Live images with a vector, per model id."""
        rows = self.db.execute(
            "SELECT e.model_id, COUNT(*) FROM images i JOIN embeddings e ON e.content_hash = i.content_hash "
            "WHERE i.status = 'ok' GROUP BY e.model_id"
        )
        return {m: n for m, n in rows}

    # -- precisions (schema v2) ------------------------------------------------------------------
    def precision_counts(self, model_id: int) -> list[tuple[str, str, int]]:
        """(precision, runtime, live images) of a model's vectors; a v1 catalog holds only fp32 torch vectors."""
        if self.schema_version < 2:
            n = self.embedding_counts().get(model_id, 0)
            return [("fp32", "torch", n)] if n else []
        rows = self.db.execute(
            "SELECT e.precision, e.runtime, COUNT(*) FROM images i JOIN embeddings e ON e.content_hash = "
            "i.content_hash AND e.model_id = ? WHERE i.status = 'ok' GROUP BY e.precision, e.runtime "
            "ORDER BY COUNT(*) DESC", (model_id,))
        return [(str(p), str(r), int(n)) for p, r, n in rows]

    def decode_counts(self, model_id: int) -> dict[str, int]:
        """Live images per decode mode of a model's vectors (``{"full": n, "reduced-1x": m}``, largest first; empty
        when it has none). Catalogs before schema v4 hold only full decodes."""
        if self.schema_version < 4:
            n = self.embedding_counts().get(model_id, 0)
            return {"full": n} if n else {}
        rows = self.db.execute(
            "SELECT e.decode, COUNT(*) FROM images i JOIN embeddings e ON e.content_hash = i.content_hash AND "
            "e.model_id = ? WHERE i.status = 'ok' GROUP BY e.decode ORDER BY COUNT(*) DESC, e.decode", (model_id,))
        return {str(mode): int(n) for mode, n in rows}

    def record_parity(self, model_id: int, *, tower: str, precision: str, runtime: str, min_cosine: float,
                      threshold: float, passed: bool) -> None:
        """Record (or replace) the parity check of ``precision`` on ``runtime`` for a model's ``tower``."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO parity_checks (model_id, tower, precision, runtime, min_cosine, threshold, passed, "
                "checked_at) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (model_id, tower, precision, runtime) DO UPDATE "
                "SET min_cosine = excluded.min_cosine, threshold = excluded.threshold, passed = excluded.passed, "
                "checked_at = excluded.checked_at",
                (model_id, tower, precision, runtime, float(min_cosine), float(threshold), int(passed), time.time()),
            )

    def parity_checks(self, model_id: int) -> list[dict[str, Any]]:
        """Every recorded parity check of a model (none in a v1 catalog)."""
        if self.schema_version < 2:
            return []
        rows = self.db.execute(
            "SELECT tower, precision, runtime, min_cosine, threshold, passed, checked_at FROM parity_checks "
            "WHERE model_id = ? ORDER BY tower, precision, runtime", (model_id,))
        return [{"tower": t, "precision": p, "runtime": r, "min_cosine": c, "threshold": th, "passed": bool(ok),
                 "checked_at": at} for t, p, r, c, th, ok, at in rows]

    def failed_precisions(self, model_id: int, tower: str = "image") -> set[tuple[str, str]]:
        """(precision, runtime) pairs whose parity check failed for the tower: never mixed into the collection."""
        return {(c["precision"], c["runtime"]) for c in self.parity_checks(model_id)
                if c["tower"] == tower and not c["passed"]}

    def failures(self, limit: int | None = None) -> list[ImageRow]:
        sql = f"SELECT {_IMAGE_COLS} FROM images WHERE status = 'error' ORDER BY path"
        params: tuple[int, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [_image_row(r) for r in self.db.execute(sql, params)]
