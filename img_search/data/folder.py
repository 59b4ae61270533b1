"""Find the image files under a folder: the pipeline's source for ``img-search index``.

Symlinked folders are not followed (no cycles, no escaping the tree); symlinked files are, and are
recorded under the link's own path. Hidden files and folders (dot names) are skipped unless asked for.
Thumbnail / cache / trash / snapshot folders (``excludes.DEFAULT_EXCLUDES``) and the caller's exclude
patterns are pruned from the walk: an excluded folder is never listed. Photo files whose format img-search
cannot decode (camera RAW, ...: ``formats.UNSUPPORTED_FORMATS``) are reported as problems with a reason,
never dropped silently. Everything is decided by name: no file is opened. Names that are not valid UTF-8
stay as Python's surrogate-escaped str (``os.fsdecode``) and round-trip to bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from img_search.data.excludes import ExcludeRules, compile_excludes
from img_search.data.formats import UnsupportedFormat, unsupported_formats
from img_search.data.images import HEIF_AVAILABLE, IMAGE_EXTENSIONS, NOT_REGULAR

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
    excluded: int = 0  # folders pruned and files left out by the exclude patterns


def _stat_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink (target does not exist)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot stat: {exc.strerror or exc}"


def scan_folder(
    root: str,
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    include_hidden: bool = False,
    excludes: Iterable[str] = (),
    default_excludes: bool = True,
    unsupported: Mapping[str, UnsupportedFormat] | None = None,
) -> ScanResult:
    """Walk ``root`` (depth first, names sorted) and list its image files, with a reason for each problem.

    ``excludes``: gitignore-style patterns matched against paths relative to ``root`` (see ``data.excludes``),
    after ``DEFAULT_EXCLUDES`` unless ``default_excludes`` is False. ``unsupported``: extension -> format
    reported as "not supported" (default: ``formats.unsupported_formats``). Raises InvalidInputError for a
    malformed pattern; file system errors become ``ScanProblem``s, never exceptions.
    """
    rules = compile_excludes(excludes, default_excludes=default_excludes)
    exts = frozenset(e.lower() for e in extensions)
    skipped = unsupported_formats(HEIF_AVAILABLE) if unsupported is None else unsupported
    result = ScanResult()
    stack = [(os.path.abspath(root), "")]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.problems.append(ScanProblem(folder, f"cannot list folder: {_stat_problem(exc)}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            _scan_entry(entry, rel, exts, skipped, rules, include_hidden, subdirs, result)
        stack.extend(reversed(subdirs))
    return result


def _scan_entry(
    entry: os.DirEntry[str], rel: str, exts: frozenset[str], skipped: Mapping[str, UnsupportedFormat],
    rules: ExcludeRules, include_hidden: bool, subdirs: list[tuple[str, str]], result: ScanResult,
) -> None:
    name = entry.name
    if not include_hidden and name.startswith("."):
        return
    entry_rel = f"{rel}/{name}" if rel else name
    try:
        if entry.is_dir(follow_symlinks=False):
            if rules.excludes_dir(entry_rel):
                logger.debug("excluded folder %s", entry.path)
                result.excluded += 1
            else:
                subdirs.append((entry.path, entry_rel))
            return
        is_link = entry.is_symlink()
    except OSError as exc:
        result.problems.append(ScanProblem(entry.path, _stat_problem(exc)))
        return
    ext = os.path.splitext(name)[1].lower()
    if ext not in exts and ext not in skipped:
        if is_link:
            logger.debug("not following symlink %s", entry.path)
        return
    if rules.excludes_file(entry_rel):
        result.excluded += 1
        return
    if ext not in exts:
        result.problems.append(ScanProblem(entry.path, skipped[ext].reason(ext)))
        return
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError as exc:
        result.problems.append(ScanProblem(entry.path, _stat_problem(exc)))
        return
    if stat.S_ISDIR(st.st_mode):
        logger.debug("not following symlinked folder %s", entry.path)
        return
    if not stat.S_ISREG(st.st_mode):
        result.problems.append(ScanProblem(entry.path, NOT_REGULAR))
        return
    result.files.append(FileEntry(entry.path, st.st_size, st.st_mtime_ns))
