"""How each vector's image was decoded: in full, or at a reduced JPEG scale (``data.images``, "decode modes").

Reduced-scale decoding changes a vector slightly (docs/PERFORMANCE.md, "Reduced-scale JPEG decoding"), so the mode is
recorded per (content hash, model) like the precision and runtime are, in the table ``embedding_decode``. A vector
without a row was decoded in full: that is how every vector was computed before the table existed, so catalogs of
any schema version read correctly without a migration, and readers (read-only, never writing) see "full" for all of
a catalog that has no such table yet. The table is created by the first writer that records a mode.

``index`` decodes new photos as the collection already holds them (``pipeline.runner``): one collection never mixes
modes unless ``--recompute`` switches it, and ``img-search info`` shows the counts per mode. Image queries that must
be embedded (``similar`` on a file that is not indexed, uploads) decode as the collection's majority mode
(``collection_decode``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from img_search.data.images import DECODE_FULL, decode_factor

TABLE = "embedding_decode"
_DDL = (f"CREATE TABLE IF NOT EXISTS {TABLE} (content_hash BLOB NOT NULL, model_id INTEGER NOT NULL, "
        "mode TEXT NOT NULL, PRIMARY KEY (content_hash, model_id)) WITHOUT ROWID")


def _has_table(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone() is not None


def record_decode(catalog: Any, model_id: int, hashes: Sequence[bytes | None], mode: str) -> None:
    """Record that the vectors of ``model_id`` for ``hashes`` are (about to be) computed from images decoded as
    ``mode`` (``"full"`` or ``"reduced-<k>x"``), in one transaction of ``catalog`` (a writable ``Catalog``).

    The pipeline records a batch's mode before the catalog writer commits the batch's vectors: a run killed in
    between leaves a row for a vector not written yet, which the next run writes with the same mode.
    Raises InvalidInputError for an unknown mode.
    """
    decode_factor(mode)
    rows = [(h, model_id, mode) for h in hashes if h is not None]
    if not rows:
        return
    with catalog.transaction() as db:
        db.execute(_DDL)
        db.executemany(f"INSERT INTO {TABLE} (content_hash, model_id, mode) VALUES (?, ?, ?) ON CONFLICT "
                       "(content_hash, model_id) DO UPDATE SET mode = excluded.mode", rows)


def decode_counts(catalog: Any, model_id: int) -> dict[str, int]:
    """Live images per decode mode of ``model_id``'s vectors (``{"full": n, "reduced-1x": m}``, largest first;
    empty when the model has no vector). Works on read-only catalogs and on catalogs without the table."""
    db: sqlite3.Connection = catalog.db
    if not _has_table(db):
        rows = db.execute("SELECT COUNT(*) FROM images i JOIN embeddings e ON e.content_hash = i.content_hash AND "
                          "e.model_id = ? WHERE i.status = 'ok'", (model_id,)).fetchall()
        n = int(rows[0][0]) if rows else 0
        return {DECODE_FULL: n} if n else {}
    rows = db.execute(
        f"SELECT COALESCE(d.mode, ?), COUNT(*) FROM images i JOIN embeddings e ON e.content_hash = i.content_hash "
        f"AND e.model_id = ? LEFT JOIN {TABLE} d ON d.content_hash = e.content_hash AND d.model_id = e.model_id "
        "WHERE i.status = 'ok' GROUP BY 1 ORDER BY 2 DESC, 1", (DECODE_FULL, model_id)).fetchall()
    return {str(mode): int(n) for mode, n in rows}


def collection_decode(catalog: Any, model_id: int) -> str | None:
    """The decode mode most of ``model_id``'s live vectors were computed with (None: no vector yet)."""
    counts = decode_counts(catalog, model_id)
    return next(iter(counts), None)
