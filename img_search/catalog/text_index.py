"""The catalog's full-text index (SQLite FTS5, ranked by BM25) over what is written about each image.

One row per live image (``rowid`` = ``images.id``) with six columns: the file name (without its extension), the last
folders of its path, tags, descriptions (the photo's own and the user's), keywords (XMP / IPTC keywords, dominant
colour names and the season) and the text read from the image (OCR). Rows are rebuilt inside the same transaction
that changes anything they are made of, so the index never lags the catalog.

BM25 is FTS5's built-in ``bm25()`` (Robertson & Zaragoza 2009, k1 = 1.2, b = 0.75: https://www.sqlite.org/fts5.html
section 5.1.1), with per-column weights (``COLUMN_WEIGHTS``): words a person chose (tags, descriptions, keywords)
count more than words in a file name, and those more than a folder name.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence

# name, folder, tags, description, keywords, ocr
COLUMNS = ("name", "folder", "tags", "description", "keywords", "ocr")
COLUMN_WEIGHTS = (1.0, 0.5, 3.0, 2.0, 2.0, 1.5)
FOLDER_DEPTH = 3  # how many trailing folder names of a path are indexed as words
_CHUNK = 500

# English function words dropped from text queries ("a photo of the dog" matches on "photo" and "dog");
# document text keeps them (they cost nothing there and BM25's IDF already weighs them down)
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it", "its", "of",
    "on", "or", "that", "the", "this", "to", "was", "were", "with", "without", "photo", "photos", "picture",
    "pictures", "image", "images",
})
_WORD = re.compile(r"\w+", re.UNICODE)


def _name_words(path: bytes) -> tuple[str, str]:
    text = os.fsdecode(path)
    folder, name = os.path.split(text)
    stem = os.path.splitext(name)[0]
    folders = [p for p in folder.split(os.sep) if p][-FOLDER_DEPTH:]
    # surrogate-escaped bytes of non-UTF-8 names are replaced, not indexed as garbage
    clean = lambda s: s.encode("utf-8", "replace").decode("utf-8")  # noqa: E731
    return clean(stem), clean(" ".join(folders))


def _keywords(keywords_json: str | None, colors: str | None, season: str | None) -> str:
    words: list[str] = []
    if keywords_json:
        try:
            words.extend(str(k) for k in json.loads(keywords_json))
        except (ValueError, TypeError):
            words.append(keywords_json)
    words.extend(w for w in (colors, season) if w)
    return " ".join(words)


_DOC_SQL = """
    SELECT i.id, i.path, pm.description, pm.keywords, pm.colors, pm.season, a.description, o.text,
           (SELECT group_concat(t.tag, ' ') FROM tags t WHERE t.image_id = i.id)
    FROM images i
    LEFT JOIN photo_metadata pm ON pm.image_id = i.id
    LEFT JOIN annotations a ON a.image_id = i.id
    LEFT JOIN ocr_text o ON o.content_hash = i.content_hash
    WHERE i.status = 'ok'
"""


def _insert_docs(db: sqlite3.Connection, rows: Iterable[Sequence[object]]) -> None:
    docs = []
    for image_id, path, pm_desc, keywords, colors, season, user_desc, ocr, tags in rows:
        name, folder = _name_words(path)  # type: ignore[arg-type]
        description = " ".join(str(d) for d in (pm_desc, user_desc) if d)
        docs.append((image_id, name, folder, tags or "", description, _keywords(keywords, colors, season), ocr or ""))  # type: ignore[arg-type]
    db.executemany(
        "INSERT INTO text_index (rowid, name, folder, tags, description, keywords, ocr) VALUES (?,?,?,?,?,?,?)", docs
    )


def rebuild_text_index(db: sqlite3.Connection, image_ids: Iterable[int] | None = None) -> None:
    """Rebuild the text-index rows of ``image_ids`` (all images when None) from the catalog tables, inside the
    caller's transaction. Images that are not live (error, deleted, unknown) lose their row."""
    if image_ids is None:
        db.execute("DELETE FROM text_index")
        _insert_docs(db, db.execute(_DOC_SQL).fetchall())
        return
    ids = sorted({int(i) for i in image_ids})
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        db.execute(f"DELETE FROM text_index WHERE rowid IN ({marks})", chunk)
        _insert_docs(db, db.execute(f"{_DOC_SQL} AND i.id IN ({marks})", chunk).fetchall())


def query_terms(text: str) -> list[str]:
    """The words of a free-text query that the text index is searched for: Unicode word characters, lower-cased,
    function words (``STOPWORDS``) dropped unless nothing else is left."""
    words = [w.lower() for w in _WORD.findall(text)]
    kept = [w for w in words if w not in STOPWORDS]
    return list(dict.fromkeys(kept or words))


def fts_query(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression: any of ``terms`` (OR; BM25 ranks documents with more of them first), each quoted so
    that no user input is read as FTS5 syntax."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
