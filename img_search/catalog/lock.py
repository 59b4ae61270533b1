"""One writer per catalog: an advisory ``flock`` on ``index.lock`` in the index directory.

The kernel drops the lock when the process dies, however it dies, so a killed run never leaves a
stale lock behind. Readers take no lock (SQLite's WAL handles them).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from img_search.errors import CatalogLockedError

LOCK_FILENAME = "index.lock"


class IndexLock:
    def __init__(self, index_dir: Path) -> None:
        self.path = Path(index_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> IndexLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CatalogLockedError(
                f"another `img-search index` (pid {holder}) is already writing to {self.path.parent}; "
                "wait for it to finish (search works meanwhile) or use a different --index-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> IndexLock:
        return self.acquire()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
