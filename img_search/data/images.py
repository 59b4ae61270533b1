"""Turn a file's bytes into an RGB PIL image, or a clear reason why not.

Every mode Pillow decodes is converted to RGB: alpha is composited on white (transparent pixels
are not black), 16-bit and 32-bit greyscale are scaled (not clipped) to 8 bits, CMYK/P/LA/1/...
go through Pillow's converters. EXIF orientation is applied; animations give their first frame.

Formats: Pillow's plugins plus HEIC/HEIF through the decoder-only ``pi-heif`` plugin, registered once when this
module is imported (``HEIF_AVAILABLE`` says whether that worked); ``data.formats`` lists the extensions.

Pixel limits: Pillow's decompression-bomb guard stays on. ``configure_pixel_limit`` sets it once, at start-up,
from the user's setting; a call may ask for a lower limit, never a higher one (a process-wide value changed per
call would race in a threaded server). ``decode_image`` checks the header against the call's limit before
decoding and names the limit in its reason.

Reduced-scale JPEG decoding (``min_side``): libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size by scaling the
DCT (Pillow's ``Image.draft``; what libvips' shrink-on-load does), which costs a fraction of a full decode and leaves
the model's processor a smaller image to resize. ``decode_image(..., min_side=n)`` picks the smallest such scale
that keeps both sides >= ``n``; the indexing pipeline asks for ``REDUCED_DECODE_FACTOR`` x the model's input side
(``reduced_decode_side``), so the processor never upsamples. The vectors differ slightly from a full decode's
(docs/PERFORMANCE.md, "Reduced-scale JPEG decoding"), so the decode mode is recorded with a collection's vectors
(``embeddings.decode``, schema v4). The pixel limit is checked on the full size, before anything is decoded; EXIF
orientation is applied after the scaled decode; other formats (PNG, HEIC, MPO, ...) decode in full whatever
``min_side`` says. The full-resolution size (oriented) stays readable through ``full_size``.

Large files: ``read_file`` returns the bytes of a file up to ``READ_WHOLE_MAX_BYTES``, read once for the decoder, the
content hash and the metadata reader; a larger file comes back as a ``LargeFile`` (its path and identity, no bytes),
which ``decode_image`` decodes from the open file (Pillow reads what the decoder needs: data after the picture is never
read) and ``content_hash`` hashes by streaming (the same digest). A 4x4 PNG followed by 3 GB of zeros costs a few
MiB, not 3 GB; a 1 GB TIFF scan costs its decoded pixels, not its bytes as well.

PNG metadata never costs the picture: a PNG whose compressed text (zTXt, compressed iTXt) or ICC profile
(iCCP) inflates past Pillow's ``MAX_TEXT_CHUNK`` (or whose text passes ``MAX_TEXT_MEMORY``) is decoded again
from its stream with those chunks dropped; Pillow's limits themselves are kept, since they protect memory.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import stat
import struct
import warnings
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from img_search.data.formats import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from img_search.errors import ImageDecodeError, InvalidInputError, NotFoundError

logger = logging.getLogger(__name__)

# the default pixel limit (Pillow's own bomb bound) is a setting: defined once, in settings.py
HASH_DIGEST_SIZE = 16
HASH_CHUNK_BYTES = 1 << 20  # content_hash_file reads this much at a time (1 MiB: memory bound, few syscalls)
# read_file reads a file up to this size whole (one read serves decoding, hashing and metadata); above it, it returns a
# LargeFile, decoded from the file and hashed by streaming (the file is read twice, its bytes are never held). 64 MiB
# is above any camera JPEG/HEIC or screenshot PNG (a 100 MP JPEG is ~40 MB), so photos keep the single read, and it
# bounds what each decode worker (one per core) holds besides the decoded pixels, which are larger for a real picture
# of that size (a 64 MB JPEG is > 100 MP: > 300 MB as RGB). Files above it are scans, TIFF stacks or padded files.
READ_WHOLE_MAX_BYTES = 64 << 20

# Truncated files must fail, not decode half-grey. (Pillow's default; stated because a library that imports
# us may have switched it on.)
ImageFile.LOAD_TRUNCATED_IMAGES = False

_WHITE = (255, 255, 255)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16BS", "I;16LS", "I", "I;32", "F")
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_configured_limit: int | None = None

# -- decode modes ----------------------------------------------------------------------------------------------
DECODE_FULL = "full"
# Reduced-scale JPEG decoding keeps both sides >= this factor x the model's input side (SigLIP-base: >= 224 px), never
# below it. bench/embed_throughput.py --decode-parity (docs/PERFORMANCE.md, "Reduced-scale JPEG decoding"; SigLIP-base
# architecture, random weights, float32): factor 1 -> min cosine to the full decode's embeddings 0.99998 on 1024x768
# and 12 MP JPEGs, read + decode + processor 13.7 -> 5.5 ms (1024x768) and 218 -> 23 ms (12 MP) of CPU per image;
# factor 2 -> 0.999996, but a 1024x768 JPEG is then not scaled at all (768 < 2 x 448). The recorded mode names the
# factor ("reduced-1x"), so changing it never mixes vectors silently.
REDUCED_DECODE_FACTOR = 1
_REDUCED_RE = re.compile(r"^reduced-(\d+)x$")
_FULL_SIZE_KEY = "img_search.full_size"


def reduced_mode(factor: int = REDUCED_DECODE_FACTOR) -> str:
    """The recorded name of reduced-scale decoding at ``factor`` x the input side: ``"reduced-2x"``."""
    _check_positive_int(factor, "the reduced-decode factor")
    return f"reduced-{factor}x"


def decode_factor(mode: str) -> int | None:
    """``mode`` (``"full"`` or ``"reduced-<k>x"``, as recorded) -> k, or None for full decoding.

    Raises InvalidInputError for any other name.
    """
    if mode == DECODE_FULL:
        return None
    found = _REDUCED_RE.match(mode)
    if found is None or int(found.group(1)) < 1:
        raise InvalidInputError(f"unknown decode mode {mode!r}; valid: {DECODE_FULL!r} or 'reduced-<k>x'")
    return int(found.group(1))


def reduced_decode_side(input_side: int | None, mode: str) -> int | None:
    """The ``min_side`` for ``decode_image`` that decodes as ``mode`` for a model whose processor takes
    ``input_side`` px a side (None: unknown -> full decoding), or None for full decoding."""
    factor = decode_factor(mode)
    if factor is None or input_side is None:
        return None
    return factor * int(input_side)


def full_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the picture at full resolution, EXIF orientation applied: ``image.size`` unless
    ``decode_image`` decoded it at a reduced scale."""
    size = (getattr(image, "info", None) or {}).get(_FULL_SIZE_KEY)
    return (int(size[0]), int(size[1])) if size else (image.width, image.height)


def _register_heif() -> bool:
    """Register pi-heif's HEIF opener with Pillow (idempotent); False when pi-heif is not installed."""
    try:
        from pi_heif import register_heif_opener
    except ImportError:
        logger.warning("pi-heif is not installed: HEIC/HEIF photos will be reported as unsupported")
        return False
    register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()


# -- the pixel limit -------------------------------------------------------------------------------------------
def configure_pixel_limit(limit: int) -> None:
    """Set the process-wide pixel limit, once, at start-up (the CLI and the service call it from their settings).

    Pillow raises ``DecompressionBombError`` above ``2 * Image.MAX_IMAGE_PIXELS`` and warns above
    ``Image.MAX_IMAGE_PIXELS``; we set ``MAX_IMAGE_PIXELS = ceil(limit / 2)`` so that Pillow itself, anywhere in
    the process, refuses images above ``limit`` (``limit + 1`` for odd limits, which ``decode_image``'s own
    header check refuses). The warning Pillow gives between ``limit / 2`` and ``limit`` is filtered out: those
    images are within the limit the user chose. Also filters Pillow's per-file ``UserWarning``s (odd EXIF,
    palette transparency), which say nothing a user can act on; decode_image does not touch warning filters
    per call (``warnings.catch_warnings`` is not thread-safe).

    Raises InvalidInputError when ``limit`` is not a positive int.
    """
    global _configured_limit
    _check_positive_int(limit, "the pixel limit (--max-image-pixels)")
    Image.MAX_IMAGE_PIXELS = math.ceil(limit / 2)
    _configured_limit = limit
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")


def pixel_limit() -> int | None:
    """The process-wide pixel limit: the configured one, else what Pillow's guard enforces (None: no guard)."""
    if _configured_limit is not None:
        return _configured_limit
    pillow_max = Image.MAX_IMAGE_PIXELS
    return None if pillow_max is None else 2 * int(pillow_max)


def check_pixel_limit(max_image_pixels: int | None) -> int | None:
    """The limit one call may use: ``max_image_pixels`` (None: the process-wide limit).

    Raises InvalidInputError when it is not a positive int or is above the process-wide limit (which only
    ``configure_pixel_limit`` at start-up may raise).
    """
    process_limit = pixel_limit()
    if max_image_pixels is None:
        return process_limit
    _check_positive_int(max_image_pixels, "max_image_pixels")
    if process_limit is not None and max_image_pixels > process_limit:
        raise InvalidInputError(
            f"max_image_pixels {max_image_pixels:,} is above the process-wide pixel limit of {process_limit:,}; "
            "a call may only lower it. Raise the limit at start-up (--max-image-pixels, or IMG_SEARCH_MAX_IMAGE_PIXELS"
            " / configure_pixel_limit())"
        )
    return max_image_pixels


def _check_positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{what} must be a whole number >= 1, got {value!r}")


def _too_large(width: int, height: int, limit: int) -> ImageDecodeError:
    return ImageDecodeError(
        f"too large: {width}x{height} = {width * height:,} pixels exceeds the limit of {limit:,} "
        f"({_RAISE_IT})"
    )


_RAISE_IT = "raise it with --max-image-pixels if the file is trusted"
_TOO_LARGE_RE = re.compile(r"^too large: \d+x\d+ = ([\d,]+) pixels exceeds the limit")


def too_large_pixels(reason: str | None) -> int | None:
    """The pixel count of a file refused as too large, read from the failure reason ``decode_image`` recorded
    (``_too_large``'s wording); None for any other reason. Lets ``index`` retry such files once the limit is raised."""
    found = _TOO_LARGE_RE.match(reason or "")
    return int(found.group(1).replace(",", "")) if found else None
_PILLOW_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def _bomb_reason(exc: Exception, limit: int | None) -> ImageDecodeError:
    """Pillow's decompression-bomb error (or its warning raised as an error) -> our "too large" reason."""
    found = _PILLOW_PIXELS.search(str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else f"the image ({exc})"
    limit = limit or pixel_limit() or 0
    if isinstance(exc, Image.DecompressionBombWarning):  # only where warnings are turned into errors
        return ImageDecodeError(
            f"too large: {size} is above Pillow's warning threshold ({Image.MAX_IMAGE_PIXELS or 0:,}, half the limit "
            f"of {limit:,}) and this process turns warnings into errors (python -W error / PYTHONWARNINGS)"
        )
    return ImageDecodeError(f"too large: {size} exceeds the limit of {limit:,} ({_RAISE_IT})")


# -- decoding --------------------------------------------------------------------------------------------------
def content_hash(data: bytes | LargeFile) -> bytes:
    """Identity of a file's content (BLAKE2b, ``HASH_DIGEST_SIZE`` bytes); moved or copied files reuse vectors by it.

    ``data``: the file's bytes, or the ``LargeFile`` ``read_file`` gave for a large file (streamed in
    ``HASH_CHUNK_BYTES`` chunks: the same digest as of its bytes). Raises ImageDecodeError when a LargeFile cannot be
    read or changed since ``read_file`` looked at it."""
    if isinstance(data, LargeFile):
        with data.open() as fh:
            digest = _hash_stream(fh)
            data.check_unchanged(fh)
        return digest
    return hashlib.blake2b(data, digest_size=HASH_DIGEST_SIZE).digest()


def content_hash_file(path: str) -> bytes:
    """``content_hash`` of the file at ``path`` (the same digest), read in ``HASH_CHUNK_BYTES`` chunks, so a large
    file costs no more memory than a small one. Refuses what ``open_regular_file`` refuses (ImageDecodeError)."""
    with open_regular_file(path) as fh:
        return _hash_stream(fh)


def _hash_stream(fh: BinaryIO) -> bytes:
    hasher = hashlib.blake2b(digest_size=HASH_DIGEST_SIZE)
    try:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    except OSError as exc:
        raise _read_error(exc) from None
    return hasher.digest()


def _high_bit_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        out = np.clip(arr * scale, 0, 255)
    else:
        arr = arr.astype(np.int64)
        # 16-bit data stored in 32-bit "I" mode (as Pillow opens many 16-bit PNGs) scales like I;16
        peak = 65535 if (img.mode.startswith("I;16") or arr.max(initial=0) > 255) else 255
        out = np.clip(arr, 0, peak) * (255.0 / peak)
    return Image.fromarray(np.round(out).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (alpha on white, high-bit greyscale scaled to 8 bits)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _HIGH_BIT_MODES:
        return _high_bit_to_l(img).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | LargeFile, *, max_image_pixels: int | None = None,
                 min_side: int | None = None) -> Image.Image:
    """Bytes -> RGB image with EXIF orientation applied, or ImageDecodeError with a reason a user can act on.

    ``data``: the file's bytes, or the ``LargeFile`` ``read_file`` gave for a large file (decoded from the open file:
    Pillow reads what the decoder needs; ImageDecodeError also when it changed since ``read_file`` looked at it).
    ``max_image_pixels``: this call's limit (None: the process-wide one, see ``configure_pixel_limit``); it may
    only be lower than the process-wide limit, else InvalidInputError. Images above it fail with a "too large"
    reason before any pixel is decoded (the full size counts, even when ``min_side`` decodes fewer pixels).
    ``min_side`` (px, >= 1): decode a baseline/progressive JPEG at the smallest libjpeg scale (1/2, 1/4, 1/8) that
    keeps both sides >= ``min_side`` (see the module docstring; other formats decode in full); ``full_size`` gives
    the full-resolution size. None: full decoding.
    """
    limit = check_pixel_limit(max_image_pixels)
    if min_side is not None:
        _check_positive_int(min_side, "min_side")
    if isinstance(data, LargeFile):
        with data.open() as fh:
            return _decode_or_rescue(fh, limit, min_side, large=True)
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    return _decode_or_rescue(io.BytesIO(data), limit, min_side)


def _decode_or_rescue(stream: BinaryIO, limit: int | None, min_side: int | None, *, large: bool = False
                      ) -> Image.Image:
    """``_decode``, and again without the PNG metadata chunks over Pillow's limits when that is why it failed
    (``large``: a file's stream, walked only when Pillow named one of those limits, so a damaged large file is not
    read chunk by chunk)."""
    try:
        return _decode(stream, limit, min_side)
    except ImageDecodeError as exc:
        if large and not any(name in str(exc) for name in _PNG_METADATA_LIMITS):
            raise
        stream.seek(0)
        stripped = png_without_oversized_metadata(stream)
        if stripped is None:
            raise
        logger.debug("PNG metadata chunks over Pillow's limits dropped; decoding the pixels again")
        return _decode(io.BytesIO(stripped), limit, None)


def _draft(img: Image.Image, min_side: int | None) -> bool:
    """Ask libjpeg for a scaled decode of a single-frame JPEG (both sides stay >= ``min_side``); True if scaled."""
    if min_side is None or img.format != "JPEG":
        return False
    width, height = img.size
    if width < 2 * min_side or height < 2 * min_side:
        return False
    img.draft(img.mode, (min_side, min_side))
    return img.size != (width, height)


def _open_header(stream: BinaryIO, limit: int | None) -> Image.Image:
    """``Image.open`` on ``stream`` (Pillow reads the header only) with the pixel limit checked on the full size;
    ImageDecodeError with the reason otherwise."""
    try:
        img = Image.open(stream)
    except _BOMB_ERRORS as exc:
        raise _bomb_reason(exc, limit) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read (unknown format or damaged header)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageDecodeError(f"unreadable image header: {exc}") from None
    width, height = img.size
    if limit is not None and width * height > limit:
        raise _too_large(width, height, limit)
    return img


def _decode(stream: BinaryIO, limit: int | None, min_side: int | None = None) -> Image.Image:
    img = _open_header(stream, limit)
    width, height = img.size
    scaled = _draft(img, min_side)
    frame: Image.Image = img
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
    except _BOMB_ERRORS as exc:  # a frame past the first one, checked by some plugins on load
        raise _bomb_reason(exc, limit) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise ImageDecodeError(f"corrupt or truncated image data: {exc}") from None
    try:
        frame = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not cost the picture itself
        logger.debug("ignoring unusable EXIF orientation: %s", exc)
    try:
        rgb = to_rgb(frame)
    except (OSError, ValueError, TypeError) as exc:
        raise ImageDecodeError(f"cannot convert mode {img.mode} to RGB: {exc}") from None
    if scaled:  # the oriented full size: transposed when the orientation turned the picture
        turned = (frame.width, frame.height) != (img.width, img.height)
        rgb.info[_FULL_SIZE_KEY] = (height, width) if turned else (width, height)
    return rgb


# -- PNG metadata over Pillow's limits --------------------------------------------------------------------------
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _inflated_size(compressed: bytes, cap: int) -> int | None:
    """Size of ``compressed`` inflated, or None when it passes ``cap`` (found without inflating past it)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, cap)
    except zlib.error:
        return 0  # Pillow ignores undecodable metadata; the chunk can stay
    return None if inflater.unconsumed_tail else len(out)


def _metadata_size(tag: bytes, body: bytes, cap: int) -> int | None:
    """What Pillow would hold in memory for one text/ICC chunk (None: over ``cap`` once inflated)."""
    _keyword, _, rest = body.partition(b"\0")
    if tag == b"tEXt":
        return len(rest)
    if tag in (b"zTXt", b"iCCP"):  # keyword \0 method(1) zlib-data
        return _inflated_size(rest[1:], cap)
    # iTXt: keyword \0 flag(1) method(1) language \0 translated keyword \0 text
    if len(rest) < 2:
        return 0
    compressed, text = rest[0], rest[2:].split(b"\0", 2)
    if len(text) < 3:
        return 0
    return _inflated_size(text[2], cap) if compressed else len(text[2])


def png_without_oversized_metadata(data: bytes | BinaryIO) -> bytes | None:
    """The PNG stream without the text/ICC chunks Pillow's limits would refuse, or None when it has none.

    ``data``: the PNG's bytes, or a binary file positioned at its start (read chunk by chunk, up to IEND: data after
    it is never read). Chunks are copied byte for byte (CRCs stay valid); a zTXt/iTXt/iCCP chunk is dropped when it
    inflates past ``PngImagePlugin.MAX_TEXT_CHUNK``, and text chunks are dropped once their total passes
    ``PngImagePlugin.MAX_TEXT_MEMORY`` (both read at call time). Nothing is inflated past those caps. Returns
    None for non-PNG data, a damaged chunk layout, or a PNG with nothing to drop.
    """
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    if stream.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
        return None
    cap, memory_cap = PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    kept, dropped, text_memory = [_PNG_SIGNATURE], 0, 0
    while len(head := stream.read(8)) == 8:
        (length,) = struct.unpack(">I", head[:4])
        tag, rest = head[4:8], stream.read(length + 4)  # the body and its CRC
        if len(rest) < length + 4:
            return None
        if tag in _PNG_TEXT_CHUNKS or tag == b"iCCP":
            size = _metadata_size(tag, rest[:length], cap)
            if tag != b"iCCP" and size is not None:
                text_memory += size
            if size is None or (tag != b"iCCP" and text_memory > memory_cap):
                dropped += 1
                continue
        kept.append(head + rest)
        if tag == b"IEND":
            break
    return b"".join(kept) if dropped else None


# -- files -----------------------------------------------------------------------------------------------------
NOT_REGULAR = "not a regular file (device, socket or pipe)"  # also the reason `index`'s folder scan gives


def open_regular_file(path: str) -> BinaryIO:
    """Open ``path`` for reading in binary mode, refusing at once anything but a regular file (symlinks followed).

    A named pipe would block the read forever and a device such as ``/dev/zero`` never ends, so both are refused
    before a byte is read: the path is stat-ed first, then opened non-blocking (opening a FIFO does not wait for a
    writer) and checked again on the open descriptor (the path may have changed in between). OSError becomes
    ImageDecodeError with the reason, as ``read_file`` words it.
    """
    try:
        _check_regular(os.stat(path).st_mode)
        fh = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 - returned open, the caller closes it
    except OSError as exc:
        raise _read_error(exc) from None
    try:
        _check_regular(os.fstat(fh.fileno()).st_mode)
        os.set_blocking(fh.fileno(), True)
    except BaseException:
        fh.close()
        raise
    return fh


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def _check_regular(mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ImageDecodeError("is a directory")
    if not stat.S_ISREG(mode):
        raise ImageDecodeError(NOT_REGULAR)


def _read_error(exc: OSError) -> ImageDecodeError:
    if isinstance(exc, PermissionError):
        return ImageDecodeError("permission denied (cannot read the file)")
    if isinstance(exc, IsADirectoryError):
        return ImageDecodeError("is a directory")
    return ImageDecodeError(f"cannot read the file: {exc.strerror or exc}")


# what Pillow's PngImagePlugin says when a text/ICC chunk (MAX_TEXT_CHUNK) or all text (MAX_TEXT_MEMORY) is too big
_PNG_METADATA_LIMITS = ("MAX_TEXT_CHUNK", "MAX_TEXT_MEMORY")


def _png_metadata_over_limits(stream: BinaryIO, exc: ImageDecodeError) -> bool:
    """Whether a header refused by ``_open_header`` is a PNG whose text/ICC chunks pass Pillow's limits, which
    ``decode_image`` rescues from the whole stream (``png_without_oversized_metadata``)."""
    stream.seek(0)
    if stream.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
        return False
    return any(limit in str(exc) for limit in _PNG_METADATA_LIMITS)


class LargeFile:
    """A regular file above ``READ_WHOLE_MAX_BYTES``, as ``read_file`` gives it instead of its bytes: ``decode_image``
    decodes it from the file and ``content_hash`` streams it, so its bytes are never held in memory.

    ``path`` (absolute), ``size`` (bytes) and the file's identity (device, inode, size, mtime in ns) as ``read_file``
    saw it: ``open()`` refuses a file that has changed since (replaced, rewritten, truncated), so the pixels decoded and
    the hash recorded come from the same content, as they do from one read of a small file. Holds no open file, and
    pickles as a path does.
    """

    __slots__ = ("_identity", "path", "size")

    def __init__(self, path: str, st: os.stat_result) -> None:
        self.path = os.path.abspath(path)
        self.size = st.st_size
        self._identity = _identity(st)

    def __repr__(self) -> str:
        return f"LargeFile({self.path!r}, {self.size:,} bytes)"

    def __getstate__(self) -> tuple[str, int, tuple[int, ...]]:
        return self.path, self.size, self._identity

    def __setstate__(self, state: tuple[str, int, tuple[int, ...]]) -> None:
        self.path, self.size, self._identity = state

    def open(self) -> BinaryIO:
        """The file, open for reading in binary mode (the caller closes it). Raises ImageDecodeError when it cannot be
        read (``open_regular_file``'s reasons) or has changed since ``read_file``."""
        fh = open_regular_file(self.path)
        try:
            self.check_unchanged(fh)
        except BaseException:
            fh.close()
            raise
        return fh

    def check_unchanged(self, fh: BinaryIO) -> None:
        """ImageDecodeError when the open file ``fh`` is no longer the one ``read_file`` looked at."""
        if _identity(os.fstat(fh.fileno())) != self._identity:
            raise ImageDecodeError(_CHANGED)


_CHANGED = "the file changed while it was being read (try again once it is written)"


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def read_file(path: str, *, max_image_pixels: int | None = None) -> bytes | LargeFile:
    """Read an image file, once its header says it is an image within the pixel limit; ImageDecodeError with the
    reason otherwise.

    Only regular files are read (``open_regular_file``). The header is read first (``Image.open`` reads no pixel
    data): a file that is not an image, or one above the pixel limit (``max_image_pixels``, as ``decode_image``;
    None: the process-wide one), is refused after its header, not its whole body (a 3 GB file of zeros costs a few
    KiB). Returns the file's bytes, for ``content_hash`` and ``decode_image``, when it holds at most
    ``READ_WHOLE_MAX_BYTES``; a larger file is not read here: a ``LargeFile``, which both accept, is returned instead
    (a 4x4 PNG followed by 3 GB of zeros costs a few MiB, not 3 GB).
    """
    limit = check_pixel_limit(max_image_pixels)
    with open_regular_file(path) as fh:
        st = os.fstat(fh.fileno())
        if st.st_size == 0:
            raise ImageDecodeError("empty file (0 bytes)")  # as decode_image words it
        try:
            with os.fdopen(os.dup(fh.fileno()), "rb") as probe:  # closing the Pillow image closes its file
                _open_header(probe, limit).close()
        except ImageDecodeError as exc:
            if not _png_metadata_over_limits(fh, exc):
                raise
        if st.st_size > READ_WHOLE_MAX_BYTES:
            return LargeFile(path, st)
        fh.seek(0)
        try:
            return fh.read()
        except OSError as exc:
            raise _read_error(exc) from None


def check_query_file(path: str) -> str:
    """``path`` made absolute, once it names something that exists: NotFoundError (CLI exit 1, HTTP 404) for a
    missing file and for a symlink whose target is missing (``read_file`` then refuses what is not a readable
    regular image file)."""
    abspath = os.path.abspath(path)
    if not os.path.exists(abspath):
        broken = os.path.islink(abspath)
        raise NotFoundError(f"{path}: {'broken symlink (its target does not exist)' if broken else 'no such file'}")
    return abspath


def load_image(path: str, *, max_image_pixels: int | None = None, min_side: int | None = None) -> Image.Image:
    """Read and decode one file (see ``read_file`` and ``decode_image``)."""
    data = read_file(path, max_image_pixels=max_image_pixels)
    return decode_image(data, max_image_pixels=max_image_pixels, min_side=min_side)
