"""Which files are photos: the extensions ``img-search index`` decodes, and those it reports as unsupported.

A folder walk decides by extension only (no file is opened to sniff its type: a no-op re-run over a large
folder stays a directory walk). Two lists, kept here and mirrored in ``docs/FORMATS.md``:

``IMAGE_EXTENSIONS``
    Formats Pillow decodes in this environment: Pillow's own plugins (JPEG, PNG, GIF, WebP, TIFF, BMP, MPO,
    PSD composite, JPEG 2000, AVIF (native since Pillow 11.2) ...), plus HEIC/HEIF through the decoder-only
    ``pi-heif`` plugin that ``data.images`` registers at import. A test checks that every one of them is
    registered with Pillow, so this list cannot promise what Pillow cannot open.
``UNSUPPORTED_FORMATS``
    Other photo formats (camera RAW, layered editor files, JPEG XL / XR, HDR and vector formats). They are
    never dropped silently: the walk reports each such file as skipped with a reason that says what to do,
    and the catalog records it like any other unreadable file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# Pillow's plugins (``PIL.Image.registered_extensions()``, Pillow 13) minus formats that are not pictures one
# would search (fonts, GRIB/HDF stubs, PDF/EPS which need Ghostscript or only write, Windows metafiles).
PILLOW_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif",            # JPEG
    ".png", ".apng",                             # PNG, animated PNG (first frame)
    ".gif", ".webp", ".bmp", ".dib",
    ".tif", ".tiff",
    ".mpo",                                      # multi-picture JPEG of stereo cameras (Fujifilm W3, Nintendo 3DS)
    ".psd",                                      # Photoshop: the stored composite image
    ".avif", ".avifs",                           # AV1 image (Pillow's own AVIF plugin)
    ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx",  # JPEG 2000
    ".ppm", ".pgm", ".pbm", ".pnm",
    ".ico", ".tga", ".pcx", ".sgi", ".dds", ".qoi",
    ".pcd",                                      # Kodak Photo CD (the 768x512 base image)
})
# Registered by ``pi_heif.register_heif_opener()`` (libheif with the libde265 HEVC decoder, no encoder):
# Apple's .heic, generic .heif, Fujifilm/Canon 10-bit .hif, and image sequences (their primary image).
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".heics", ".heifs"})
IMAGE_EXTENSIONS = PILLOW_EXTENSIONS | HEIF_EXTENSIONS


@dataclass(frozen=True, slots=True)
class UnsupportedFormat:
    """A photo format img-search cannot decode, and what the user can do about it."""

    kind: str  # e.g. "camera RAW"
    advice: str

    def reason(self, extension: str) -> str:
        """The reason recorded for one file, e.g. ``camera RAW (.nef) is not supported: convert ...``."""
        return f"{self.kind} ({extension}) is not supported: {self.advice}"


_RAW = UnsupportedFormat(
    "camera RAW",
    "convert it to JPEG or TIFF (darktable, RawTherapee, Lightroom or the camera maker's software), or keep the "
    "camera's JPEG beside it, and index the folder again",
)
_LAYERED = UnsupportedFormat("a layered editor file", "export a flattened JPEG, PNG or TIFF and index that")
_JXL = UnsupportedFormat("JPEG XL", "convert it to JPEG or PNG (djxl from libjxl), or install a Pillow JPEG XL plugin")
_JXR = UnsupportedFormat("JPEG XR", "convert it to JPEG, PNG or TIFF (JxrDecApp, or re-save it from Windows Photos)")
_HDR = UnsupportedFormat("a high-dynamic-range image", "tone-map it to an 8-bit JPEG, PNG or TIFF and index that")
_VECTOR = UnsupportedFormat("a vector drawing", "render it to PNG (rsvg-convert, Inkscape) and index that")

# Camera RAW extensions: the raw formats of the LibRaw supported-camera list and of Wikipedia's "Raw image
# format" article (maker in the comment). DNG is TIFF-based but Pillow opens at best its small preview.
_RAW_EXTENSIONS = (
    ".3fr", ".fff",                      # Hasselblad / Imacon
    ".ari",                              # ARRI
    ".arw", ".srf", ".sr2",              # Sony
    ".bay",                              # Casio
    ".cr2", ".cr3", ".crw",              # Canon
    ".cap", ".eip", ".iiq",              # Phase One
    ".dcr", ".dcs", ".drf", ".k25", ".kdc",  # Kodak
    ".dng",                              # Adobe Digital Negative (phones, Leica, Pentax, Ricoh, DJI ...)
    ".erf",                              # Epson
    ".gpr",                              # GoPro
    ".mef",                              # Mamiya
    ".mdc", ".mrw",                      # Minolta
    ".mos",                              # Leaf
    ".nef", ".nrw",                      # Nikon
    ".orf", ".ori",                      # Olympus / OM System
    ".pef", ".ptx",                      # Pentax
    ".pxn",                              # Logitech
    ".raf",                              # Fujifilm
    ".raw", ".rw2", ".rwl",              # Panasonic, Leica
    ".rwz",                              # Rawzor
    ".srw",                              # Samsung
    ".x3f",                              # Sigma (Foveon)
)
# Files of image editors whose flattened picture Pillow cannot read: GIMP .xcf, Photoshop "large document"
# .psb (PSD version 2; Pillow's PSD plugin reads version 1 only), Krita .kra, Affinity Photo .afphoto.
_LAYERED_EXTENSIONS = (".xcf", ".psb", ".kra", ".afphoto")

UNSUPPORTED_FORMATS: Mapping[str, UnsupportedFormat] = MappingProxyType({
    **dict.fromkeys(_RAW_EXTENSIONS, _RAW),
    **dict.fromkeys(_LAYERED_EXTENSIONS, _LAYERED),
    ".jxl": _JXL,                                # Pillow 13 has no JPEG XL decoder
    **dict.fromkeys((".jxr", ".wdp", ".hdp"), _JXR),
    **dict.fromkeys((".exr", ".hdr"), _HDR),     # OpenEXR, Radiance RGBE
    **dict.fromkeys((".svg", ".svgz"), _VECTOR),
})

HEIF_MISSING = UnsupportedFormat(
    "HEIC/HEIF", "the pi-heif package (a core dependency of img-search) is not installed: `pip install pi-heif`"
)


def unsupported_formats(heif_available: bool) -> Mapping[str, UnsupportedFormat]:
    """The extensions to report as unsupported; HEIF joins them when its decoder could not be registered."""
    if heif_available:
        return UNSUPPORTED_FORMATS
    return MappingProxyType({**UNSUPPORTED_FORMATS, **dict.fromkeys(HEIF_EXTENSIONS, HEIF_MISSING)})
