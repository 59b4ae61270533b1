"""Find the image files under a folder: the pipeline's source for ``img-search index``.

Symlinked folders are not followed (no cycles, no escaping the tree); symlinked files are, and are
recorded under the link's own path. Hidden files and folders (dot names) are skipped. Names that are
not valid UTF-8 stay as Python's surrogate-escaped str (``os.fsdecode``) and round-trip to bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from img_search.data.images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # absolute, surrogate-escaped where the name is not UTF-8
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class ScanProblem:
    path: str
    reason: str


@dataclass
class ScanResult:
    files: list[FileEntry] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)


def _stat_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink (target does not exist)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot stat: {exc.strerror or exc}"


def scan_folder(root: str, *, extensions: Iterable[str] = IMAGE_EXTENSIONS, include_hidden: bool = False) -> ScanResult:
    exts = frozenset(e.lower() for e in extensions)
    result = ScanResult()
    stack = [os.path.abspath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.problems.append(ScanProblem(folder, f"cannot list folder: {_stat_problem(exc)}"))
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            if not include_hidden and name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                    continue
                is_link = entry.is_symlink()
            except OSError as exc:
                result.problems.append(ScanProblem(entry.path, _stat_problem(exc)))
                continue
            if os.path.splitext(name)[1].lower() not in exts:
                if is_link:
                    logger.debug("not following symlink %s", entry.path)
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                result.problems.append(ScanProblem(entry.path, _stat_problem(exc)))
                continue
            if stat.S_ISDIR(st.st_mode):
                logger.debug("not following symlinked folder %s", entry.path)
                continue
            if not stat.S_ISREG(st.st_mode):
                result.problems.append(ScanProblem(entry.path, "not a regular file (device, socket or pipe)"))
                continue
            result.files.append(FileEntry(entry.path, st.st_size, st.st_mtime_ns))
        stack.extend(reversed(subdirs))
    return result
