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


def _v3(db: sqlite3.Connection) -> None:
    """Issue 9: photo metadata, user tags and descriptions, text read from the images (OCR) and one full-text
    index over all of them (SQLite FTS5, ranked by BM25). Nothing is re-embedded: the text index is filled here with
    the file and folder names of the images already catalogued; the next `index` run back-fills photo metadata from
    the file headers."""
    _run(
        db,
        """
        CREATE TABLE photo_metadata (
            image_id INTEGER PRIMARY KEY REFERENCES images (id),
            taken_at TEXT,                      -- local capture time 'YYYY-MM-DDTHH:MM:SS' (EXIF DateTimeOriginal)
            utc_offset_minutes INTEGER,         -- EXIF OffsetTimeOriginal, NULL when the file does not say
            camera_make TEXT,
            camera_model TEXT,
            lens TEXT,
            latitude REAL,                      -- decimal degrees (WGS 84), south negative
            longitude REAL,                     -- decimal degrees, west negative
            altitude REAL,                      -- metres above sea level
            orientation INTEGER,                -- EXIF Orientation 1..8
            rating INTEGER,                     -- XMP xmp:Rating (-1 rejected, 0..5)
            description TEXT,                   -- XMP dc:description / EXIF ImageDescription
            keywords TEXT,                      -- JSON list: XMP dc:subject, IPTC keywords, sidecar keywords
            colors TEXT,                        -- dominant colour names, most covered first, space-separated
            season TEXT,                        -- spring | summer | autumn | winter (date + hemisphere)
            sidecar_mtime_ns INTEGER,           -- the XMP sidecar read (re-read when it changes), NULL: none
            extracted_at REAL NOT NULL
        );
        CREATE INDEX photo_metadata_taken_at ON photo_metadata (taken_at);
        CREATE TABLE tags (
            image_id INTEGER NOT NULL REFERENCES images (id),
            tag TEXT NOT NULL,
            source TEXT NOT NULL,               -- user (img-search tag) | import (img-search import-metadata)
            added_at REAL NOT NULL,
            PRIMARY KEY (image_id, tag)
        ) WITHOUT ROWID;
        CREATE INDEX tags_tag ON tags (tag);
        CREATE TABLE annotations (
            image_id INTEGER PRIMARY KEY REFERENCES images (id),
            description TEXT,                   -- the user's own description (tag --description, import-metadata)
            updated_at REAL NOT NULL
        );
        CREATE TABLE ocr_text (
            content_hash BLOB PRIMARY KEY,      -- like vectors, text belongs to content: copies share it
            text TEXT NOT NULL,                 -- lines read, in reading order, newline-separated ('' = none found)
            confidence REAL,                    -- mean recognition confidence of the lines, 0..1, NULL when none
            engine TEXT NOT NULL,               -- e.g. rapidocr-onnxruntime 1.4.4
            created_at REAL NOT NULL
        ) WITHOUT ROWID;
        CREATE VIRTUAL TABLE text_index USING fts5(
            name, folder, tags, description, keywords, ocr, tokenize = 'unicode61 remove_diacritics 2'
        )
        """,
    )
    # fill the text index with what a v2 catalog already knows: file and folder names (rowid = images.id)
    from img_search.catalog.text_index import rebuild_text_index

    rebuild_text_index(db)


def _v4(db: sqlite3.Connection) -> None:
    """Issue 8: how each vector's image was decoded (``data.images`` "decode modes": ``full``, or a JPEG at a reduced
    libjpeg scale, ``reduced-<k>x``), written in the same transaction as the vector. Nothing is re-embedded: every
    vector before this version was computed from a full decode. Development catalogs that kept the mode in a side
    table (``embedding_decode``) have it carried over."""
    _run(db, "ALTER TABLE embeddings ADD COLUMN decode TEXT NOT NULL DEFAULT 'full'")  # full | reduced-<k>x
    side = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'embedding_decode'").fetchone()
    if side is not None:
        db.execute("UPDATE embeddings SET decode = d.mode FROM embedding_decode d WHERE d.content_hash = "
                   "embeddings.content_hash AND d.model_id = embeddings.model_id")
        db.execute("DROP TABLE embedding_decode")


def _v5(db: sqlite3.Connection) -> None:
    """A resumable ``index --recompute`` (``catalog.recompute``): the recompute of a model that is under way (the
    decode mode it embeds with) and the catalogued files it covers, each marked done in the transaction that commits
    its new vector (or its failure). Nothing is re-embedded: no recompute is under way in an older catalog."""
    _run(
        db,
        """
        CREATE TABLE recomputes (
            model_id INTEGER PRIMARY KEY REFERENCES models (id),
            decode TEXT NOT NULL,               -- decode mode of the vectors it writes: full | reduced-<k>x
            started_at REAL NOT NULL            -- unix seconds
        );
        CREATE TABLE recompute_files (
            model_id INTEGER NOT NULL REFERENCES recomputes (model_id),
            image_id INTEGER NOT NULL REFERENCES images (id),
            done INTEGER NOT NULL DEFAULT 0,    -- 1: re-embedded (or failed) since the recompute started
            PRIMARY KEY (model_id, image_id)
        ) WITHOUT ROWID
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2, _v3, _v4, _v5]
SCHEMA_VERSION = len(MIGRATIONS)
# schema versions a read-only open reads as they are (readers never migrate); add a version here only when every
# reader query works on it (catalog.Catalog answers the v2 questions of a v1 catalog: everything fp32 on torch, and
# the v3 ones of an older catalog: no photo metadata, tags or text, searched by vectors alone; and the v4 one:
# every vector of an older catalog was decoded in full; v5 only adds the writers' recompute bookkeeping)
READABLE_VERSIONS = frozenset({1, 2, 3, 4, 5})
