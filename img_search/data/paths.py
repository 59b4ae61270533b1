"""One name per folder: ``canonical_folder`` resolves symlinks and, on Linux, bind mounts.

The catalog identifies files by absolute path, so a folder reached by two paths (a symlink to or into it, a
bind mount of it or of a folder inside it) would be indexed twice and every photo would come back twice.
``canonical_folder`` maps every such path to one: ``os.path.realpath`` for symlinks, then, for a path on a
bind mount, the same directory under the file system's primary mount when that mount is visible.

Bind mounts are read from ``/proc/self/mountinfo`` (proc(5)): each line gives a mount's device, its ``root``
(the directory of the file system it shows: ``/`` for an ordinary mount, ``/data/photos`` for
``mount --bind /data/photos /mnt/x``) and its mount point. A translated path is used only when it is the same
directory (same device and inode) as the original, so a stale or shadowed mount never yields a wrong name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/self/mountinfo (the fields this module needs)."""

    order: int  # line number: later mounts at the same point hide earlier ones
    device: str  # "major:minor"
    root: str  # directory of the file system shown at the mount point
    mount_point: str
    fs_type: str
    super_options: frozenset[str]

    @property
    def is_primary(self) -> bool:
        """A mount of the whole file system (root "/"), or a btrfs subvolume mounted as itself (not a bind)."""
        if self.root == "/":
            return True
        return self.fs_type == "btrfs" and f"subvol={self.root}" in self.super_options


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text (proc(5) format); malformed lines are skipped."""
    mounts = []
    for order, line in enumerate(text.splitlines()):
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            mounts.append(Mount(order, fields[2], _unescape(fields[3]), _unescape(fields[4]), fields[sep + 1],
                                frozenset(fields[sep + 3].split(",")) if len(fields) > sep + 3 else frozenset()))
        except (ValueError, IndexError):
            continue
    return mounts


def _read_mounts() -> list[Mount]:
    try:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as fh:
            return parse_mountinfo(fh.read())
    except OSError:
        return []  # not Linux, or /proc not mounted: symlinks are still resolved


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


def _join(top: str, rest: str) -> str:
    return top if not rest else (top.rstrip("/") + "/" + rest.lstrip("/"))


def _rest(path: str, top: str) -> str:
    return "" if path == top else path[len(top.rstrip("/")) + 1:]


def _mount_of(path: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount a path is on: the longest mount point above it, the latest one where several stack."""
    best: Mount | None = None
    for m in mounts:
        if _under(path, m.mount_point) and (
            best is None or len(m.mount_point) > len(best.mount_point)
            or (len(m.mount_point) == len(best.mount_point) and m.order > best.order)
        ):
            best = m
    return best


def _same_dir(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def translate_bind_mount(path: str, mounts: Sequence[Mount]) -> str:
    """``path`` (absolute, symlink-free) on a bind mount -> the same directory under the primary mount.

    Returns ``path`` unchanged when it is not on a bind mount, when no primary mount of its file system is
    visible, or when the candidate is not the same directory (device and inode) as ``path``.
    """
    here = _mount_of(path, mounts)
    if here is None:
        return path
    fs_path = _join(here.root, _rest(path, here.mount_point))  # where the directory is inside its file system
    same_fs = [m for m in mounts if m.device == here.device and m.is_primary]
    if here.is_primary:  # the same file system mounted again: the first mount names it
        candidates = sorted((m for m in same_fs if m.root == here.root and m.order < here.order),
                            key=lambda m: m.order)
    else:  # a bind mount: the primary mount closest to the directory (a btrfs subvolume before the top level)
        candidates = sorted((m for m in same_fs if _under(fs_path, m.root)), key=lambda m: (-len(m.root), m.order))
    for m in candidates:
        target = _join(m.mount_point, _rest(fs_path, m.root))
        if _mount_of(target, mounts) is m and _same_dir(target, path):
            return target
    return path


def canonical_folder(path: str, *, mounts: Sequence[Mount] | None = None) -> str:
    """The one absolute name of a folder: ``~`` expanded, symlinks resolved, bind mounts translated (Linux).

    ``mounts``: parsed mountinfo (default: read ``/proc/self/mountinfo``; an empty list off Linux). The result
    names the same directory as ``path``; a path that does not exist is returned absolute and normalised.
    """
    real = os.path.realpath(os.path.expanduser(path))
    table = _read_mounts() if mounts is None else mounts
    canonical = translate_bind_mount(real, table) if table else real
    if canonical != real:
        logger.info("%s is a bind mount of %s; indexing it under that path", real, canonical)
    return canonical
