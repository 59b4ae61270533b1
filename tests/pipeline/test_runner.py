"""The indexing loop: incremental behaviour, moves, deletes, recompute, lock, parity and kill-and-resume."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_jpeg, pattern

from img_search.catalog import Catalog
from img_search.catalog.lock import IndexLock
from img_search.errors import CatalogLockedError, ImgSearchError
from img_search.info import finish_command
from img_search.pipeline.runner import IndexOptions, index_folders


class CountingEncoder:
    """Wraps a real encoder and counts images embedded, to prove what the loop skipped."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.images = inner, 0
        self.info, self.device = inner.info, inner.device

    def image_preprocessor(self):  # type: ignore[no-untyped-def]
        return self.inner.image_preprocessor()

    def encode_batch(self, batch):  # type: ignore[no-untyped-def]
        out = self.inner.encode_batch(batch)
        self.images += len(out)
        return out

    def encode_images(self, images):  # type: ignore[no-untyped-def]
        return self.inner.encode_images(images)

    def encode_texts(self, texts):  # type: ignore[no-untyped-def]
        return self.inner.encode_texts(texts)


def _never():  # type: ignore[no-untyped-def]
    raise AssertionError("the model must not be loaded when nothing needs embedding")


def _run(folder: Path, index_dir: Path, model: Path, factory, **kw):  # type: ignore[no-untyped-def]
    opts = IndexOptions(model=str(model), batch_size=4, workers=kw.pop("workers", 1), **kw)
    return index_folders([str(folder)], index_dir, opts, encoder_factory=factory)


def test_incremental_moves_deletes_recompute(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                            siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    enc = CountingEncoder(siglip_encoder)
    s = _run(photo_dir, idx, tiny_siglip, lambda: enc)
    assert (s.scanned, s.embedded, s.unchanged, len(s.failed)) == (12, 12, 0, 0) and enc.images == 12

    s = _run(photo_dir, idx, tiny_siglip, _never)  # unchanged: no model load at all
    assert (s.embedded, s.unchanged, s.reused) == (0, 12, 0)

    with Catalog.in_dir(idx) as cat:
        model_id = cat.get_model(str(tiny_siglip)).id
        old_vec = cat.vector_for(model_id, cat.image(str(photo_dir / "a" / "img01.jpg")).content_hash)

    # move one file, copy another, delete a third, change a fourth, add a fifth
    (photo_dir / "moved").mkdir()
    shutil.move(photo_dir / "a" / "img01.jpg", photo_dir / "moved" / "renamed.jpg")
    shutil.copy(photo_dir / "b" / "img00.jpg", photo_dir / "b" / "copy.jpg")
    (photo_dir / "a" / "img03.jpg").unlink()
    make_jpeg(photo_dir / "b" / "img02.jpg", seed=99)
    make_jpeg(photo_dir / "new.jpg", seed=100)
    enc.images = 0
    s = _run(photo_dir, idx, tiny_siglip, lambda: enc)
    assert (s.reused, s.embedded, s.deleted, s.unchanged) == (2, 2, 2, 9)  # 2 vanished: moved-away + deleted
    assert enc.images == 2
    with Catalog.in_dir(idx) as cat:
        moved = cat.image(str(photo_dir / "moved" / "renamed.jpg"))
        assert moved is not None and moved.status == "ok"
        np.testing.assert_array_equal(cat.vector_for(model_id, moved.content_hash), old_vec)
        assert cat.image(str(photo_dir / "a" / "img03.jpg")).status == "deleted"
        ids, vecs = cat.load_vectors(model_id, 32)
        assert len(ids) == 13 and vecs.shape == (13, 32)  # 12 - moved-away - deleted + renamed + copy + new

    enc.images = 0
    s = _run(photo_dir, idx, tiny_siglip, lambda: enc, recompute=True)
    assert s.embedded == 13 and enc.images == 13


def test_bad_files_are_skipped_and_recorded(tmp_path: Path, tiny_siglip: Path, siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "mixed"
    make_jpeg(folder / "good.jpg")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.gif").write_text("hello")
    pattern(5).convert("CMYK").save(folder / "cmyk.jpg")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    s = _run(folder, tmp_path / "idx", tiny_siglip, lambda: siglip_encoder)
    assert s.embedded == 2
    assert {os.path.basename(f.path) for f in s.failed} == {"truncated.jpg", "zero.png", "text.gif", "loop.jpg"}
    with Catalog.in_dir(tmp_path / "idx") as cat:
        reasons = {os.path.basename(r.path): r.error for r in cat.failures()}
    assert reasons["zero.png"] == "empty file (0 bytes)" and reasons["loop.jpg"] == "symlink loop"
    s = _run(folder, tmp_path / "idx", tiny_siglip, _never)
    assert s.failed == [] and s.failed_before == 4


def test_pipeline_vectors_equal_direct_encoding(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    from img_search.data.images import load_image

    side = siglip_encoder.image_preprocessor().input_side
    for full_decode, min_side in ((False, side), (True, None)):  # the default decodes JPEGs at a reduced scale
        idx = tmp_path / f"idx-{full_decode}"
        _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder, workers=2, full_decode=full_decode)
        with Catalog.in_dir(idx) as cat:
            model_id = cat.get_model(str(tiny_siglip)).id
            paths = sorted(cat.images_under(str(photo_dir)))
            stored = np.stack([cat.vector_for(model_id, cat.image(p).content_hash) for p in paths])
            assert {(r.width, r.height) for r in map(cat.image, paths)} == {(96, 64)}  # the photos' own size
        direct = siglip_encoder.encode_images([load_image(p, min_side=min_side) for p in paths])
        np.testing.assert_allclose(stored, direct, atol=1e-5)


# Lowest cosine seen between the tiny model's vectors of reduced-scale and full decodes of 96x64 test JPEGs (40 seeds):
# 0.994. The tiny model (random weights, 32 px input, 8 px patches) is far more sensitive to pixel changes than the
# base architecture (0.99998 in bench/embed_throughput.py --decode-parity); the floor catches a wrong picture
# (turned, another scale, another file: cosine < 0.9), not rounding.
TINY_DECODE_COSINE_FLOOR = 0.95


def test_reduced_decode_parity_and_record(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                          siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    from img_search.data.images import load_image
    from img_search.info import catalog_info

    idx = tmp_path / "idx"
    s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)
    assert s.decode == "reduced-1x"
    with Catalog.in_dir(idx) as cat:
        model_id = cat.get_model(str(tiny_siglip)).id
        paths = sorted(cat.images_under(str(photo_dir)))
        stored = np.stack([cat.vector_for(model_id, cat.image(p).content_hash) for p in paths])
        assert cat.decode_counts(model_id) == {"reduced-1x": 12}
    full = siglip_encoder.encode_images([load_image(p) for p in paths])
    cosines = np.sum(stored * full, axis=1)
    assert cosines.min() >= TINY_DECODE_COSINE_FLOOR and cosines.max() < 1 - 1e-6  # close, and not the same pixels
    assert catalog_info(idx)["models"][0]["decode"] == {"reduced-1x": 12}

    # asking for full decoding later does not mix modes: new photos follow the collection until --recompute
    make_jpeg(photo_dir / "new.jpg", seed=50)
    s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder, full_decode=True)
    assert (s.embedded, s.decode) == (1, "reduced-1x")
    s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder, full_decode=True, recompute=True)
    assert (s.embedded, s.decode) == (13, "full")
    with Catalog.in_dir(idx) as cat:
        assert cat.decode_counts(model_id) == {"full": 13}
        stored = cat.vector_for(model_id, cat.image(paths[0]).content_hash)
    np.testing.assert_allclose(stored, full[0], atol=1e-5)


def test_a_full_decode_collection_stays_full(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                             siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """A collection decoded in full (``--full-decode``, or any catalog before schema v4: the migration records its
    vectors as full) keeps decoding new photos in full by default, so it never mixes modes."""
    idx = tmp_path / "idx"
    _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder, full_decode=True)
    with Catalog.in_dir(idx) as cat:
        model_id = cat.get_model(str(tiny_siglip)).id
        assert cat.decode_counts(model_id) == {"full": 12}
    make_jpeg(photo_dir / "new.jpg", seed=51)
    s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)  # default: reduced, but the collection is full
    assert (s.embedded, s.decode) == (1, "full")
    with Catalog(idx / "catalog.sqlite3", readonly=True) as cat:
        assert cat.decode_counts(model_id) == {"full": 13}


def test_second_writer_is_refused(tmp_path: Path, photo_dir: Path, tiny_siglip: Path) -> None:
    with IndexLock(tmp_path / "idx"), pytest.raises(CatalogLockedError, match="already writing"):
        _run(photo_dir, tmp_path / "idx", tiny_siglip, _never)


def test_not_a_folder(tmp_path: Path, tiny_siglip: Path) -> None:
    with pytest.raises(ImgSearchError, match="does not exist"):
        _run(tmp_path / "missing", tmp_path / "idx", tiny_siglip, _never)


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path: Path, tiny_siglip: Path) -> None:
    folder = tmp_path / "many"
    n = 1500
    for i in range(n):
        sub = folder / f"{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        pattern(i, (48, 32)).save(sub / f"{i:04d}.png")
    idx = tmp_path / "idx"
    cmd = [sys.executable, "-m", "img_search", "index", str(folder), "--model", str(tiny_siglip),
           "--index-dir", str(idx), "--batch-size", "4", "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = idx / "catalog.sqlite3"
    committed = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as conn:
                    committed = conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            except sqlite3.OperationalError:
                committed = 0
            if committed >= 40:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make the folder bigger"
    import psutil

    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "expected decode worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < committed < n
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"decode workers outlived the killed run: {[p.pid for p in alive]}"

    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Catalog.in_dir(idx) as cat:
        model_id = cat.get_model(str(tiny_siglip)).id
        ids, _vecs = cat.load_vectors(model_id, 32)
        assert len(ids) == n and len(set(ids.tolist())) == n
        assert cat.db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == n
        assert cat.db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == n
    import json

    summary = json.loads(done.stdout)
    assert summary["unchanged"] >= committed and summary["embedded"] + summary["unchanged"] == n


def test_writer_in_another_process_is_refused(tmp_path: Path, photo_dir: Path, tiny_siglip: Path,
                                              siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    idx = tmp_path / "idx"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from img_search.catalog.lock import IndexLock; "
         f"l = IndexLock({str(idx)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(CatalogLockedError, match=f"pid {holder.pid}"):
            _run(photo_dir, idx, tiny_siglip, _never)
    finally:
        holder.kill()
        holder.wait()
    s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)  # the lock died with its holder
    assert s.embedded == 12


def test_file_vanishing_after_the_scan_is_recorded_not_fatal(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                             siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    victim = photo_dir / "a" / "img05.jpg"

    def factory():  # type: ignore[no-untyped-def]
        victim.unlink()  # planning is over: the reader will find the file gone
        return siglip_encoder

    s = _run(photo_dir, tmp_path / "idx", tiny_siglip, factory)
    assert s.embedded == 11
    assert [(f.path, f.reason) for f in s.failed] == [
        (str(victim), "cannot read the file: No such file or directory")]


def test_permission_denied_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from img_search.data.images import read_file
    from img_search.errors import ImageDecodeError

    real_open = builtins.open

    def deny(path, *a, **kw):  # type: ignore[no-untyped-def]
        if str(path).endswith("secret.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    make_jpeg(tmp_path / "secret.jpg")
    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(ImageDecodeError, match="permission denied"):
        read_file(str(tmp_path / "secret.jpg"))


def test_tags_and_description_follow_a_moved_or_renamed_file(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                             siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """A rename is a deleted row and a new one with the same bytes: the new row adopts the old one's tags and
    description (searchable by the text index), a copy of a still-present file does not, and a file that has
    tags of its own keeps them."""
    idx = tmp_path / "idx"
    _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)
    src = sorted(photo_dir.rglob("*.jpg"))
    with Catalog.in_dir(idx) as cat:
        cat.add_tags([str(src[0]), str(src[1])], ["mycat"])
        cat.set_description([str(src[0])], "Our cat Chelsea")
        cat.add_tags([str(src[2])], ["kept"])
    moved = photo_dir / "2024" / "chelsea_renamed.jpg"
    moved.parent.mkdir(exist_ok=True)
    src[0].rename(moved)
    copy = photo_dir / "copy_of_1.jpg"
    copy.write_bytes(src[1].read_bytes())
    s = _run(photo_dir, idx, tiny_siglip, _never)  # nothing to embed: the moved file and the copy reuse vectors
    assert (s.reused, s.deleted) == (2, 1)
    with Catalog.in_dir(idx, readonly=True) as cat:
        new = cat.image(str(moved))
        assert new is not None and new.status == "ok"
        assert cat.tags_of(new.id) == ["mycat"] and cat.description_of(new.id) == "Our cat Chelsea"
        assert new.id in {i for i, _ in cat.text_search(["chelsea"], 10)}
        assert cat.tags_of(cat.image(str(copy)).id) == []  # its original is still there: a copy starts bare
        assert cat.image_ids_with_tags(["mycat"]) >= {new.id, cat.image(str(src[1])).id}
    # the other order: the file leaves the folder in one run and comes back under another name in a later one
    moved.rename(tmp_path / "away.jpg")
    _run(photo_dir, idx, tiny_siglip, _never)
    (tmp_path / "away.jpg").rename(photo_dir / "back.jpg")
    src[2].rename(photo_dir / "2024" / "kept.jpg")
    _run(photo_dir, idx, tiny_siglip, _never)
    with Catalog.in_dir(idx, readonly=True) as cat:
        assert cat.tags_of(cat.image(str(photo_dir / "back.jpg")).id) == ["mycat"]
        assert cat.tags_of(cat.image(str(photo_dir / "2024" / "kept.jpg")).id) == ["kept"]


def test_a_file_refused_as_too_large_is_retried_once_the_limit_admits_it(tmp_path: Path, tiny_siglip: Path,
                                                                        siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """The skip reason says "raise it with --max-image-pixels": doing so must retry the file, not report it as
    "failed earlier, not retried" (found by a new-user trial)."""
    from img_search.data.images import too_large_pixels

    folder = tmp_path / "photos"
    make_jpeg(folder / "big.jpg", seed=3, size=(1200, 1000))
    make_jpeg(folder / "small.jpg", seed=4)
    idx = tmp_path / "idx"
    first = _run(folder, idx, tiny_siglip, lambda: siglip_encoder, max_image_pixels=1_000_000, workers=0)
    assert first.embedded == 1 and [f.path for f in first.failed] == [str(folder / "big.jpg")]
    assert too_large_pixels(first.failed[0].reason) == 1_200_000
    again = _run(folder, idx, tiny_siglip, _never, max_image_pixels=1_000_000, workers=0)
    assert again.failed_before == 1 and again.embedded == 0  # same limit: not retried
    raised = _run(folder, idx, tiny_siglip, lambda: siglip_encoder, max_image_pixels=2_000_000, workers=0)
    assert raised.embedded == 1 and raised.failed_before == 0 and raised.failed == []
    assert too_large_pixels("not an image Pillow can read") is None


# -- an interrupted --recompute resumes (found by a new user: a re-run started from zero, a plain run mixed vectors) --
class InterruptingEncoder(CountingEncoder):
    """Raises KeyboardInterrupt (as Ctrl-C or the CLI's SIGTERM handler does) at its ``after + 1``-th forward pass;
    the ``after`` batches before it are encoded and handed to the writer."""

    def __init__(self, inner, after: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(inner)
        self.after, self.batches = after, 0

    def encode_batch(self, batch):  # type: ignore[no-untyped-def]
        if self.batches == self.after:
            raise KeyboardInterrupt
        self.batches += 1
        return super().encode_batch(batch)


def _vectors_by_path(idx: Path, folder: Path, model: Path) -> dict[str, tuple[str, float]]:
    """(decode mode, created_at) of the vector of every live file under ``folder``."""
    with Catalog.in_dir(idx, readonly=True) as cat:
        model_id = cat.get_model(str(model)).id
        rows = cat.db.execute("SELECT i.path, e.decode, e.created_at FROM images i JOIN embeddings e ON "
                              "e.content_hash = i.content_hash AND e.model_id = ? WHERE i.status = 'ok'", (model_id,))
        return {os.fsdecode(p): (d, t) for p, d, t in rows if os.fsdecode(p).startswith(str(folder))}


def _interrupted_recompute(photo_dir: Path, idx: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
                           after: int) -> None:
    """Index the 12 photos (reduced decode), then a --recompute --full-decode interrupted after ``after`` batches of
    4 (decoded in full: its vectors differ from the first ones, and the decode mode kept with each tells them apart)."""
    assert _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder).decode == "reduced-1x"
    enc = InterruptingEncoder(siglip_encoder, after=after)
    with pytest.raises(KeyboardInterrupt):
        _run(photo_dir, idx, tiny_siglip, lambda: enc, recompute=True, full_decode=True)
    done = 4 * after
    assert enc.images == done
    modes = [mode for mode, _ in _vectors_by_path(idx, photo_dir, tiny_siglip).values()]
    assert sorted(modes) == ["full"] * done + ["reduced-1x"] * (12 - done)  # the batches embedded were committed
    with Catalog.in_dir(idx, readonly=True) as cat:
        run = cat.last_run()
        assert run is not None and run["status"] == "interrupted" and run["stats"]["recompute_left"] == 12 - done


def test_an_interrupted_recompute_resumes_with_only_the_files_it_had_left(
        photo_dir: Path, tmp_path: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture) -> None:
    idx = tmp_path / "idx"
    with caplog.at_level("WARNING", logger="img_search.pipeline.runner"):
        _interrupted_recompute(photo_dir, idx, tiny_siglip, siglip_encoder, after=2)
    assert "8 of its 12 files re-embedded" in caplog.text and "re-embeds only the 4 left" in caplog.text
    hint = finish_command(str(idx), str(tiny_siglip), [str(photo_dir)])  # names the model and the index dir
    assert f"`{hint}` re-embeds only the 4 left" in caplog.text and "--recompute`" not in caplog.text
    partial = _vectors_by_path(idx, photo_dir, tiny_siglip)

    caplog.clear()
    enc = CountingEncoder(siglip_encoder)
    with caplog.at_level("WARNING", logger="img_search.pipeline.runner"):
        s = _run(photo_dir, idx, tiny_siglip, lambda: enc, recompute=True, full_decode=True)
    assert (s.embedded, enc.images, s.unchanged, s.decode, s.recompute_left) == (4, 4, 8, "full", 0)
    assert "resuming the interrupted --recompute" in caplog.text
    assert "8 files already re-embedded are kept, 4 under these folders are re-embedded now" in caplog.text
    final = _vectors_by_path(idx, photo_dir, tiny_siglip)
    assert len(final) == 12 and {mode for mode, _ in final.values()} == {"full"}  # every vector recomputed
    # once each: the 8 written by the interrupted run are those kept, the 4 others were written by the resumed run
    kept = {p for p, (mode, _) in partial.items() if mode == "full"}
    assert len(kept) == 8 and all(final[p] == partial[p] for p in kept)
    assert all(final[p][1] > partial[p][1] for p in final.keys() - kept)
    with Catalog.in_dir(idx, readonly=True) as cat:  # finished: nothing of it is left in the catalog
        assert cat.recompute_state(cat.get_model(str(tiny_siglip)).id) is None
        assert cat.db.execute("SELECT COUNT(*) FROM recompute_files").fetchone()[0] == 0

    assert _run(photo_dir, idx, tiny_siglip, _never, full_decode=True).embedded == 0
    enc.images = 0  # a finished recompute is not resumed: the next --recompute re-embeds everything again
    s = _run(photo_dir, idx, tiny_siglip, lambda: enc, recompute=True, full_decode=True)
    assert s.embedded == 12 and enc.images == 12


def test_a_plain_run_after_an_interrupted_recompute_continues_it(
        photo_dir: Path, tmp_path: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture) -> None:
    """Without --recompute, `index` continues the unfinished recompute of its folders (in the recompute's decode mode,
    though this run asks for the default), never reuses a stale vector for a copy, and says what it does; the part
    under folders it does not index is reported with the command that finishes it."""
    idx = tmp_path / "idx"
    _interrupted_recompute(photo_dir, idx, tiny_siglip, siglip_encoder, after=1)
    stale = sorted(p for p, (mode, _) in _vectors_by_path(idx, photo_dir, tiny_siglip).items() if mode != "full")
    in_a = [p for p in stale if p.startswith(str(photo_dir / "a") + "/")]
    in_b = [p for p in stale if p.startswith(str(photo_dir / "b") + "/")]
    assert len(in_a) + len(in_b) == 8 and in_a and in_b  # 6 photos a folder: both have files left
    shutil.copy(in_a[0], photo_dir / "a" / "copy.jpg")  # its bytes have a vector the recompute has not replaced yet

    enc = CountingEncoder(siglip_encoder)
    with caplog.at_level("WARNING", logger="img_search.pipeline.runner"):
        s = _run(photo_dir / "a", idx, tiny_siglip, lambda: enc)  # only one of the two folders
    assert (s.embedded, s.reused, s.decode) == (len(in_a) + 1, 0, "full") and enc.images == len(in_a) + 1
    assert s.recompute_left == len(in_b)
    assert "continuing the unfinished --recompute started " in caplog.text
    hint = finish_command(str(idx), str(tiny_siglip), [str(photo_dir)])
    assert f"still has {len(in_b)} files to re-embed under {photo_dir}; `{hint}`" in caplog.text

    enc.images = 0
    s = _run(photo_dir, idx, tiny_siglip, lambda: enc)
    assert (s.embedded, s.recompute_left, enc.images) == (len(in_b), 0, len(in_b))
    final = _vectors_by_path(idx, photo_dir, tiny_siglip)
    assert len(final) == 13 and {mode for mode, _ in final.values()} == {"full"}  # the copy included
    with Catalog.in_dir(idx, readonly=True) as cat:
        assert cat.recompute_state(cat.get_model(str(tiny_siglip)).id) is None


@pytest.mark.parametrize("again", ["--recompute", "plain"])
def test_a_recompute_interrupted_before_its_first_batch_is_resumed_with_a_note(
        photo_dir: Path, tmp_path: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture, again: str) -> None:
    """With none of its files re-embedded yet, the next run still says it resumes (or continues) the recompute."""
    idx = tmp_path / "idx"
    with caplog.at_level("WARNING", logger="img_search.pipeline.runner"):
        _interrupted_recompute(photo_dir, idx, tiny_siglip, siglip_encoder, after=0)
    hint = finish_command(str(idx), str(tiny_siglip), [str(photo_dir)])
    assert f"0 of its 12 files re-embedded (committed, kept); `{hint}` re-embeds only the 12 left" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="img_search.pipeline.runner"):
        if again == "plain":
            s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)
        else:
            s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder, recompute=True, full_decode=True)
    assert (s.embedded, s.decode, s.recompute_left) == (12, "full", 0)
    how = "continuing the unfinished" if again == "plain" else "resuming the interrupted"
    assert f"{how} --recompute started " in caplog.text
    assert "0 files already re-embedded are kept, 12 under these folders are re-embedded now" in caplog.text


def test_a_recompute_decoding_another_way_starts_over(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                      siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """Resuming an interrupted --recompute --full-decode with a reduced-decode --recompute would leave two modes in
    the collection: it starts over instead."""
    idx = tmp_path / "idx"
    _interrupted_recompute(photo_dir, idx, tiny_siglip, siglip_encoder, after=2)
    enc = CountingEncoder(siglip_encoder)
    s = _run(photo_dir, idx, tiny_siglip, lambda: enc, recompute=True)
    assert (s.embedded, enc.images, s.decode) == (12, 12, "reduced-1x")
    assert {mode for mode, _ in _vectors_by_path(idx, photo_dir, tiny_siglip).values()} == {"reduced-1x"}


def test_touched_file_is_unchanged_not_reused(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                              siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """`touch` (same path, same bytes, new mtime) counts as unchanged and updates the row's mtime; nothing moved."""
    idx = tmp_path / "idx"
    _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)
    path = photo_dir / "a" / "img01.jpg"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    s = _run(photo_dir, idx, tiny_siglip, _never)
    assert (s.embedded, s.reused, s.unchanged, s.deleted) == (0, 0, 12, 0)
    with Catalog.in_dir(idx) as cat:
        assert cat.image(str(path)).mtime_ns == path.stat().st_mtime_ns
    s = _run(photo_dir, idx, tiny_siglip, _never)  # the row is current now: settled without hashing
    assert (s.embedded, s.reused, s.unchanged) == (0, 0, 12)


def test_identical_files_in_one_run_are_encoded_once(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                     siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """Two new files with the same bytes (cat.jpg, chelsea.jpg): one encoded, the other reuses its vector."""
    shutil.copy(photo_dir / "b" / "img00.jpg", photo_dir / "a" / "same-as-img00.jpg")
    enc = CountingEncoder(siglip_encoder)
    s = _run(photo_dir, tmp_path / "idx", tiny_siglip, lambda: enc)
    assert (s.scanned, s.embedded, s.reused, s.unchanged, len(s.failed)) == (13, 12, 1, 0, 0) and enc.images == 12
    with Catalog.in_dir(tmp_path / "idx") as cat:
        a, b = cat.image(str(photo_dir / "b" / "img00.jpg")), cat.image(str(photo_dir / "a" / "same-as-img00.jpg"))
        assert a.content_hash == b.content_hash and (a.status, b.status) == ("ok", "ok") and b.width == a.width
    s = _run(photo_dir, tmp_path / "idx", tiny_siglip, _never)
    assert (s.embedded, s.reused, s.unchanged) == (0, 0, 13)


def test_a_run_that_fails_to_load_its_model_marks_nothing_deleted(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                                  siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    """Deletions are marked once the model has loaded, so the run that does it reports them."""
    idx = tmp_path / "idx"
    _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)
    (photo_dir / "a" / "img01.jpg").unlink()
    make_jpeg(photo_dir / "new.jpg", seed=100)

    def broken():  # type: ignore[no-untyped-def]
        raise ImgSearchError("the model cannot be loaded")

    with pytest.raises(ImgSearchError, match="cannot be loaded"):
        _run(photo_dir, idx, tiny_siglip, broken)
    with Catalog.in_dir(idx) as cat:
        assert cat.image(str(photo_dir / "a" / "img01.jpg")).status == "ok"
    s = _run(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)
    assert (s.embedded, s.deleted, s.unchanged) == (1, 1, 11)
