"""The crossfilter embedding database: schema, vector serialisation, reads and writes (plain ``sqlite3``).

Tables, for one embedding type ``T`` (e.g. ``SIGLIP2``)::

    T_EMBEDDINGS(UUID TEXT PRIMARY KEY, EMBEDDING BLOB)             seed 004
    T_UMAP_MODEL(MODEL BLOB)                                        seed 004: one row, the pickled umap.UMAP
    T_UMAP_PROJECTIONS(UUID TEXT PRIMARY KEY, LATITUDE REAL,        ours: the seed names no table for the
                       LONGITUDE REAL)                              coordinates; degrees, see explore.sphere

``EMBEDDING`` is a MessagePack array of the vector's components as 32-bit floats: ``msgpack.packb(vector.tolist(),
use_single_float=True)`` for a float32 vector of the model's dimension (768 for SIGLIP2), L2-normalised. Any
MessagePack reader decodes it to a list of floats equal to the float32 values (``np.asarray(msgpack.unpackb(blob),
np.float32)`` gives the vector back bit for bit): 5 bytes per component plus a 3-byte header. ``unpack_vector``
also reads the ``msgpack_numpy`` encoding crossfilter's own writer uses (a map with ``nd``, ``type``, ``shape``,
``data``), so databases crossfilter wrote can be read too.

Writes go through one connection per writer; ``EmbeddingsWriter`` is the pipeline sink: a background thread commits
each batch in one transaction (``INSERT ... ON CONFLICT(UUID) DO UPDATE``), so a killed run keeps every batch it
committed and a re-run skips them.
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.crossfilter.types import is_table_prefix
from img_search.errors import InvalidInputError
from img_search.optional import require
from img_search.pipeline.reader import ReadBatch
from img_search.pipeline.writer import BackgroundWriter

logger = logging.getLogger(__name__)


def _msgpack() -> Any:
    """The ``msgpack`` module; ``UnavailableError`` naming the ``explore`` extra without it."""
    return require("msgpack", extra="explore", needed_for="the crossfilter database")


def require_msgpack() -> None:
    """``UnavailableError`` naming the ``explore`` extra when msgpack (the vectors' encoding) is not installed."""
    _msgpack()


def pack_vector(vector: NDArray[np.floating]) -> bytes:
    """One vector -> the ``EMBEDDING`` blob: a MessagePack array of float32 values (see the module docstring)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    return bytes(_msgpack().packb(v.tolist(), use_single_float=True))


def unpack_vector(blob: bytes) -> NDArray[np.float32]:
    """An ``EMBEDDING`` blob -> float32 (dim,): our list-of-floats encoding or crossfilter's ``msgpack_numpy`` one.

    Raises ``InvalidInputError`` for anything else."""
    obj = _msgpack().unpackb(blob, raw=False, strict_map_key=False)
    if isinstance(obj, list):
        return np.asarray(obj, dtype=np.float32)
    if isinstance(obj, dict):
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}  # bytes or str keys
        data, dtype = fields.get("data"), fields.get("type")
        if fields.get("nd") and isinstance(data, bytes) and dtype is not None:
            dtype = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
            return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(fields.get("shape") or -1).astype(np.float32)
    raise InvalidInputError(f"not a msgpack-serialised vector ({type(obj).__name__})")


class Tables:
    """The table names of one embedding type."""

    def __init__(self, embedding_type: str) -> None:
        if not is_table_prefix(embedding_type):
            raise InvalidInputError(f"embedding type {embedding_type!r} cannot name a table (A-Z, 0-9, _)")
        self.type = embedding_type
        self.embeddings = f"{embedding_type}_EMBEDDINGS"
        self.umap_model = f"{embedding_type}_UMAP_MODEL"
        self.projections = f"{embedding_type}_UMAP_PROJECTIONS"

    def create(self, db: sqlite3.Connection) -> None:
        with db:
            db.execute(f'CREATE TABLE IF NOT EXISTS "{self.embeddings}" (UUID TEXT PRIMARY KEY, EMBEDDING BLOB)')
            db.execute(f'CREATE TABLE IF NOT EXISTS "{self.umap_model}" (MODEL BLOB)')
            db.execute(f'CREATE TABLE IF NOT EXISTS "{self.projections}" '
                       "(UUID TEXT PRIMARY KEY, LATITUDE REAL, LONGITUDE REAL)")


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the database file; WAL so a reader (crossfilter's server) never blocks the writer."""
    db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def existing_uuids(db: sqlite3.Connection, tables: Tables) -> set[str]:
    return {r[0] for r in db.execute(f'SELECT UUID FROM "{tables.embeddings}"')}


def write_embeddings(db: sqlite3.Connection, tables: Tables, uuids: Sequence[str],
                     vectors: NDArray[np.float32]) -> None:
    """Upsert one batch in one transaction."""
    rows = [(u, pack_vector(v)) for u, v in zip(uuids, vectors, strict=True)]
    with db:
        db.executemany(f'INSERT INTO "{tables.embeddings}" (UUID, EMBEDDING) VALUES (?, ?) '
                       "ON CONFLICT(UUID) DO UPDATE SET EMBEDDING = excluded.EMBEDDING", rows)


def read_embeddings(db: sqlite3.Connection, tables: Tables) -> tuple[list[str], NDArray[np.float32]]:
    """Every stored vector: (UUIDs in ascending order, float32 (n, dim))."""
    uuids: list[str] = []
    vectors: list[NDArray[np.float32]] = []
    for u, blob in db.execute(f'SELECT UUID, EMBEDDING FROM "{tables.embeddings}" ORDER BY UUID'):
        uuids.append(u)
        vectors.append(unpack_vector(blob))
    if not vectors:
        return uuids, np.empty((0, 0), np.float32)
    return uuids, np.stack(vectors).astype(np.float32)


def write_projection(db: sqlite3.Connection, tables: Tables, model: Any, uuids: Sequence[str],
                     latitude: Iterable[float], longitude: Iterable[float]) -> None:
    """Replace the stored UMAP model (one row, pickled) and every projection, in one transaction."""
    blob = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    rows = [(u, float(la), float(lo)) for u, la, lo in zip(uuids, latitude, longitude, strict=True)]
    with db:
        db.execute(f'DELETE FROM "{tables.umap_model}"')
        db.execute(f'INSERT INTO "{tables.umap_model}" (MODEL) VALUES (?)', (blob,))
        db.execute(f'DELETE FROM "{tables.projections}"')
        db.executemany(f'INSERT INTO "{tables.projections}" (UUID, LATITUDE, LONGITUDE) VALUES (?, ?, ?)', rows)


def projected_uuids(db: sqlite3.Connection, tables: Tables) -> set[str]:
    return {r[0] for r in db.execute(f'SELECT UUID FROM "{tables.projections}"')}


def has_model(db: sqlite3.Connection, tables: Tables) -> bool:
    return db.execute(f'SELECT COUNT(*) FROM "{tables.umap_model}"').fetchone()[0] > 0


class EmbeddingsWriter:
    """Pipeline sink (``pipeline.loop.Sink``): a ``BackgroundWriter`` thread commits each batch's vectors, one
    transaction per batch.

    Sources are ``compute.UuidImage``; failures are not written (``run_loop`` reports them). An error in the thread
    is re-raised at the next ``put`` or at ``close``."""

    def __init__(self, path: Path, tables: Tables) -> None:
        self.path, self.tables = path, tables
        self.written = 0
        self._writer: BackgroundWriter[sqlite3.Connection, tuple[list[str], NDArray[np.float32]]] = (
            BackgroundWriter(lambda: connect(path), self._commit, sqlite3.Connection.close, name="crossfilter-writer"))

    def _commit(self, db: sqlite3.Connection, item: tuple[list[str], NDArray[np.float32]]) -> None:
        uuids, vectors = item
        write_embeddings(db, self.tables, uuids, vectors)
        self.written += len(uuids)

    def put(self, batch: ReadBatch[Any], vectors: NDArray[np.float32] | None) -> None:
        """Sink protocol: the vectors of a batch's ok images, keyed by their UUIDs."""
        self._writer.check()
        if vectors is None or not batch.ok:
            return
        self._writer.submit(([i.source.uuid for i in batch.ok], vectors))

    def close(self) -> None:
        """Wait until everything queued is committed."""
        self._writer.close()
