"""The catalog sink (pipeline/writer.py): a background thread commits each batch in one transaction.

Committed state is always read through a separate SQLite connection, as a concurrent `search` would see it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from img_search.catalog import CATALOG_FILENAME, Catalog, ImageRecord
from img_search.catalog.schema import SCHEMA_VERSION
from img_search.data.folder import FileEntry
from img_search.data.images import content_hash
from img_search.errors import CatalogError
from img_search.pipeline.reader import ReadBatch, ReadItem
from img_search.pipeline.writer import QUEUE_DEPTH, BackgroundWriter, CatalogWriter

DIM = 4
THREAD_NAME = "img-search-writer"


@pytest.fixture()
def catalog(tmp_path: Path) -> tuple[Path, int]:
    """A migrated catalog with one registered model: (path of the SQLite file, model id)."""
    path = tmp_path / "idx" / CATALOG_FILENAME
    with Catalog(path) as cat:
        model_id = cat.ensure_model("fake", family="siglip", dim=DIM, logit_scale=1.0, logit_bias=-1.0)
    return path, model_id


def ok_records(tag: str, n: int) -> list[ImageRecord]:
    return [ImageRecord(f"/{tag}/{i}.jpg", 100 + i, 10**18 + i, content_hash(f"{tag}/{i}".encode()), 8 + i, 6)
            for i in range(n)]


def failed_records(tag: str, n: int) -> list[ImageRecord]:
    return [ImageRecord(f"/{tag}/bad{i}.jpg", 7, 1, error=f"broken {i}") for i in range(n)]


def vectors(n: int, start: float = 0.0) -> NDArray[np.float32]:
    return (start + np.arange(n * DIM, dtype=np.float32)).reshape(n, DIM)


def committed(path: Path) -> tuple[int, int]:
    """(image rows, embedding rows) that another connection sees."""
    with sqlite3.connect(path) as db:
        images = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        embeddings = db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    db.close()
    return images, embeddings


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_put_stores_each_ok_file_with_its_vector_and_each_failure_with_its_reason(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    files = [FileEntry(f"/photos/{i}.jpg", 1000 + i, 5_000 + i) for i in range(5)]
    hashes = [content_hash(bytes([i])) for i in range(5)]
    ok = [ReadItem(files[i], hashes[i], 30 + i, 20 + i) for i in (0, 2, 3)]
    failed = [ReadItem(files[i], error=f"reason {i}") for i in (1, 4)]
    vecs = vectors(3, start=0.5)
    writer = CatalogWriter(path, model_id)
    writer.put(ReadBatch(ok=ok, failed=failed), vecs)
    writer.close()

    with Catalog(path) as cat:
        for row, item in enumerate(ok):
            image = cat.image(item.source.path)
            assert image is not None
            assert (image.status, image.size, image.mtime_ns, image.content_hash, image.width, image.height) == (
                "ok", item.source.size, item.source.mtime_ns, item.content_hash, item.width, item.height)
            assert item.content_hash is not None
            np.testing.assert_array_equal(cat.vector_for(model_id, item.content_hash), vecs[row])
        for item in failed:
            image = cat.image(item.source.path)
            assert image is not None
            # size and mtime are kept, so an unchanged broken file is not retried on every run
            assert (image.status, image.error, image.size, image.mtime_ns, image.content_hash) == (
                "error", item.error, item.source.size, item.source.mtime_ns, None)
    assert committed(path) == (5, 3)


def test_each_batch_is_committed_before_on_commit_reports_it(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    seen: list[tuple[int, int, tuple[int, int]]] = []
    writer = CatalogWriter(path, model_id, on_commit=lambda n_ok, n_failed: seen.append((n_ok, n_failed,
                                                                                         committed(path))))
    writer.put_records(ok_records("a", 2) + failed_records("a", 1), vectors(2))
    writer.put_records(failed_records("b", 2), None)  # a batch where nothing decoded carries no vectors
    writer.put_records(ok_records("c", 3), vectors(3, start=100))
    writer.close()
    assert seen == [(2, 1, (3, 2)), (0, 2, (5, 2)), (3, 0, (8, 5))]


def test_a_batch_failing_part_way_leaves_none_of_it_and_the_error_reaches_close(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    poisoned = ok_records("b", 3)
    # the last image row cannot be stored (SQLite integers are 64-bit): the vectors and the first two rows of
    # this batch are already written inside the transaction when it fails
    poisoned[-1] = ImageRecord(poisoned[-1].path, 1, 2**70, poisoned[-1].content_hash, 1, 1)
    writer = CatalogWriter(path, model_id)
    writer.put_records(ok_records("a", 2), vectors(2))
    writer.put_records(poisoned, vectors(3, start=10))
    with pytest.raises(OverflowError):
        writer.close()
    assert committed(path) == (2, 2)
    with Catalog(path) as cat:
        assert sorted(cat.images_under("/a")) == ["/a/0.jpg", "/a/1.jpg"]
        assert cat.images_under("/b") == {} and cat.vector_for(model_id, poisoned[0].content_hash or b"") is None
    assert writer_threads() == []


# runs in a child process: commits batch "a", then is SIGKILLed inside batch "b"'s open transaction, after every
# statement of the batch ran and before its COMMIT
_KILLED_MID_BATCH = """
import os, signal, sys
from contextlib import contextmanager
from pathlib import Path
import numpy as np
from img_search.catalog import Catalog, ImageRecord
from img_search.pipeline.writer import CatalogWriter

real_transaction = Catalog.transaction

@contextmanager
def dying_transaction(self):
    with real_transaction(self) as db:
        yield db
        if db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] > 2:  # batch b is in, uncommitted
            os.kill(os.getpid(), signal.SIGKILL)

Catalog.transaction = dying_transaction
path, model_id = Path(sys.argv[1]), int(sys.argv[2])
def batch(tag, n):
    return [ImageRecord(f"/{tag}/{i}.jpg", 1, 1, bytes([ord(tag), i]) * 8, 2, 2) for i in range(n)]
writer = CatalogWriter(path, model_id)
writer.put_records(batch("a", 2), np.ones((2, 4), np.float32))
writer.put_records(batch("b", 3), np.ones((3, 4), np.float32))
writer.close()
"""


def test_a_batch_killed_part_way_leaves_none_of_it(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    done = subprocess.run([sys.executable, "-c", _KILLED_MID_BATCH, str(path), str(model_id)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr  # it did die inside the second batch's transaction
    assert committed(path) == (2, 2)
    with Catalog(path) as cat:
        assert sorted(cat.images_under("/a")) == ["/a/0.jpg", "/a/1.jpg"] and cat.images_under("/b") == {}


def test_a_writer_error_surfaces_at_the_next_put_and_put_never_blocks_after_it(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    writer = CatalogWriter(path, model_id)
    writer.put_records(ok_records("a", 3), vectors(2))  # one vector short: the catalog refuses the batch
    deadline = time.monotonic() + 10
    with pytest.raises(ValueError, match="one to one"):
        while time.monotonic() < deadline:  # the thread reports at the first put after it failed
            writer.put_records(ok_records("b", 1), vectors(1))
            time.sleep(0.01)
    for _ in range(QUEUE_DEPTH + 2):  # more than the queue holds: each call raises at once, none waits
        with pytest.raises(ValueError, match="one to one"):
            writer.put_records(ok_records("c", 1), vectors(1))
    with pytest.raises(ValueError, match="one to one"):
        writer.close()
    with Catalog(path) as cat:
        assert cat.images_under("/a") == {}  # the refused batch left nothing
    assert writer_threads() == []


def test_an_on_commit_error_surfaces_at_close(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog

    def on_commit(n_ok: int, n_failed: int) -> None:
        raise RuntimeError("progress bar broke")

    writer = CatalogWriter(path, model_id, on_commit=on_commit)
    writer.put_records(failed_records("a", 1), None)
    with pytest.raises(RuntimeError, match="progress bar broke"):
        writer.close()


def test_close_commits_everything_queued_and_ends_the_thread(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    writer = CatalogWriter(path, model_id)
    assert len(writer_threads()) == 1
    for b in range(5 * QUEUE_DEPTH):  # more batches than the queue holds: put waits for room, never drops
        writer.put_records(ok_records(f"b{b:02d}", 4) + failed_records(f"b{b:02d}", 1), vectors(4, start=b))
    writer.close()
    assert committed(path) == (5 * QUEUE_DEPTH * 5, 5 * QUEUE_DEPTH * 4)
    assert writer_threads() == []


def test_close_with_nothing_put_returns(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    writer = CatalogWriter(path, model_id)
    writer.close()
    assert committed(path) == (0, 0) and writer_threads() == []


def _newer_catalog(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()


def test_a_catalog_the_thread_cannot_open_is_an_error_in_the_caller(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    _newer_catalog(path)
    writer = CatalogWriter(path, model_id)
    with pytest.raises(CatalogError, match="newer than this img-search"):  # at the put or at the close
        writer.put_records(failed_records("a", 1), None)
        writer.close()
    with pytest.raises(CatalogError, match="newer than this img-search"):  # and close, however often, says so
        writer.close()
    assert writer_threads() == []


def test_a_catalog_the_thread_cannot_open_does_not_hang_put(catalog: tuple[Path, int]) -> None:
    path, model_id = catalog
    _newer_catalog(path)
    writer = CatalogWriter(path, model_id)
    outcome: list[Any] = []

    def feed() -> None:
        try:
            for _ in range(QUEUE_DEPTH + 2):  # more than the queue holds, with no thread committing
                writer.put_records(failed_records("a", 1), None)
            writer.close()
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append("no error")

    feeder = threading.Thread(target=feed, daemon=True)  # daemon: if put() hangs, the test run still ends
    feeder.start()
    feeder.join(3)
    assert not feeder.is_alive(), "put() or close() is blocked on a queue nobody drains"
    assert len(outcome) == 1 and isinstance(outcome[0], CatalogError)


def test_background_writer_writes_in_order_and_reraises_the_first_error_without_blocking() -> None:
    written: list[int] = []
    closed: list[str] = []

    def write(conn: str, item: int) -> None:
        if item == 3:
            raise OSError(28, "No space left on device")
        written.append(item)

    writer: BackgroundWriter[str, int] = BackgroundWriter(lambda: "conn", write, closed.append, name="test-writer")
    for i in range(3):
        writer.submit(i)
    writer.submit(3)
    # After the failure the thread drains what is queued: more submissions than the queue holds never block, and
    # the first error reaches the caller at a later submit or at close.
    with pytest.raises(OSError, match="No space left"):
        for i in range(4, 4 + 4 * QUEUE_DEPTH):
            writer.submit(i)
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert written == [0, 1, 2] and closed == ["conn"]


def test_background_writer_reports_a_store_that_cannot_open() -> None:
    def connect() -> str:
        raise CatalogError("the catalog is locked by another process")

    writer: BackgroundWriter[str, int] = BackgroundWriter(connect, lambda c, i: None, lambda c: None, name="t")
    with pytest.raises(CatalogError, match="locked"):
        for i in range(2 * QUEUE_DEPTH + 2):
            writer.submit(i)
    with pytest.raises(CatalogError):
        writer.close()
