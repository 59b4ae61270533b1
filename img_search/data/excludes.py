"""Folders and files a walk leaves out: the default list of thumbnail / cache / trash / snapshot folders, and
the user's own patterns.

Patterns use ``.gitignore`` syntax (through ``pathspec``'s ``GitIgnoreSpec``) and are matched against the path
relative to the indexed folder, with ``/`` as separator:

- a pattern without a slash (``@eaDir``, ``*.tmp``) matches that name at any depth;
- a slash at the start or in the middle anchors it to the indexed folder (``/scans``, ``2019/raw``);
- a trailing slash matches folders only (``cache/``); ``*``, ``?``, ``[...]`` stay within one name, ``**``
  spans folders (``**/export/*.jpg``);
- ``!pattern`` re-includes what an earlier pattern left out (the default list comes first, so ``!@eaDir/``
  brings Synology's thumbnails back), except inside a folder that is itself left out, as in git: excluded
  folders are pruned from the walk, never listed.

One difference from a ``.gitignore`` file: each pattern is one option value, so a leading ``#`` is a literal
character (``#recycle``), never a comment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pathspec

from img_search.errors import InvalidInputError

# Thumbnail, cache, trash and snapshot folders that NAS boxes, operating systems and photo tools create inside
# photo folders. Their pictures are copies (thumbnails, previews, deleted or snapshotted files) that would
# otherwise come back as near-duplicate hits of every photo. Names are case-sensitive, as the tools write them.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    # Synology DSM: "@eaDir" beside every photo holds its generated thumbnails (SYNOPHOTO_THUMB_*.jpg) and
    # extended attributes; "#recycle" is a shared folder's Recycle Bin (Synology knowledge base, "Create a
    # shared folder": deleted files "are moved to a folder named #recycle"); "#snapshot" is the read-only view
    # of Snapshot Replication's snapshots (each a whole earlier copy of the share).
    "@eaDir/", r"\#recycle/", r"\#snapshot/",
    # QNAP QTS / QuTS hero: ".@__thumb" holds File Station / Photo Station / QuMagie thumbnails, "@Recycle" is
    # the Network Recycle Bin, "@Recently-Snapshot" the snapshot view of a shared folder.
    ".@__thumb/", "@Recycle/", "@Recently-Snapshot/",
    # Other snapshot folders (whole earlier copies of the tree): ZFS ".zfs" (visible with snapdir=visible),
    # NetApp ONTAP ".snapshot" (NFS) and "~snapshot" (SMB), snapper's (btrfs) ".snapshots".
    ".zfs/", ".snapshot/", "~snapshot/", ".snapshots/",
    # Windows: the per-volume Recycle Bin ("$RECYCLE.BIN" since Vista, "RECYCLER" on XP, "RECYCLED" on 9x/FAT)
    # and "System Volume Information" (restore points, search index).
    "$RECYCLE.BIN/", "RECYCLER/", "RECYCLED/", "System Volume Information/",
    # macOS: the per-volume trash ".Trashes" and the home trash ".Trash"; the FSEvents log ".fseventsd"; the
    # Spotlight index ".Spotlight-V100"; ".TemporaryItems"; the versions store ".DocumentRevisions-V100";
    # AppleDouble files "._<name>" that carry a file's resource fork on non-Apple volumes (named like the photo,
    # not pictures), and netatalk's ".AppleDouble" folders of the same.
    ".Trashes/", ".Trash/", ".fseventsd/", ".Spotlight-V100/", ".TemporaryItems/", ".DocumentRevisions-V100/",
    "._*", ".AppleDouble/",
    # Apple Photos: a library's "resources/derivatives" holds the previews and thumbnails it generated (the
    # originals are in "originals", "Masters" before macOS 10.15).
    "**/*.photoslibrary/resources/derivatives/",
    # Lightroom Classic: "<catalog> Previews.lrdata" and "<catalog> Smart Previews.lrdata" beside the catalog.
    "*Previews.lrdata/",
    # freedesktop.org Thumbnail Managing Standard: per-user "~/.cache/thumbnails" (formerly "~/.thumbnails"), used
    # by GNOME, KDE and digiKam, and the shared ".sh_thumbnails" beside the pictures (removable media); Android's
    # "DCIM/.thumbnails" has the same name.
    ".thumbnails/", ".sh_thumbnails/", "**/.cache/thumbnails/",
    # freedesktop.org Trash specification: ".Trash-<uid>" on removable media and the home trash
    # "~/.local/share/Trash".
    ".Trash-*/", "**/.local/share/Trash/",
    # Shotwell's thumbnails ("~/.cache/shotwell/thumbs").
    "**/.cache/shotwell/thumbs/",
    # Nextcloud: "<data directory>/appdata_<instance id>/preview" holds generated previews of every file.
    "**/appdata_*/preview/",
    # Dropbox's ".dropbox.cache" (copies of recently changed and deleted files).
    ".dropbox.cache/",
)


def _as_pattern(text: str) -> str:
    """A user's exclude -> one gitignore line (a leading '#' is literal: one value per option, no comments)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"an exclude pattern must be a non-empty glob, got {text!r}")
    if "\n" in text or "\r" in text:
        raise InvalidInputError(f"an exclude pattern must be one line, got {text!r}")
    return "\\" + text if text.startswith("#") else text


def check_excludes(excludes: Iterable[str]) -> tuple[str, ...]:
    """Validate user exclude patterns; returns them as a tuple. Raises InvalidInputError naming a bad one."""
    out = tuple(excludes) if not isinstance(excludes, str) else (excludes,)
    try:
        pathspec.GitIgnoreSpec.from_lines([_as_pattern(p) for p in out])
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"bad exclude pattern: {exc}") from None
    return out


@dataclass(frozen=True)
class ExcludeRules:
    """Compiled exclude patterns; paths are relative to the indexed folder, '/'-separated.

    Folders are matched against every pattern; files only against the patterns that can name a file (no
    trailing slash): a folder-only pattern acts by pruning the folder, so files never need testing against it.
    That keeps a walk of 10,000 files with the default list (all folder-only but ``._*``) about as fast as one
    without it.
    """

    dirs: pathspec.GitIgnoreSpec | None
    files: pathspec.GitIgnoreSpec | None

    def excludes_dir(self, rel: str) -> bool:
        return self.dirs is not None and self.dirs.match_file(rel + "/")

    def excludes_file(self, rel: str) -> bool:
        return self.files is not None and self.files.match_file(rel)


def _spec(lines: list[str]) -> pathspec.GitIgnoreSpec | None:
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def compile_excludes(excludes: Iterable[str] = (), *, default_excludes: bool = True) -> ExcludeRules:
    """``DEFAULT_EXCLUDES`` (unless ``default_excludes`` is False) followed by the user's patterns.

    Raises InvalidInputError for an empty or malformed pattern.
    """
    lines = [*(DEFAULT_EXCLUDES if default_excludes else ()), *(_as_pattern(p) for p in check_excludes(excludes))]
    return ExcludeRules(_spec(lines), _spec([line for line in lines if not line.rstrip().endswith("/")]))
