"""Photo metadata, user tags and descriptions, OCR text and the full-text index: the catalog's schema v3 part.

``MetadataMixin`` is mixed into ``catalog.Catalog`` (it uses its connection and transactions). Older catalogs opened
read-only (schema v1 / v2) answer as if nothing were recorded: no metadata, no tags, no text.
Row types: ``PhotoMetadata`` (what `index` reads from a file's headers and its XMP sidecar: ``data.metadata``) and
``OcrText`` (what `index --ocr` reads from the pixels: ``data.ocr``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from img_search.catalog.text_index import COLUMN_WEIGHTS, fts_query, rebuild_text_index

METADATA_VERSION = 3  # the schema version that holds these tables
_CHUNK = 500
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photo says about itself. Every field is optional (``None``: the file does not say).

    ``taken_at``: local capture time as ISO 8601 ``YYYY-MM-DDTHH:MM:SS`` (EXIF DateTimeOriginal, else DateTime);
    ``utc_offset_minutes``: EXIF OffsetTimeOriginal in minutes east of UTC. ``latitude`` / ``longitude``: decimal
    degrees, WGS 84, south and west negative; ``altitude``: metres above sea level. ``orientation``: EXIF 1..8.
    ``rating``: XMP xmp:Rating (-1 rejected, 0..5). ``keywords``: XMP dc:subject, IPTC keywords and the sidecar's,
    de-duplicated in order. ``colors``: dominant colour names, most covered first. ``season``: from the date and the
    hemisphere of ``latitude`` (northern when unknown). ``sidecar_mtime_ns``: the XMP sidecar that was read.
    """

    taken_at: str | None = None
    utc_offset_minutes: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    orientation: int | None = None
    rating: int | None = None
    description: str | None = None
    keywords: tuple[str, ...] = field(default_factory=tuple)
    colors: tuple[str, ...] = field(default_factory=tuple)
    season: str | None = None
    sidecar_mtime_ns: int | None = None

    @property
    def camera(self) -> str | None:
        """Make and model as one name ("Google Pixel 7"), the make left out when the model already starts with it."""
        make, model = (self.camera_make or "").strip(), (self.camera_model or "").strip()
        if make and model and model.lower().startswith(make.split()[0].lower()):
            return model
        return " ".join(p for p in (make, model) if p) or None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keywords"], d["colors"] = list(self.keywords), list(self.colors)
        d["camera"] = self.camera
        return d


@dataclass(frozen=True)
class OcrText:
    """Text read from an image: ``text`` lines in reading order joined by newlines ('' when none was found),
    ``confidence`` the mean recognition confidence of the lines (0..1, None without lines), ``engine`` name and
    version of the OCR engine."""

    text: str
    confidence: float | None
    engine: str


_PM_COLS = ("taken_at, utc_offset_minutes, camera_make, camera_model, lens, latitude, longitude, altitude, "
            "orientation, rating, description, keywords, colors, season, sidecar_mtime_ns")


def _pm_values(m: PhotoMetadata) -> tuple[Any, ...]:
    return (m.taken_at, m.utc_offset_minutes, m.camera_make, m.camera_model, m.lens, m.latitude, m.longitude,
            m.altitude, m.orientation, m.rating, m.description, json.dumps(list(m.keywords)) if m.keywords else None,
            " ".join(m.colors) or None, m.season, m.sidecar_mtime_ns)


def _pm_row(r: Sequence[Any]) -> PhotoMetadata:
    keywords = tuple(json.loads(r[11])) if r[11] else ()
    colors = tuple(r[12].split()) if r[12] else ()
    return PhotoMetadata(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], keywords, colors, r[13],
                         r[14])


def upsert_photo_metadata(db: sqlite3.Connection, items: Sequence[tuple[int, PhotoMetadata]], now: float) -> None:
    """Write (image id, metadata) pairs inside the caller's transaction (the text index is the caller's to refresh)."""
    db.executemany(
        f"INSERT OR REPLACE INTO photo_metadata (image_id, {_PM_COLS}, extracted_at) "
        f"VALUES (?, {','.join('?' * 15)}, ?)",
        [(image_id, *_pm_values(m), now) for image_id, m in items],
    )


def upsert_ocr(db: sqlite3.Connection, items: Sequence[tuple[bytes, OcrText]], now: float) -> None:
    """Write (content hash, OCR text) pairs inside the caller's transaction."""
    db.executemany(
        "INSERT OR REPLACE INTO ocr_text (content_hash, text, confidence, engine, created_at) VALUES (?,?,?,?,?)",
        [(h, o.text, o.confidence, o.engine, now) for h, o in items],
    )


def ids_for_paths(db: sqlite3.Connection, paths: Sequence[bytes]) -> dict[bytes, int]:
    """images.id of each path (bytes) that the catalog knows."""
    out: dict[bytes, int] = {}
    for start in range(0, len(paths), _CHUNK):
        chunk = list(paths[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        out.update((p, i) for i, p in db.execute(f"SELECT id, path FROM images WHERE path IN ({marks})", chunk))
    return out


@dataclass(frozen=True)
class FilterRow:
    """What search filters look at for one live image (``Catalog.filter_rows``)."""

    image_id: int
    path: str
    width: int | None
    height: int | None
    mtime_ns: int | None
    taken_at: str | None
    latitude: float | None
    longitude: float | None
    camera: str | None
    has_text: bool


class MetadataMixin:
    """Schema v3 queries and writes of ``Catalog`` (see the module docstring)."""

    db: sqlite3.Connection

    if TYPE_CHECKING:  # provided by Catalog

        @property
        def schema_version(self) -> int: ...

        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    @property
    def has_metadata_tables(self) -> bool:
        """Whether this catalog's schema holds metadata, tags and the text index (v3 and later)."""
        return self.schema_version >= METADATA_VERSION

    # -- photo metadata -----------------------------------------------------------------------------
    def set_photo_metadata(self, items: Iterable[tuple[str, PhotoMetadata]]) -> int:
        """Record metadata for catalogued files (path, metadata) in one transaction and refresh their text-index rows;
        returns how many paths were known (unknown paths are ignored: `index` writes image rows first)."""
        pairs = [(os.fsencode(p), m) for p, m in items]
        with self.transaction() as db:
            ids = ids_for_paths(db, [p for p, _ in pairs])
            known = [(ids[p], m) for p, m in pairs if p in ids]
            upsert_photo_metadata(db, known, time.time())
            rebuild_text_index(db, [i for i, _ in known])
        return len(known)

    def photo_metadata(self, image_id: int) -> PhotoMetadata | None:
        if not self.has_metadata_tables:
            return None
        r = self.db.execute(f"SELECT {_PM_COLS} FROM photo_metadata WHERE image_id = ?", (image_id,)).fetchone()
        return _pm_row(r) if r else None

    def metadata_state(self, paths: Iterable[str]) -> dict[str, int | None]:
        """For each catalogued live path with metadata recorded: the sidecar mtime it was read with (None: none).
        Paths missing from the result need their metadata (re-)read; used by `index` to back-fill."""
        if not self.has_metadata_tables:
            return {}
        encoded = [os.fsencode(p) for p in paths]
        out: dict[str, int | None] = {}
        for start in range(0, len(encoded), _CHUNK):
            chunk = encoded[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT i.path, pm.sidecar_mtime_ns FROM images i CROSS JOIN photo_metadata pm ON pm.image_id = i.id "
                f"WHERE i.path IN ({marks})", chunk)
            out.update((os.fsdecode(p), m) for p, m in rows)
        return out

    # -- tags and descriptions ------------------------------------------------------------------------
    def add_tags(self, paths: Sequence[str], tags: Sequence[str], *, source: str = "user") -> dict[str, int]:
        """Add ``tags`` to each of ``paths``; returns {path: image id} of the paths the catalog knows (the caller
        reports the rest)."""
        now = time.time()
        with self.transaction() as db:
            ids = ids_for_paths(db, [os.fsencode(p) for p in paths])
            db.executemany("INSERT OR IGNORE INTO tags (image_id, tag, source, added_at) VALUES (?,?,?,?)",
                           [(i, t, source, now) for i in ids.values() for t in tags])
            rebuild_text_index(db, ids.values())
        return {os.fsdecode(p): i for p, i in ids.items()}

    def remove_tags(self, paths: Sequence[str], tags: Sequence[str]) -> dict[str, int]:
        """Remove ``tags`` from each of ``paths`` (absent tags are fine); returns the known paths' ids."""
        with self.transaction() as db:
            ids = ids_for_paths(db, [os.fsencode(p) for p in paths])
            db.executemany("DELETE FROM tags WHERE image_id = ? AND tag = ?",
                           [(i, t) for i in ids.values() for t in tags])
            rebuild_text_index(db, ids.values())
        return {os.fsdecode(p): i for p, i in ids.items()}

    def set_description(self, paths: Sequence[str], description: str | None) -> dict[str, int]:
        """Set (or with None, clear) the user's description of each of ``paths``; returns the known paths' ids."""
        now = time.time()
        with self.transaction() as db:
            ids = ids_for_paths(db, [os.fsencode(p) for p in paths])
            if description is None:
                db.executemany("DELETE FROM annotations WHERE image_id = ?", [(i,) for i in ids.values()])
            else:
                db.executemany("INSERT OR REPLACE INTO annotations (image_id, description, updated_at) VALUES (?,?,?)",
                               [(i, description, now) for i in ids.values()])
            rebuild_text_index(db, ids.values())
        return {os.fsdecode(p): i for p, i in ids.items()}

    def annotate(self, tags: Mapping[str, Sequence[str]], descriptions: Mapping[str, str], *,
                 source: str = "import") -> dict[str, int]:
        """Add ``tags`` ({path: tags}) and set ``descriptions`` ({path: text}) in ONE transaction, refreshing the
        text index once per image (bulk imports); returns {path: image id} of the known paths."""
        now = time.time()
        paths = list(dict.fromkeys([*tags, *descriptions]))
        with self.transaction() as db:
            ids = ids_for_paths(db, [os.fsencode(p) for p in paths])
            known = {p: ids[os.fsencode(p)] for p in paths if os.fsencode(p) in ids}
            db.executemany("INSERT OR IGNORE INTO tags (image_id, tag, source, added_at) VALUES (?,?,?,?)",
                           [(known[p], t, source, now) for p, ts in tags.items() if p in known for t in ts])
            db.executemany("INSERT OR REPLACE INTO annotations (image_id, description, updated_at) VALUES (?,?,?)",
                           [(known[p], d, now) for p, d in descriptions.items() if p in known])
            rebuild_text_index(db, known.values())
        return known

    def tags_of(self, image_id: int) -> list[str]:
        if not self.has_metadata_tables:
            return []
        return [t for (t,) in self.db.execute("SELECT tag FROM tags WHERE image_id = ? ORDER BY tag", (image_id,))]

    def description_of(self, image_id: int) -> str | None:
        if not self.has_metadata_tables:
            return None
        r = self.db.execute("SELECT description FROM annotations WHERE image_id = ?", (image_id,)).fetchone()
        return r[0] if r else None

    def image_ids_with_tags(self, tags: Sequence[str]) -> set[int]:
        """Live images carrying any of ``tags`` (exact, case-insensitive match)."""
        if not self.has_metadata_tables or not tags:
            return set()
        marks = ",".join("?" * len(tags))
        rows = self.db.execute(
            f"SELECT DISTINCT t.image_id FROM tags t JOIN images i ON i.id = t.image_id AND i.status = 'ok' "
            f"WHERE lower(t.tag) IN ({marks})", [t.lower() for t in tags])
        return {int(i) for (i,) in rows}

    # -- OCR ------------------------------------------------------------------------------------
    def set_ocr(self, items: Iterable[tuple[bytes, OcrText]]) -> None:
        """Record OCR text per content hash in one transaction; every image with that content gets it."""
        pairs = list(items)
        with self.transaction() as db:
            upsert_ocr(db, pairs, time.time())
            rebuild_text_index(db, self._ids_with_hashes(db, [h for h, _ in pairs]))

    @staticmethod
    def _ids_with_hashes(db: sqlite3.Connection, hashes: Sequence[bytes]) -> list[int]:
        ids: list[int] = []
        for start in range(0, len(hashes), _CHUNK):
            chunk = list(hashes[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            ids.extend(i for (i,) in db.execute(f"SELECT id FROM images WHERE content_hash IN ({marks})", chunk))
        return ids

    @staticmethod
    def _adopt_annotations(db: sqlite3.Connection, image_ids: Iterable[int]) -> set[int]:
        """Tags and descriptions follow a file that moved: each live image of ``image_ids`` that has none of its own
        takes a copy of those of the most recently deleted row with the same content (a renamed or moved file is a
        deleted row plus a new one with the same bytes). Copies, not moves: the deleted row keeps its own, so the file
        coming back, or a second copy, finds them too. Returns the ids that adopted some (their text-index rows
        must be rebuilt by the caller, in the same transaction)."""
        adopted: set[int] = set()
        ids = list(image_ids)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            pairs = db.execute(
                "SELECT n.id, (SELECT o.id FROM images o WHERE o.content_hash = n.content_hash "
                "AND o.status = 'deleted' AND (EXISTS (SELECT 1 FROM tags t WHERE t.image_id = o.id) "
                "OR EXISTS (SELECT 1 FROM annotations a WHERE a.image_id = o.id)) "
                "ORDER BY o.updated_at DESC, o.id DESC LIMIT 1) "
                f"FROM images n WHERE n.id IN ({marks}) AND n.status = 'ok' AND n.content_hash IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.image_id = n.id) "
                "AND NOT EXISTS (SELECT 1 FROM annotations a WHERE a.image_id = n.id)", chunk).fetchall()
            for new_id, old_id in pairs:
                if old_id is None:
                    continue
                db.execute("INSERT OR IGNORE INTO tags (image_id, tag, source, added_at) SELECT ?, tag, source, "
                           "added_at FROM tags WHERE image_id = ?", (new_id, old_id))
                db.execute("INSERT OR IGNORE INTO annotations (image_id, description, updated_at) SELECT ?, "
                           "description, updated_at FROM annotations WHERE image_id = ?", (new_id, old_id))
                adopted.add(int(new_id))
        if adopted:
            logger.info("tags and descriptions followed %d moved or renamed files", len(adopted))
        return adopted

    def ocr_hashes(self) -> set[bytes]:
        """Content hashes already read by OCR (incremental `--ocr`)."""
        if not self.has_metadata_tables:
            return set()
        return {h for (h,) in self.db.execute("SELECT content_hash FROM ocr_text")}

    def ocr_text(self, content_hash: bytes) -> OcrText | None:
        if not self.has_metadata_tables:
            return None
        r = self.db.execute("SELECT text, confidence, engine FROM ocr_text WHERE content_hash = ?",
                            (content_hash,)).fetchone()
        return OcrText(*r) if r else None

    # -- text index -------------------------------------------------------------------------------
    def has_own_text(self) -> bool:
        """Whether the collection holds text of its own beyond file and folder names: OCR text, tags, descriptions or
        keywords of a live image (then hybrid search defaults to rank fusion)."""
        if not self.has_metadata_tables:
            return False
        r = self.db.execute(
            "SELECT EXISTS (SELECT 1 FROM text_index WHERE tags != '' OR description != '' OR ocr != '' "
            "OR keywords != '' LIMIT 1)").fetchone()
        return bool(r[0])

    def text_search(self, terms: Sequence[str], limit: int) -> list[tuple[int, float]]:
        """Live images whose text matches any of ``terms`` (``text_index.query_terms``): (image id, BM25 score, higher
        is better), best first, at most ``limit``. Empty for an older catalog or no terms."""
        if not self.has_metadata_tables or not terms or limit < 1:
            return []
        weights = ", ".join(str(w) for w in COLUMN_WEIGHTS)
        rows = self.db.execute(
            f"SELECT rowid, -bm25(text_index, {weights}) AS s FROM text_index WHERE text_index MATCH ? "
            f"ORDER BY s DESC LIMIT ?", (fts_query(terms), int(limit)))
        return [(int(i), float(s)) for i, s in rows]

    def rebuild_text_index(self) -> None:
        """Rebuild the whole text index from the catalog tables (repair; normally kept current by every write)."""
        with self.transaction() as db:
            rebuild_text_index(db)

    # -- filters ----------------------------------------------------------------------------------
    def filter_rows(self) -> Iterator[FilterRow]:
        """One ``FilterRow`` per live image, in id order (search filters load these once per collection view)."""
        if not self.has_metadata_tables:
            rows = self.db.execute(
                "SELECT id, path, width, height, mtime_ns FROM images WHERE status = 'ok' ORDER BY id")
            for r in rows:
                yield FilterRow(r[0], os.fsdecode(r[1]), r[2], r[3], r[4], None, None, None, None, False)
            return
        rows = self.db.execute(
            "SELECT i.id, i.path, i.width, i.height, i.mtime_ns, pm.taken_at, pm.latitude, pm.longitude, "
            "pm.camera_make, pm.camera_model, (o.text IS NOT NULL AND o.text != '') "
            "FROM images i LEFT JOIN photo_metadata pm ON pm.image_id = i.id "
            "LEFT JOIN ocr_text o ON o.content_hash = i.content_hash WHERE i.status = 'ok' ORDER BY i.id")
        for r in rows:
            camera = PhotoMetadata(camera_make=r[8], camera_model=r[9]).camera
            yield FilterRow(r[0], os.fsdecode(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], camera, bool(r[10]))
