"""Thumbnails of catalog images: made once with Pillow, cached by content hash, never from a path in a request.

A thumbnail is asked for by catalog image id only. The file read is the one the catalog row names, and only when
its bytes still hash to the content hash recorded when it was indexed (``data.images.content_hash``): a file
replaced since - by another picture, or by a symlink to anything else - is refused (``ConflictError``), so nothing
but indexed pictures is ever served. Deleted and failed images are not served (``NotFoundError``).

The cache lives in ``<index-dir>/thumbnails/`` or, where the index directory is read-only, in
``$XDG_CACHE_HOME/img-search/thumbnails/`` (``~/.cache``); names are ``<hash[:2]>/<hash>-<size>.jpg``, so a file
that changes gets a new thumbnail and identical files share one. Where neither can be written, thumbnails are
made for each request and not kept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from img_search.catalog import ImageRow
from img_search.errors import ConflictError, NotFoundError, UnavailableError

logger = logging.getLogger(__name__)

JPEG_QUALITY = 85  # Pillow's scale; visually clean at thumbnail sizes, ~10-20 kB at 256 px
CACHE_SUBDIR = "thumbnails"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/img-search/thumbnails`` (``~/.cache/...``), the XDG base-directory spec's cache home."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "img-search" / CACHE_SUBDIR


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Thumbnail:
    """A JPEG thumbnail: its bytes and an ETag (content hash and size: it changes when the picture does)."""

    data: bytes
    etag: str
    media_type: str = "image/jpeg"


class Thumbnails:
    """Makes and caches thumbnails whose longest side is ``size`` pixels (Pillow, LANCZOS)."""

    def __init__(self, index_dir: Path, size: int, *, fallback_dir: Path | None = None) -> None:
        self.size = size
        self._candidates = (Path(index_dir) / CACHE_SUBDIR, fallback_dir or user_cache_dir())
        self._dir: Path | bool | None = False  # False: not chosen yet; None: nowhere writable

    @property
    def cache_dir(self) -> Path | None:
        """Where thumbnails are kept: the index dir's ``thumbnails/`` if writable, else the user cache, else None."""
        if self._dir is False:
            self._dir = next((d for d in self._candidates if _writable(d)), None)
            if self._dir is None:
                logger.warning("no writable thumbnail cache (%s); thumbnails are made for each request",
                               ", ".join(map(str, self._candidates)))
            elif self._dir != self._candidates[0]:
                logger.info("index directory is read-only; thumbnails are cached in %s", self._dir)
        return self._dir if isinstance(self._dir, Path) else None

    def get(self, row: ImageRow | None, image_id: int) -> Thumbnail:
        """The thumbnail of the catalog row ``row`` (looked up by ``image_id``; None: unknown id).

        Raises ``NotFoundError`` (unknown, deleted or failed image; file gone), ``ConflictError`` (the file changed
        since it was indexed), ``UnavailableError`` (the file cannot be read).
        """
        if row is None or row.status != "ok" or row.content_hash is None:
            raise NotFoundError(f"no indexed image has id {image_id}")
        digest = row.content_hash.hex()
        etag = f'"{digest}-{self.size}"'
        cache = self.cache_dir
        target = cache / digest[:2] / f"{digest}-{self.size}.jpg" if cache is not None else None
        if target is not None:
            try:
                return Thumbnail(target.read_bytes(), etag)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("cannot read cached thumbnail %s (%s); making it again", target, exc)
        data = self._make(row)
        if target is not None:
            self._store(target, data)
        return Thumbnail(data, etag)

    def _make(self, row: ImageRow) -> bytes:
        from PIL import Image

        from img_search.data.images import content_hash, decode_image

        changed = ConflictError(f"image {row.id}: the file changed since it was indexed; re-run `img-search index`")
        try:
            # the path may now name a pipe (a read would block), a device or a bigger file: read only what was indexed
            st = os.stat(row.path)
            if not stat.S_ISREG(st.st_mode) or (row.size is not None and st.st_size != row.size):
                raise changed
            with open(row.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            raise NotFoundError(f"image {row.id}: its file is gone since it was indexed; re-run `img-search index`"
                                ) from None
        except OSError as exc:
            raise UnavailableError(f"image {row.id}: its file cannot be read ({exc.strerror or exc})") from None
        if content_hash(raw) != row.content_hash:
            raise changed
        image = decode_image(raw)
        image.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        return out.getvalue()

    @staticmethod
    def _store(target: Path, data: bytes) -> None:
        # a temporary name then os.replace: a reader never sees half a file; two writers race harmlessly
        tmp: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except OSError as exc:
            logger.warning("cannot cache thumbnail %s (%s)", target, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
