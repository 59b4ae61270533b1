"""A resumable ``index --recompute``: what an unfinished recompute has left to re-embed (schema v5).

``index FOLDERS --recompute`` re-embeds every file under FOLDERS, changed or not. When it starts, the catalog records
the recompute of that model (``recomputes``: the decode mode its vectors are computed from, when it started) and one
row per catalogued file under FOLDERS (``recompute_files``). A file is *done* once a new vector of its bytes is
committed for the model, by any writer (``mark_recomputed`` runs inside the transaction that writes the vectors, so
a batch and its bookkeeping commit together or not at all), or once a run records it as failed; a file written while
the recompute is under way (new since it started) joins it as done. A run that walked a folder to its end marks the
rest of that folder done (files gone, or refused at the scan: ``finish_recompute``).
The files not done are the recompute's work left: their vectors are the old ones, so they are embedded again and
their content is never reused for a moved or copied file. When no file is left, the recompute is dropped.

Concurrency: only ``index`` starts, extends and finishes a recompute, under the catalog's writer lock
(``catalog.lock``). Writers that do not take the lock (re-embedding jobs, which write vectors keyed by content) only
ever mark files done, inside their own vector transaction, so a plan that read the files left a moment earlier at
worst embeds a file once more; nothing is lost. Readers never look at these tables.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

RECOMPUTE_VERSION = 5  # the schema version that holds these tables
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class RecomputeState:
    """The recompute of one model under way: the decode mode it embeds with (``data.images`` decode modes), when it
    started (unix seconds), the catalogued files it covers that still exist (``files``: not marked deleted) and how
    many of those have not been re-embedded yet (``left``)."""

    model_id: int
    decode: str
    started_at: float
    files: int
    left: int


@dataclass(frozen=True, slots=True)
class RecomputeLeft:
    """The files a recompute has not re-embedded yet: their image ids (deleted ones included, should they come back
    untouched) and the content hashes of the existing ones, whose stored vectors are therefore stale."""

    image_ids: frozenset[int] = frozenset()
    hashes: frozenset[bytes] = frozenset()


def _prefix(folder: str) -> tuple[bytes, bytes]:
    from img_search.catalog.catalog import prefix_bounds

    return prefix_bounds(folder)


class RecomputeMixin:
    """Schema v5 queries and writes of ``Catalog`` (see the module docstring)."""

    db: sqlite3.Connection

    if TYPE_CHECKING:  # provided by Catalog

        @property
        def schema_version(self) -> int: ...

        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def recompute_state(self, model_id: int | None) -> RecomputeState | None:
        """The model's recompute under way, or None (none, no model yet, or a catalog older than schema v5)."""
        if model_id is None or self.schema_version < RECOMPUTE_VERSION:
            return None
        row = self.db.execute("SELECT decode, started_at FROM recomputes WHERE model_id = ?", (model_id,)).fetchone()
        if row is None:
            return None
        files, left = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(f.done = 0), 0) FROM recompute_files f JOIN images i ON i.id = f.image_id "
            "WHERE f.model_id = ? AND i.status != 'deleted'", (model_id,)).fetchone()
        return RecomputeState(model_id, str(row[0]), float(row[1]), int(files), int(left))

    def start_recompute(self, model_id: int, folders: Sequence[str], *, decode: str) -> RecomputeState:
        """Start a recompute of ``model_id`` covering every catalogued file under ``folders``, embedding with
        ``decode`` (InvalidInputError for a name that is not a decode mode). Replaces the model's earlier recompute,
        if any: the files it had left keep their vectors until a recompute covers them again."""
        from img_search.data.images import decode_factor

        decode_factor(decode)
        with self.transaction() as db:
            db.execute("DELETE FROM recompute_files WHERE model_id = ?", (model_id,))
            db.execute("DELETE FROM recomputes WHERE model_id = ?", (model_id,))
            db.execute("INSERT INTO recomputes (model_id, decode, started_at) VALUES (?, ?, ?)",
                       (model_id, decode, time.time()))
            self._cover(db, model_id, folders)
        state = self.recompute_state(model_id)
        assert state is not None
        return state

    def extend_recompute(self, model_id: int, folders: Sequence[str]) -> RecomputeState:
        """Add to the model's recompute the catalogued files under ``folders`` it does not cover yet (a ``--recompute``
        over more folders than the interrupted one); the files it covers keep their state. Raises LookupError when
        the model has no recompute under way."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM recomputes WHERE model_id = ?", (model_id,)).fetchone() is None:
                raise LookupError(f"model {model_id} has no recompute under way")
            self._cover(db, model_id, folders)
        state = self.recompute_state(model_id)
        assert state is not None
        return state

    @staticmethod
    def _cover(db: sqlite3.Connection, model_id: int, folders: Sequence[str]) -> None:
        for folder in folders:
            lo, hi = _prefix(folder)
            db.execute("INSERT OR IGNORE INTO recompute_files (model_id, image_id, done) SELECT ?, id, 0 FROM images "
                       "WHERE path >= ? AND path < ?", (model_id, lo, hi))

    def recompute_left(self, model_id: int | None) -> RecomputeLeft:
        """The files the model's recompute has not re-embedded yet (empty when none is under way)."""
        if self.recompute_state(model_id) is None:
            return RecomputeLeft()
        rows = self.db.execute(
            "SELECT f.image_id, i.content_hash, i.status FROM recompute_files f JOIN images i ON i.id = f.image_id "
            "WHERE f.model_id = ? AND f.done = 0", (model_id,)).fetchall()
        return RecomputeLeft(frozenset(int(r[0]) for r in rows),
                             frozenset(bytes(r[1]) for r in rows if r[1] is not None and r[2] != "deleted"))

    def recompute_folders_left(self, model_id: int | None, *, outside: Sequence[str] = ()) -> dict[str, int]:
        """The indexed folders (``roots``, the outermost of nested ones, in path order) holding files the model's
        recompute has not re-embedded yet, with how many each holds; files under ``outside`` are left out."""
        if self.recompute_state(model_id) is None:
            return {}
        skip = [_prefix(f) for f in outside]
        paths = [p for (p,) in self.db.execute(
            "SELECT i.path FROM recompute_files f JOIN images i ON i.id = f.image_id WHERE f.model_id = ? AND "
            "f.done = 0 AND i.status != 'deleted'", (model_id,)) if not any(lo <= p < hi for lo, hi in skip)]
        out: dict[str, int] = {}
        taken: list[tuple[bytes, bytes]] = []
        for (root,) in self.db.execute("SELECT path FROM roots ORDER BY path"):  # a folder sorts before its insides
            lo, hi = _prefix(os.fsdecode(root))
            if any(t_lo <= lo < t_hi for t_lo, t_hi in taken):
                continue
            n = sum(lo <= p < hi for p in paths)
            if n:
                out[os.fsdecode(root)] = n
                taken.append((lo, hi))
        return out

    def finish_recompute(self, model_id: int, folders: Sequence[str]) -> RecomputeState | None:
        """Mark done every file of the model's recompute under ``folders``: a run walked them to the end, so each was
        re-embedded, failed, or is gone. Drops the recompute when no existing file is left; returns what is left
        (None: finished, or none was under way)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM recomputes WHERE model_id = ?", (model_id,)).fetchone() is None:
                return None
            for folder in folders:
                lo, hi = _prefix(folder)
                db.execute("UPDATE recompute_files SET done = 1 WHERE model_id = ? AND done = 0 AND image_id IN "
                           "(SELECT id FROM images WHERE path >= ? AND path < ?)", (model_id, lo, hi))
            left = db.execute(
                "SELECT COUNT(*) FROM recompute_files f JOIN images i ON i.id = f.image_id WHERE f.model_id = ? AND "
                "f.done = 0 AND i.status != 'deleted'", (model_id,)).fetchone()[0]
            if not left:
                db.execute("DELETE FROM recompute_files WHERE model_id = ?", (model_id,))
                db.execute("DELETE FROM recomputes WHERE model_id = ?", (model_id,))
        return self.recompute_state(model_id)

    @staticmethod
    def mark_recomputed(db: sqlite3.Connection, model_id: int, *, hashes: Sequence[bytes | None] = (),
                        paths: Sequence[bytes] = ()) -> None:
        """Inside a write transaction: the model's recompute (if one is under way) is done with every file holding
        one of ``hashes`` (a new vector of those bytes is being written) and with the files at ``paths`` (recorded
        now, embedded or failed). A file it did not cover yet (new since it started, or under another folder) joins
        it as done: its vector is as new as the recompute's, so a ``--recompute`` extended to its folder keeps it."""
        if db.execute("SELECT 1 FROM recomputes WHERE model_id = ?", (model_id,)).fetchone() is None:
            return
        known = [h for h in hashes if h is not None]
        for column, values in (("content_hash", known), ("path", list(paths))):
            for start in range(0, len(values), _CHUNK):
                chunk = values[start : start + _CHUNK]
                # column is one of the two literals above, never input
                db.execute(f"INSERT INTO recompute_files (model_id, image_id, done) SELECT ?, id, 1 FROM images WHERE "
                           f"{column} IN ({','.join('?' * len(chunk))}) ON CONFLICT (model_id, image_id) DO UPDATE "
                           "SET done = 1", [model_id, *chunk])
