"""Turn a file's bytes into an RGB PIL image, or a clear reason why not.

Every mode Pillow decodes is converted to RGB: alpha is composited on white (transparent pixels
are not black), 16-bit and 32-bit greyscale are scaled (not clipped) to 8 bits, CMYK/P/LA/1/...
go through Pillow's converters. EXIF orientation is applied; animations give their first frame.
The pixel limit is ours (``max_image_pixels``), checked from the header before any decoding.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from img_search.errors import ImageDecodeError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff",
     ".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga", ".avif", ".jp2", ".j2k", ".pcx", ".sgi", ".dds", ".qoi"}
)
# Pillow raises DecompressionBombError at twice its MAX_IMAGE_PIXELS (~179 MP); we keep that bound as the
# default (a 100 MP medium-format photo still indexes) but enforce it ourselves so it is configurable.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
HASH_DIGEST_SIZE = 16

# We check the pixel count ourselves; truncated files must fail, not decode half-grey.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

_WHITE = (255, 255, 255)
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16BS", "I;16LS", "I", "I;32", "F")


def content_hash(data: bytes) -> bytes:
    """Identity of a file's content; moved or copied files reuse vectors by it."""
    return hashlib.blake2b(data, digest_size=HASH_DIGEST_SIZE).digest()


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


def decode_image(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Bytes -> RGB image with EXIF orientation applied, or ImageDecodeError with a reason a user can act on."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read (unknown format or damaged header)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"unreadable image header: {exc}") from None
    width, height = img.size
    if width * height > max_image_pixels:
        raise ImageDecodeError(
            f"too large: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_image_pixels:,} "
            "(raise it with --max-image-pixels if the file is trusted)"
        )
    frame: Image.Image = img
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF / palette transparency; not actionable
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image data: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block must not cost the picture itself
        logger.debug("ignoring unusable EXIF orientation: %s", exc)
    try:
        return to_rgb(frame)
    except (OSError, ValueError, TypeError) as exc:
        raise ImageDecodeError(f"cannot convert mode {img.mode} to RGB: {exc}") from None


def read_file(path: str) -> bytes:
    """Read a whole file; OSError is turned into ImageDecodeError with the reason."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except PermissionError:
        raise ImageDecodeError("permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a directory") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read the file: {exc.strerror or exc}") from None


def load_image(path: str, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    return decode_image(read_file(path), max_image_pixels=max_image_pixels)
