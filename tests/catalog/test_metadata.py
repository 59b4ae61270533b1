"""Schema v3: photo metadata, tags, descriptions, OCR text and the FTS5 text index, and the v2 -> v3 upgrade."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import catalog_at_version

from img_search.catalog import Catalog, ImageRecord, OcrText, PhotoMetadata
from img_search.catalog.schema import SCHEMA_VERSION
from img_search.catalog.text_index import query_terms


def _hash(i: int) -> bytes:
    return bytes([i]) * 16


def test_v2_catalog_upgrades_in_place_and_its_names_are_searchable(tmp_path: Path) -> None:
    catalog_at_version(tmp_path, 2)
    with Catalog.in_dir(tmp_path, readonly=True) as old:  # readers read v2 as it is: no text, no metadata
        assert old.schema_version == 2 and old.text_search(["bakery"], 10) == [] and not old.has_own_text()
        assert [r.image_id for r in old.filter_rows()] == [1]
    with Catalog.in_dir(tmp_path) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        hits = cat.text_search(query_terms("the bakery"), 10)
        assert [i for i, _ in hits] == [1]
        assert cat.text_search(["holidays"], 10)[0][0] == 1  # folder names are words too
        assert not cat.has_own_text()  # names do not count as text of its own
        ids, vecs = cat.load_vectors(1, 2)  # nothing re-embedded
        assert ids.tolist() == [1] and vecs.tolist() == [[1.0, 1.0]]


def test_metadata_tags_descriptions_and_ocr_are_indexed(tmp_path: Path) -> None:
    meta = PhotoMetadata(taken_at="2023-06-01T10:00:00", camera_make="Google", camera_model="Pixel 7",
                         latitude=48.85, longitude=2.35, keywords=("croissant",), colors=("orange", "white"),
                         season="summer")
    with Catalog.in_dir(tmp_path) as cat:
        mid = cat.ensure_model("m", family="siglip", dim=2, logit_scale=1.0, logit_bias=0.0)
        records = [
            ImageRecord("/p/a.jpg", 1, 1, _hash(1), 4, 4, metadata=meta),
            ImageRecord("/p/b.jpg", 1, 1, _hash(2), 4, 4, ocr=OcrText("OPEN\nBoulangerie", 0.9, "test")),
            ImageRecord("/p/copy_of_b.jpg", 1, 1, _hash(2), 4, 4),
            ImageRecord("/p/c.jpg", 1, 1, _hash(3), 4, 4),
        ]
        cat.record(records, model_id=mid, vectors=np.ones((4, 2), np.float32))
        assert cat.photo_metadata(1) == meta and meta.camera == "Google Pixel 7"
        assert [i for i, _ in cat.text_search(["croissant"], 10)] == [1]
        assert [i for i, _ in cat.text_search(["orange"], 10)] == [1]  # colours and season are text
        assert sorted(i for i, _ in cat.text_search(["boulangerie"], 10)) == [2, 3]  # OCR follows the content
        assert cat.has_own_text()
        cat.add_tags(["/p/c.jpg"], ["birthday"])
        cat.set_description(["/p/c.jpg"], "Ana's 7th")
        assert cat.tags_of(4) == ["birthday"] and cat.description_of(4) == "Ana's 7th"
        assert [i for i, _ in cat.text_search(["birthday"], 10)] == [4]
        assert [i for i, _ in cat.text_search(["ana"], 10)] == [4]
        assert cat.image_ids_with_tags(["Birthday"]) == {4}
        cat.remove_tags(["/p/c.jpg"], ["birthday"])
        assert cat.text_search(["birthday"], 10) == [] and cat.image_ids_with_tags(["birthday"]) == set()
        rows = {r.image_id: r for r in cat.filter_rows()}
        assert rows[1].camera == "Google Pixel 7" and rows[1].latitude == 48.85 and rows[1].taken_at == meta.taken_at
        assert rows[2].has_text and rows[3].has_text and not rows[4].has_text
        cat.mark_deleted(["/p/a.jpg"])  # deleted images leave the text index
        assert cat.text_search(["croissant"], 10) == []
        assert cat.ocr_hashes() == {_hash(2)}


def test_text_query_syntax_is_never_read_as_fts(tmp_path: Path) -> None:
    with Catalog.in_dir(tmp_path) as cat:
        cat.record([ImageRecord('/p/say "NEAR" OR AND.jpg', 1, 1, _hash(1), 1, 1)])
        for text in ['"', "NEAR(", "a OR", "*", "say \"near\"", "col:x", "^"]:
            terms = query_terms(text)
            cat.text_search(terms, 5)  # no sqlite3.OperationalError
        assert [i for i, _ in cat.text_search(query_terms('say "near"'), 5)] == [1]


def test_vectors_by_id_use_the_primary_keys_not_a_scan(tmp_path: Path) -> None:
    """The by-id vector reads (filtered search, index builds) look each vector up by its primary key: left to itself
    SQLite drives the join from the model's index and scans every vector of the model once per chunk of ids."""
    with Catalog.in_dir(tmp_path) as cat:
        mid = cat.ensure_model("m", family="siglip", dim=2, logit_scale=1.0, logit_bias=0.0)
        n = 600  # chunks of 500 ids: with a long IN list the planner prefers the scan
        cat.record([ImageRecord(f"/p/{i}.jpg", 1, 1, i.to_bytes(16, "little"), 1, 1) for i in range(1, n + 1)],
                   model_id=mid, vectors=np.ones((n, 2), np.float32))
        statements: list[str] = []
        cat.db.set_trace_callback(statements.append)
        ids, _ = cat.live_vectors(mid, 2, list(range(1, n + 1)))
        cat.vectors_for_ids(mid, 2, list(range(n, 0, -1)))
        cat.db.set_trace_callback(None)
        assert ids.tolist() == list(range(1, n + 1))
        selects = [s for s in statements if "e.vector" in s]
        assert len(selects) == 4
        for sql in selects:
            plan = " ".join(str(r[3]) for r in cat.db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "embeddings_model" not in plan and "PRIMARY KEY" in plan, plan
