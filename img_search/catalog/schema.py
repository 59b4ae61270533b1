"""Catalog schema: an ordered migration ladder keyed by SQLite's ``PRAGMA user_version``.

``MIGRATIONS[i]`` takes a catalog from version ``i`` to ``i + 1``. Add a function at the end to change
the schema; never edit a released one. A catalog newer than this code is refused, not guessed at.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable


def _run(db: sqlite3.Connection, script: str) -> None:
    # statement by statement: executescript() would COMMIT the migration's surrounding transaction
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _v1(db: sqlite3.Connection) -> None:
    _run(
        db,
        """
        CREATE TABLE models (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,          -- Hub id or absolute local path
            family TEXT,
            dim INTEGER,
            logit_scale REAL,
            logit_bias REAL,                    -- NULL where the model has no learned bias (CLIP)
            created_at REAL NOT NULL
        );
        CREATE TABLE roots (
            id INTEGER PRIMARY KEY,
            path BLOB NOT NULL UNIQUE,          -- os.fsencode(absolute path)
            added_at REAL NOT NULL,
            last_indexed_at REAL
        );
        CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            path BLOB NOT NULL UNIQUE,          -- bytes, so non-UTF-8 names round-trip
            size INTEGER,
            mtime_ns INTEGER,
            content_hash BLOB,
            width INTEGER,
            height INTEGER,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error', 'deleted')),
            error TEXT,
            updated_at REAL NOT NULL
        );
        CREATE INDEX images_content_hash ON images (content_hash);
        CREATE INDEX images_size ON images (size);
        CREATE TABLE embeddings (
            content_hash BLOB NOT NULL,         -- vectors belong to content, so moved/copied files share one
            model_id INTEGER NOT NULL REFERENCES models (id),
            vector BLOB NOT NULL,
            dtype TEXT NOT NULL DEFAULT 'float32',
            created_at REAL NOT NULL,
            PRIMARY KEY (content_hash, model_id)
        ) WITHOUT ROWID;
        CREATE INDEX embeddings_model ON embeddings (model_id);
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            model_id INTEGER REFERENCES models (id),
            started_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL,               -- running | finished | interrupted | failed
            stats TEXT                          -- JSON summary
        );
        """
    )


def _v2(db: sqlite3.Connection) -> None:
    """Issue 8: how each vector was computed, and the parity checks of each precision (nothing is re-embedded:
    existing vectors were computed in float32 by torch, the only way before)."""
    _run(
        db,
        """
        ALTER TABLE embeddings ADD COLUMN precision TEXT NOT NULL DEFAULT 'fp32';   -- fp32 | bf16 | fp16 | int8
        ALTER TABLE embeddings ADD COLUMN runtime TEXT NOT NULL DEFAULT 'torch';    -- torch | onnxruntime | openvino
        CREATE TABLE parity_checks (
            model_id INTEGER NOT NULL REFERENCES models (id),
            tower TEXT NOT NULL,                -- image | text
            precision TEXT NOT NULL,
            runtime TEXT NOT NULL,
            min_cosine REAL NOT NULL,           -- lowest cosine to float32 torch over the fixed probe set
            threshold REAL NOT NULL,
            passed INTEGER NOT NULL,
            checked_at REAL NOT NULL,
            PRIMARY KEY (model_id, tower, precision, runtime)
        )
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)
# schema versions a read-only open reads as they are (readers never migrate); add a version here only when every
# reader query works on it (catalog.Catalog answers the v2 questions of a v1 catalog: everything fp32 on torch)
READABLE_VERSIONS = frozenset({1, 2})
