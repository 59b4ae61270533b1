"""One writer per catalog: an advisory POSIX record lock on ``index.lock`` in the index directory.

The kernel drops the lock when the process dies, however it dies, so a killed run never leaves a
stale lock behind. POSIX (``lockf``) locks rather than ``flock``: they are not inherited by forked
decode workers, which could otherwise outlive a killed parent and keep the catalog locked.
Readers take no lock (SQLite's WAL handles them).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys
import threading
from pathlib import Path
from types import TracebackType

from img_search.errors import CatalogLockedError, CatalogReadOnlyError, StorageFullError
from img_search.files import is_no_space, storage_full

LOCK_FILENAME = "index.lock"

# POSIX locks do not conflict within one process (and closing any descriptor of the file drops them),
# so writers inside this process are tracked here as well
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


def _forget_in_child() -> None:
    # a forked child does not inherit POSIX locks, so it must not inherit the registry of held ones either
    global _HELD_GUARD
    _HELD.clear()
    _HELD_GUARD = threading.Lock()  # the parent's may have been held by another thread at fork time


os.register_at_fork(after_in_child=_forget_in_child)


class IndexLock:
    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def _read_only(self, exc: OSError) -> CatalogReadOnlyError | StorageFullError:
        if is_no_space(exc):
            return storage_full(self.path.parent, f"creating {self.path.name}: {exc.strerror}")
        return CatalogReadOnlyError(
            f"cannot write to the index directory {self.path.parent} ({exc.strerror or exc}); writing (index, tag, "
            "import-metadata, re-embedding) needs a writable --index-dir (search, similar and info work on a "
            "read-only one)"
        )

    def _refuse(self, holder: str) -> CatalogLockedError:
        return CatalogLockedError(
            f"another `img-search index` (pid {holder}) is already writing to {self.path.parent}; "
            "wait for it to finish (search works meanwhile) or use a different --index-dir"
        )

    def acquire(self) -> IndexLock:
        """Take the lock or raise ``CatalogLockedError`` (held elsewhere) / ``CatalogReadOnlyError`` (cannot write)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._read_only(exc) from None
        key = str(self.path.resolve())
        with _HELD_GUARD:
            if key in _HELD:
                raise self._refuse(str(os.getpid()))
            _HELD.add(key)
        try:
            self._acquire_file()
        except BaseException:
            with _HELD_GUARD:
                _HELD.discard(key)
            raise
        return self

    def _acquire_file(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._read_only(exc) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise self._refuse(holder) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            os.close(fd)  # closing drops the lock
            if is_no_space(exc):
                raise storage_full(self.path.parent, f"writing {self.path.name}: {exc.strerror}") from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            with _HELD_GUARD:
                _HELD.discard(str(self.path.resolve()))

    def __enter__(self) -> IndexLock:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


# struct flock of Linux (x86-64 and arm64): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid,
# padded to 32 bytes (fcntl(2), "Advisory record locking")
_FLOCK = "@hhqqi"
_FLOCK_SIZE = 32


def writer_active(index_dir: Path) -> bool | None:
    """Whether an `index` (any process) holds the writer lock of ``index_dir`` now, asked without taking it.

    Uses ``fcntl(F_GETLK)``, which reports a conflicting POSIX lock without placing one, so a reader probing never
    disturbs a writer starting at the same moment (and works on read-only media). True when this process holds it.
    False when no lock file exists or nobody holds it. None when it cannot be told (not Linux, unreadable file).
    """
    path = Path(index_dir) / LOCK_FILENAME
    try:
        key = str(path.resolve())
    except OSError:
        return None
    with _HELD_GUARD:
        if key in _HELD:  # never open (and close) the file here: closing any descriptor drops our own lock
            return True
    if not sys.platform.startswith("linux"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0).ljust(_FLOCK_SIZE, b"\0")
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    finally:
        os.close(fd)
    l_type = struct.unpack(_FLOCK, answer[: struct.calcsize(_FLOCK)])[0]
    return bool(l_type != fcntl.F_UNLCK)
