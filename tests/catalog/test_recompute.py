"""The bookkeeping of a resumable ``index --recompute`` (``catalog/recompute.py``, schema v5)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import catalog_at_version

from img_search.catalog import Catalog, ImageRecord
from img_search.catalog.recompute import RecomputeLeft
from img_search.catalog.schema import SCHEMA_VERSION
from img_search.errors import InvalidInputError


def test_v4_catalog_upgrades_to_v5_with_no_recompute_under_way(tmp_path: Path) -> None:
    catalog_at_version(tmp_path, 4, [f"/p/{i}.jpg".encode() for i in range(3)])
    with Catalog.in_dir(tmp_path, readonly=True) as old:  # readers never migrate: a v4 catalog has no recompute
        assert old.schema_version == 4 and old.recompute_state(1) is None and old.recompute_left(1) == RecomputeLeft()
    with Catalog.in_dir(tmp_path) as cat:
        assert cat.schema_version == SCHEMA_VERSION == 5
        assert cat.recompute_state(1) is None
        ids, vecs = cat.load_vectors(1, 2)  # nothing re-embedded, nothing lost
        assert len(ids) == 3 and vecs.tolist() == [[1.0, 1.0]] * 3 and cat.decode_counts(1) == {"full": 3}
        state = cat.start_recompute(1, ["/p"], decode="full")  # the new tables work on the upgraded catalog
        assert (state.files, state.left) == (3, 3)
    with Catalog.in_dir(tmp_path, readonly=True) as reader:  # and v5 is read as it is
        assert reader.schema_version == 5 and reader.load_vectors(1, 2)[0].tolist() == ids.tolist()


def _catalog(tmp_path: Path) -> tuple[Catalog, int]:
    cat = Catalog.in_dir(tmp_path)
    mid = cat.ensure_model("m", family="siglip", dim=2, logit_scale=1.0, logit_bias=0.0)
    # /a: 0, 1 (1 and /b/2 hold the same bytes), 3 failed; /b: 2; /c: 4
    recs = [ImageRecord("/a/0.jpg", 1, 1, b"\x00" * 16), ImageRecord("/a/1.jpg", 1, 1, b"\x01" * 16),
            ImageRecord("/b/2.jpg", 1, 1, b"\x01" * 16), ImageRecord("/c/4.jpg", 1, 1, b"\x04" * 16)]
    cat.record(recs, model_id=mid, vectors=np.ones((4, 2), np.float32))
    cat.record([ImageRecord("/a/3.jpg", 1, 1, error="truncated")], model_id=mid)
    return cat, mid


def _left_paths(cat: Catalog, mid: int) -> list[str]:
    ids = cat.recompute_left(mid).image_ids
    return sorted(row.path for row in cat.images_by_id(ids).values())


def test_files_are_done_in_the_transaction_that_writes_them(tmp_path: Path) -> None:
    cat, mid = _catalog(tmp_path)
    with cat:
        assert cat.recompute_state(mid) is None
        with pytest.raises(InvalidInputError, match="decode mode"):
            cat.start_recompute(mid, ["/a"], decode="half")
        state = cat.start_recompute(mid, ["/a", "/b"], decode="reduced-1x")
        assert (state.decode, state.files, state.left) == ("reduced-1x", 4, 4)
        assert cat.recompute_left(mid).hashes == {b"\x00" * 16, b"\x01" * 16}  # their vectors are stale

        # a batch of the recompute: one file embedded, the failed one failed again; written or nothing
        with pytest.raises(ValueError, match="one to one"):
            cat.record([ImageRecord("/a/0.jpg", 1, 1, b"\x00" * 16)], model_id=mid, vectors=np.ones((2, 2), np.float32))
        assert _left_paths(cat, mid) == ["/a/0.jpg", "/a/1.jpg", "/a/3.jpg", "/b/2.jpg"]
        cat.record([ImageRecord("/a/0.jpg", 1, 1, b"\x00" * 16), ImageRecord("/a/3.jpg", 1, 1, error="truncated")],
                   model_id=mid, vectors=np.zeros((1, 2), np.float32))
        assert _left_paths(cat, mid) == ["/a/1.jpg", "/b/2.jpg"]
        # a vector written by another writer (a re-embedding job, its own connection and thread): every file with
        # those bytes is done, under any folder of the recompute
        other = threading.Thread(target=lambda: _upsert(tmp_path, mid, b"\x01" * 16))
        other.start()
        other.join()
        assert _left_paths(cat, mid) == [] and cat.recompute_state(mid).left == 0  # type: ignore[union-attr]
        assert cat.finish_recompute(mid, ()) is None and cat.recompute_state(mid) is None  # dropped when done


def _upsert(index_dir: Path, model_id: int, digest: bytes) -> None:
    with Catalog.in_dir(index_dir) as writer:
        writer.upsert_vectors(model_id, [digest], np.zeros((1, 2), np.float32))


def test_extend_keeps_what_is_done_and_finish_marks_the_folders_walked(tmp_path: Path) -> None:
    cat, mid = _catalog(tmp_path)
    with cat:
        cat.start_recompute(mid, ["/a"], decode="full")
        cat.record([ImageRecord("/a/0.jpg", 1, 1, b"\x00" * 16)], model_id=mid, vectors=np.zeros((1, 2), np.float32))
        state = cat.extend_recompute(mid, ["/a", "/c"])  # a --recompute over more folders: /a/0 stays done
        assert (state.files, state.left) == (4, 3) and _left_paths(cat, mid) == ["/a/1.jpg", "/a/3.jpg", "/c/4.jpg"]
        # a file written while it is under way (new since it started) joins it, done: a resumed run keeps its vector
        cat.record([ImageRecord("/c/new.jpg", 1, 1, b"\x05" * 16)], model_id=mid, vectors=np.zeros((1, 2), np.float32))
        state = cat.recompute_state(mid)
        assert state is not None and (state.files, state.left) == (5, 3)
        assert cat.extend_recompute(mid, ["/c"]).left == 3
        cat.touch_root("/a")
        cat.touch_root("/c")
        cat.touch_root("/a/sub")  # nested in /a: counted with /a
        assert cat.recompute_folders_left(mid) == {"/a": 2, "/c": 1}
        assert cat.recompute_folders_left(mid, outside=["/a"]) == {"/c": 1}
        after = cat.finish_recompute(mid, ["/a"])  # a run walked /a to the end
        assert after is not None and after.left == 1 and cat.recompute_folders_left(mid) == {"/c": 1}
        cat.mark_deleted(["/c/4.jpg"])  # what it has left is gone: nothing left to do
        assert cat.recompute_state(mid).left == 0  # type: ignore[union-attr]
        assert cat.finish_recompute(mid, ()) is None
        with pytest.raises(LookupError, match="no recompute"):
            cat.extend_recompute(mid, ["/a"])


def test_a_new_recompute_replaces_an_unfinished_one(tmp_path: Path) -> None:
    cat, mid = _catalog(tmp_path)
    with cat:
        cat.start_recompute(mid, ["/a", "/b", "/c"], decode="full")
        cat.record([ImageRecord("/a/0.jpg", 1, 1, b"\x00" * 16)], model_id=mid, vectors=np.zeros((1, 2), np.float32))
        state = cat.start_recompute(mid, ["/a"], decode="reduced-1x")
        assert (state.decode, state.files, state.left) == ("reduced-1x", 3, 3)  # /a/0 again; /b and /c no longer
