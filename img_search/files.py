"""Small file-system helpers shared by the layers that persist data: atomic replace, fsync, sparse copies."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from img_search.errors import InvalidInputError, StorageFullError, UnavailableError

# errnos of a full device or quota (write(2), fallocate(2), rename(2) on Linux)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` saying the device (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def storage_full(where: Path, detail: str) -> StorageFullError:
    """The ``StorageFullError`` of a write under ``where`` that failed for lack of space (``detail``: the cause)."""
    error = StorageFullError(
        f"no space left on the device holding {where} ({detail}): free some space or use an --index-dir on a bigger "
        "disk, then re-run the same command; everything committed so far is kept"
    )
    error.where, error.detail = str(where), detail
    return error


def output_write_error(path: Path | str, exc: OSError, what: str = "output file") -> UnavailableError:
    """The one-line error of a failed write of the output file ``path`` (``what`` names its option, e.g. "--png").

    A full device or quota (``is_no_space``) gives a ``StorageFullError`` (``where``: the folder, ``detail``: the
    cause), anything else an ``UnavailableError``; both say the file was not replaced, which holds for the writers
    that write a temporary file and rename it (``write_atomic``, ``AtomicParquetFile``, the map's PNG)."""
    path = Path(path)
    cause = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)  # pyarrow's strerror is a paragraph
    if is_no_space(exc):
        full = StorageFullError(
            f"{what} {str(path)!r}: no space left on the device ({cause}); free some space or write it elsewhere, "
            "then re-run the same command (nothing was written there; an existing file is kept as it was)")
        full.where, full.detail = str(path.parent), f"writing {path.name}"
        return full
    return UnavailableError(f"{what} {str(path)!r}: cannot write it ({cause}); an existing file is kept as it was")


def check_output_file(path: Path | str, what: str = "output file", *, create_parent: bool = False) -> Path:
    """``path`` as a ``Path`` once it can name a file this run writes; ``InvalidInputError`` (or ``UnavailableError``
    for a folder that cannot be written) otherwise.

    Refused (checked before any work, so a bad path fails in a second rather than after the computation): a path
    that is an existing folder, and one whose parent folder does not exist or is not a folder (the user creates
    it; nothing is created here unless ``create_parent``: crossfilter's CLI, seed 004, creates missing parent
    folders, and so does ours there). ``what`` names the option in the message (e.g. "--png"). An existing file is
    accepted (it is replaced). A folder this process cannot create a file in (read-only media, no permission, a
    pseudo file system such as ``/sys``) raises ``UnavailableError`` (exit 1): an empty probe file is created in it
    and removed at once, as the writers create their temporary file there before renaming it over ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{what} {str(path)!r} is a folder: give a file name (e.g. {str(path / 'NAME')!r})")
    parent = path.parent
    if create_parent and not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"{what} {str(path)!r}: cannot create the folder {str(parent)!r} "
                                    f"({exc.strerror or exc})") from None
    if parent.exists() and not parent.is_dir():  # a file where the folder should be: creating it would not help
        raise InvalidInputError(f"{what} {str(path)!r}: {str(parent)!r} is not a folder but a file; give a path "
                                "inside a folder")
    if not parent.is_dir():
        raise InvalidInputError(f"{what} {str(path)!r}: the folder {str(parent)!r} does not exist; create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise UnavailableError(f"{what} {str(path)!r}: cannot write in the folder {str(parent)!r} "
                               f"({exc.strerror or exc}); choose another folder") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) so readers see the old or the new content, never a mix.

    Written to a temporary file in the same folder, fsync-ed, then ``os.replace``-d (atomic on POSIX) and the
    folder fsync-ed, so a power cut leaves one version or the other. On any failure (a full disk) the temporary file
    is removed and ``path`` is left as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so the names created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root`` and ``root`` itself."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


def copy_file_sparse(src: Path, dst: Path) -> None:
    """Copy one file keeping its holes (Qdrant preallocates large sparse files); see ``copy_fd_sparse``."""
    fd = os.open(src, os.O_RDONLY)
    try:
        copy_fd_sparse(fd, dst)
    finally:
        os.close(fd)


def copy_fd_sparse(fd: int, dst: Path) -> None:
    """Copy the file open on ``fd`` to ``dst`` keeping its holes; a plain copy where the file system cannot report
    holes (``SEEK_DATA`` / ``SEEK_HOLE``, Linux >= 3.1)."""
    with open(fd, "rb", closefd=False) as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        try:
            while pos < size:
                try:
                    start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
                fin.seek(start)
                fout.seek(start)
                remaining = end - start
                while remaining > 0:
                    chunk = fin.read(min(remaining, 1 << 24))
                    if not chunk:
                        break
                    fout.write(chunk)
                    remaining -= len(chunk)
                pos = end
        except (AttributeError, OSError):  # no SEEK_DATA here: plain copy
            fin.seek(0)
            fout.seek(0)
            shutil.copyfileobj(fin, fout)
        fout.truncate(size)


def copy_tree_sparse(src: Path, dst: Path) -> None:
    """Copy the folder ``src`` to ``dst`` (created), file by file with ``copy_file_sparse``."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.rglob("*")):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file_sparse(item, target)
