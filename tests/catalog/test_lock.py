"""The writer lock (catalog/lock.py): one writer per index directory, across processes and within one.

A second process stands in for a second `img-search index` run; it only imports the lock module, so it starts in a
fraction of a second. The end-to-end refusal through ``index_folders`` lives in tests/pipeline/test_runner.py.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from img_search.catalog.lock import LOCK_FILENAME, IndexLock, writer_active
from img_search.errors import CatalogLockedError, CatalogReadOnlyError

# a holder process: takes the lock, says so, then does what the test asks ("sleep", "exit" without releasing,
# "fork": start a child that inherits every descriptor, print its pid, and sleep)
_HOLDER = """
import os, sys, time
from img_search.catalog.lock import IndexLock
lock = IndexLock(sys.argv[1]).acquire()
print("locked", flush=True)
if sys.argv[2] == "exit":
    sys.exit(0)
if sys.argv[2] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
time.sleep(60)
"""

# a probe process: tries to take the lock once and reports the outcome on stdout
_PROBE = """
import sys
from img_search.catalog.lock import IndexLock
from img_search.errors import CatalogLockedError
try:
    IndexLock(sys.argv[1]).acquire()
except CatalogLockedError as exc:
    print("refused:", exc)
else:
    print("acquired")
"""


def _start_holder(index_dir: Path, then: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(index_dir), then], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _probe(index_dir: Path) -> str:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(index_dir)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def test_lock_file_records_the_holder_pid(tmp_path: Path) -> None:
    with IndexLock(tmp_path / "idx") as lock:
        assert lock.path == tmp_path / "idx" / LOCK_FILENAME
        assert lock.path.read_text() == str(os.getpid())


def test_second_writer_in_this_process_is_refused_under_any_spelling(tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    (tmp_path / "alias").symlink_to(index_dir, target_is_directory=True)
    with IndexLock(index_dir):
        for spelling in (index_dir, tmp_path / "alias", tmp_path / "idx" / ".." / "idx"):
            with pytest.raises(CatalogLockedError, match=f"pid {os.getpid()}"):
                IndexLock(spelling).acquire()
        # POSIX locks die when the process closes ANY descriptor of the file: the refused attempts above must not
        # have opened it, so another process is still kept out
        assert _probe(index_dir).startswith(f"refused: another `img-search index` (pid {os.getpid()})")
    again = IndexLock(tmp_path / "alias").acquire()  # released: any spelling can take it now
    again.release()


def test_release_on_exit_of_the_with_block_even_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), IndexLock(tmp_path):
        raise RuntimeError("boom")
    assert _probe(tmp_path) == "acquired"
    with IndexLock(tmp_path):  # and this process can take it again
        pass


def test_explicit_release_is_idempotent(tmp_path: Path) -> None:
    lock = IndexLock(tmp_path).acquire()
    lock.release()
    lock.release()
    assert _probe(tmp_path) == "acquired"


def test_writer_in_another_process_keeps_us_out_and_is_named(tmp_path: Path) -> None:
    holder = _start_holder(tmp_path, "sleep")
    try:
        with pytest.raises(CatalogLockedError, match=rf"\(pid {holder.pid}\) is already writing to {tmp_path}"):
            IndexLock(tmp_path).acquire()
        with pytest.raises(CatalogLockedError):  # a refusal leaves nothing behind in this process: still refused
            IndexLock(tmp_path).acquire()
    finally:
        _stop(holder)


def test_we_keep_another_process_out_and_are_named(tmp_path: Path) -> None:
    with IndexLock(tmp_path):
        assert _probe(tmp_path).startswith(f"refused: another `img-search index` (pid {os.getpid()})")
    assert _probe(tmp_path) == "acquired"


@pytest.mark.parametrize("how", ["exit without release", "kill -9"])
def test_lock_dies_with_its_holder(tmp_path: Path, how: str) -> None:
    holder = _start_holder(tmp_path, "exit" if how == "exit without release" else "sleep")
    if how == "kill -9":
        os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=30) == (0 if how == "exit without release" else -signal.SIGKILL)
    assert (tmp_path / LOCK_FILENAME).read_text() == str(holder.pid)  # the stale pid is left, the lock is not
    with IndexLock(tmp_path) as lock:
        assert lock.path.read_text() == str(os.getpid())


def test_forked_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    """A decode worker forked by a writer that is then killed must not keep the catalog locked."""
    holder = _start_holder(tmp_path, "fork")
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    try:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the child, with its copy of the lock file's descriptor, is still alive
        with IndexLock(tmp_path):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def _try_in_fork_child(index_dir: str, go: Any, out: Any) -> None:
    go.wait(30)
    try:
        IndexLock(Path(index_dir)).acquire().release()
    except CatalogLockedError as exc:
        out.put(f"refused: {exc}")
    else:
        out.put("acquired")


def _fork_child_outcome(index_dir: Path, *, release_first: bool) -> str:
    """Hold the lock, fork a child, optionally release, then let the child try; return what it reports."""
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    lock = IndexLock(index_dir).acquire()
    try:
        child = ctx.Process(target=_try_in_fork_child, args=(str(index_dir), go, out))
        child.start()
        if release_first:
            lock.release()
        go.set()
        outcome: str = out.get(timeout=30)
        child.join(30)
        return outcome
    finally:
        lock.release()


def test_forked_child_is_refused_while_the_parent_holds_the_lock(tmp_path: Path) -> None:
    assert _fork_child_outcome(tmp_path, release_first=False).startswith("refused:")


def test_forked_child_sees_the_kernel_lock_not_a_stale_registry(tmp_path: Path) -> None:
    refused = _fork_child_outcome(tmp_path, release_first=False)
    assert f"pid {os.getpid()})" in refused  # the holder is the parent, not the child
    assert _fork_child_outcome(tmp_path, release_first=True) == "acquired"


# -- a directory this process cannot write ------------------------------------------------------------------------
class Unwritable:
    """An index directory that refuses writes, and a way to make it writable again. Root ignores permission bits,
    so as root the directory (and the lock file when there is one) is made immutable (``chattr +i``) instead."""

    def __init__(self, index_dir: Path, with_lock_file: bool) -> None:
        self.dir = index_dir
        index_dir.mkdir()
        self.targets = [index_dir]
        if with_lock_file:
            (index_dir / LOCK_FILENAME).write_text("12345")
            self.targets.insert(0, index_dir / LOCK_FILENAME)
        self.as_root = os.geteuid() == 0

    def _set(self, target: Path, writable: bool) -> bool:
        if self.as_root:
            done = subprocess.run(["chattr", "-i" if writable else "+i", str(target)], capture_output=True)
            return done.returncode == 0
        target.chmod((0o755 if writable else 0o555) if target.is_dir() else (0o644 if writable else 0o444))
        return True

    def lock_down(self) -> bool:
        return all(self._set(t, writable=False) for t in self.targets)

    def restore(self) -> None:
        for target in reversed(self.targets):
            self._set(target, writable=True)


@pytest.fixture(params=["new index dir", "existing lock file"])
def unwritable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Unwritable]:
    ro = Unwritable(tmp_path / "ro", with_lock_file=request.param == "existing lock file")
    if ro.as_root and not shutil.which("chattr"):
        pytest.skip("running as root without chattr: no way to make a directory unwritable")
    try:
        if not ro.lock_down():
            pytest.skip("chattr +i is not supported on this file system")
        try:
            (ro.dir / "probe").touch()
        except OSError:
            pass
        else:
            pytest.skip("could not make the directory unwritable")
        yield ro
    finally:
        ro.restore()


def test_unwritable_directory_is_a_typed_refusal_that_holds_nothing(unwritable: Unwritable) -> None:
    before = sorted(p.name for p in unwritable.dir.iterdir())
    with pytest.raises(CatalogReadOnlyError, match=f"cannot write to the index directory {unwritable.dir}") as info:
        IndexLock(unwritable.dir).acquire()
    # the lock serves every writing command, not only `index`: the message names them all
    assert "writing (index, tag, import-metadata, re-embedding) needs a writable --index-dir" in str(info.value)
    assert "`index` needs" not in str(info.value)
    assert sorted(p.name for p in unwritable.dir.iterdir()) == before
    # nothing is left registered as held: once writable again, this process takes the lock at once
    unwritable.restore()
    with IndexLock(unwritable.dir) as lock:
        assert lock.path.read_text() == str(os.getpid())


def test_index_dir_that_cannot_be_created_is_a_typed_refusal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CatalogReadOnlyError, match="cannot write to the index directory"):
        IndexLock(blocker / "idx").acquire()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="F_GETLK probe is Linux-only (None elsewhere)")
def test_writer_active_asks_without_taking_the_lock(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    assert writer_active(idx) is False  # no lock file yet
    with IndexLock(idx):
        assert writer_active(idx) is True  # this process: answered without opening (closing would drop the lock)
        assert writer_active(idx) is True  # ... and still held after asking twice
        assert _probe(idx).startswith("refused")
    assert writer_active(idx) is False
    holder = _start_holder(idx, "sleep")
    try:
        for _ in range(3):
            assert writer_active(idx) is True  # another process holds it; asking never takes it from them
        assert _probe(idx).startswith("refused")
    finally:
        _stop(holder)  # SIGKILL: the kernel drops the lock with the process
    assert writer_active(idx) is False
    with IndexLock(idx):  # and the lock is free for the next writer
        pass


def test_search_during_the_first_index_run_says_a_run_is_writing(tmp_path: Path) -> None:
    from img_search.catalog import Catalog
    from img_search.errors import CatalogNotFoundError
    from img_search.search.collection import resolve_model

    idx = tmp_path / "idx"
    with Catalog.in_dir(idx):  # created, nothing in it yet
        pass
    with Catalog.in_dir(idx, readonly=True) as cat:
        with pytest.raises(CatalogNotFoundError, match="is empty: run"):
            resolve_model(cat, None)
        holder = _start_holder(idx, "sleep")
        try:
            with pytest.raises(CatalogNotFoundError, match="an `img-search index` run is writing it"):
                resolve_model(cat, None)
        finally:
            _stop(holder)
