"""What a photo says about itself: EXIF, embedded XMP / IPTC, an XMP sidecar, dominant colours and the season.

``read_metadata(path, data, image)`` returns a ``catalog.PhotoMetadata``. `index`'s decode workers call it with the
bytes they already read and the RGB image they already decoded (no second pass over the files); the back-fill of an
older catalog calls it with the path alone (the file is opened lazily: headers, plus a reduced decode for colours).

Sources (every field is optional; a field that cannot be read is ``None`` / empty and logged at DEBUG, never an
exception, never a failed image):

- EXIF (CIPA DC-008-2019, "Exif 2.32"; read with Pillow's ``Image.getexif`` / ``Exif.get_ifd``). IFD0: Make 0x010F,
  Model 0x0110, Orientation 0x0112 (1..8), DateTime 0x0132, ImageDescription 0x010E. Exif IFD (0x8769):
  DateTimeOriginal 0x9003, OffsetTime 0x9010, OffsetTimeOriginal 0x9011, LensModel 0xA434. GPS IFD (0x8825):
  GPSLatitudeRef 0x01 (N/S), GPSLatitude 0x02, GPSLongitudeRef 0x03 (E/W), GPSLongitude 0x04 (degrees, minutes,
  seconds as three rationals), GPSAltitudeRef 0x05 (0 above, 1 below sea level), GPSAltitude 0x06 (metres),
  GPSStatus 0x09 ('V': measurement void -> no position).
- XMP (ISO 16684-1), embedded (JPEG APP1, PNG iTXt ``XML:com.adobe.xmp``, TIFF tag 700, WebP / HEIF chunks: the raw
  packet Pillow exposes) and in a sidecar beside the file (``IMG_1234.jpg.xmp`` as darktable writes it, or
  ``IMG_1234.xmp`` as Lightroom does; ``.XMP`` too). Parsed with defusedxml (no entity expansion, no external
  entities), namespace-aware: ``dc:subject`` (keywords), ``dc:description`` (x-default first), ``xmp:Rating``
  (-1 rejected, 0..5) with dc = http://purl.org/dc/elements/1.1/, xmp = http://ns.adobe.com/xap/1.0/; as fallbacks
  for what EXIF lacks: ``exif:DateTimeOriginal`` / ``photoshop:DateCreated`` / ``xmp:CreateDate`` (ISO 8601),
  ``exif:GPSLatitude`` / ``exif:GPSLongitude`` ("48,51.3N" or "48,51,18N"), ``exif:GPSAltitude`` /
  ``exif:GPSAltitudeRef``, ``tiff:Make`` / ``tiff:Model`` / ``tiff:Orientation``, ``exifEX:LensModel`` / ``aux:Lens``
  (exif = http://ns.adobe.com/exif/1.0/, tiff = http://ns.adobe.com/tiff/1.0/, exifEX = http://cipa.jp/exif/1.0/,
  aux = http://ns.adobe.com/exif/1.0/aux/, photoshop = http://ns.adobe.com/photoshop/1.0/).
- IPTC IIM 4.2 (JPEG APP13 / TIFF; Pillow's ``IptcImagePlugin.getiptcinfo``): keywords 2:25, caption 2:120.

Precedence: the sidecar first (it is what the user's photo tool wrote last), then EXIF, then embedded XMP, then IPTC.
Keywords are the union (sidecar, embedded XMP, IPTC), de-duplicated case-insensitively in that order.

Validation: dates must parse (year 1800..2200); UTC offsets within -12:00..+14:00; latitude within +-90 and longitude
within +-180 with a valid reference letter (a coordinate without its N/S or E/W reference is dropped: its sign is
unknown); exactly (0, 0) is treated as "no fix" (what many cameras write without a GPS lock); altitudes are finite
and within 100 km. Known camera-default descriptions ("OLYMPUS DIGITAL CAMERA", ...) are not descriptions.

Colours: the image is sampled on a 32 x 32 grid (nearest pixel, so pixel-fine detail keeps its colours instead of
blending into a third; 1,024 samples put a 10% share within about +-1%), each sample named after the nearest of
``COLOR_ANCHORS`` in CIELAB (CIE 1976 distance; sRGB -> Lab by littleCMS through Pillow's ImageCms), and the names
covering at least ``MIN_COLOR_SHARE`` of the samples are kept, most covered first (``dominant_colors``).

Season: meteorological seasons (whole months: December-February winter, March-May spring, June-August summer,
September-November autumn in the northern hemisphere; shifted by six months south of the equator), from the capture
date and the sign of the latitude; northern hemisphere when the latitude is unknown.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image

from img_search.catalog.metadata import PhotoMetadata

if TYPE_CHECKING:
    from img_search.data.images import LargeFile

logger = logging.getLogger(__name__)

T = TypeVar("T")

# -- EXIF tag numbers (Exif 2.32) ------------------------------------------------------------------------------------
TAG_IMAGE_DESCRIPTION = 0x010E
TAG_MAKE = 0x010F
TAG_MODEL = 0x0110
TAG_ORIENTATION = 0x0112
TAG_DATETIME = 0x0132
TAG_DATETIME_ORIGINAL = 0x9003
TAG_OFFSET_TIME = 0x9010
TAG_OFFSET_TIME_ORIGINAL = 0x9011
TAG_LENS_MODEL = 0xA434
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 0x01, 0x02, 0x03, 0x04
GPS_ALTITUDE_REF, GPS_ALTITUDE, GPS_STATUS = 0x05, 0x06, 0x09
IPTC_KEYWORDS, IPTC_CAPTION = (2, 25), (2, 120)

# -- XMP namespaces --------------------------------------------------------------------------------------------------
NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NS_DC = "http://purl.org/dc/elements/1.1/"
NS_XMP = "http://ns.adobe.com/xap/1.0/"
NS_EXIF = "http://ns.adobe.com/exif/1.0/"
NS_TIFF = "http://ns.adobe.com/tiff/1.0/"
NS_EXIFEX = "http://cipa.jp/exif/1.0/"
NS_AUX = "http://ns.adobe.com/exif/1.0/aux/"
NS_PHOTOSHOP = "http://ns.adobe.com/photoshop/1.0/"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

MAX_SIDECAR_BYTES = 16 * 1024 * 1024  # larger "sidecars" are not XMP a photo tool wrote: ignored
MAX_TEXT = 2000  # characters kept of a description
MAX_KEYWORD = 100  # characters kept of one keyword
MAX_KEYWORDS = 200
MIN_YEAR, MAX_YEAR = 1800, 2200
MIN_OFFSET, MAX_OFFSET = -12 * 60, 14 * 60  # UTC-12:00 .. UTC+14:00, the offsets in use
MAX_ALTITUDE_M = 100_000.0

# what cameras write into ImageDescription when the user wrote nothing (compared case-insensitively)
CAMERA_DEFAULT_DESCRIPTIONS = frozenset({
    "olympus digital camera", "sony dsc", "digital camera", "dcf 1.0", "default", "image", "exif_jpeg_picture",
    "kodak digital still camera", "samsung digital camera", "minolta digital camera", "hewlett-packard", "untitled",
    "sdim", "picture",
})

# -- colours ---------------------------------------------------------------------------------------------------------
COLOR_GRID = 32  # the image is sampled on a COLOR_GRID x COLOR_GRID grid
MIN_COLOR_SHARE = 0.10  # a colour name is kept when its palette entries cover at least this share of the samples

# everyday colour names, each with sRGB anchors (light / dark variants where one point cannot stand for the name);
# a sample takes the name of the nearest anchor in CIELAB
COLOR_ANCHORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((200, 30, 30), (140, 15, 20), (230, 70, 60)),
    "orange": ((240, 140, 30), (210, 110, 40), (250, 170, 90)),
    "yellow": ((245, 220, 40), (220, 200, 80), (250, 240, 150)),
    "green": ((50, 160, 50), (25, 90, 35), (140, 200, 110), (100, 120, 50)),
    "blue": ((30, 80, 200), (20, 35, 100), (110, 170, 230), (60, 120, 170), (60, 200, 220), (30, 120, 130),
             (165, 205, 235)),
    "purple": ((130, 50, 160), (70, 30, 90), (180, 140, 210)),
    "pink": ((240, 140, 180), (225, 60, 140), (245, 195, 205)),
    "brown": ((120, 70, 30), (80, 50, 25), (170, 120, 80), (190, 155, 115)),
    "black": ((15, 15, 15),),
    "white": ((248, 248, 248), (235, 232, 225)),
    "gray": ((128, 128, 128), (190, 190, 190), (70, 70, 70)),
}

SEASONS_NORTH = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring",
                 6: "summer", 7: "summer", 8: "summer", 9: "autumn", 10: "autumn", 11: "autumn"}
_OPPOSITE = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}


def _guard(path: str, what: str, fn: Callable[[], T], default: T) -> T:
    """``fn()``, or ``default`` when it raises anything (logged at DEBUG): one bad field never costs another."""
    try:
        return fn()
    except Exception as exc:
        logger.debug("%s: unreadable %s (%s: %s)", path, what, type(exc).__name__, exc)
        return default


# -- value parsers (each returns None for anything unusable) ---------------------------------------------------------
def _text(value: Any, limit: int = 256) -> str | None:
    """An EXIF / XMP / IPTC string value: bytes decoded as UTF-8 (Latin-1 when that fails), NULs and surrounding
    blanks removed; None for empty or non-text values."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", " ").strip()
    return value[:limit] if value else None


def _number(value: Any) -> float | None:
    """A finite float from an int, float or (IFD)rational; None otherwise (bool and NaN included)."""
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "numerator")):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _valid_datetime(dt: datetime) -> str | None:
    if not MIN_YEAR <= dt.year <= MAX_YEAR:
        return None
    return dt.replace(tzinfo=None, microsecond=0).isoformat(timespec="seconds")


_EXIF_DATE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?")


def exif_datetime(value: Any) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (also with '-' date separators or 'T') -> ISO "YYYY-MM-DDTHH:MM:SS"; None for
    blanks, zeros ("0000:00:00 00:00:00") and impossible dates."""
    text = _text(value)
    m = _EXIF_DATE.match(text or "")
    if not m:
        return None
    try:
        y, mo, d, h, mi = (int(g) for g in m.groups()[:5])
        dt = datetime(y, mo, d, h, mi, int(m.group(6) or 0))
    except ValueError:
        return None
    return _valid_datetime(dt)


_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def offset_minutes(value: Any) -> int | None:
    """EXIF OffsetTime* "+HH:MM" / "-HH:MM" -> minutes east of UTC, within UTC-12:00..+14:00; None otherwise."""
    m = _OFFSET.match(_text(value) or "")
    if not m:
        return None
    hours, minutes = int(m.group(2)), int(m.group(3))
    if minutes >= 60:
        return None
    total = (hours * 60 + minutes) * (-1 if m.group(1) == "-" else 1)
    return total if MIN_OFFSET <= total <= MAX_OFFSET else None


def _ref_sign(ref: Any, positive: str, negative: str) -> int | None:
    text = (_text(ref) or "").upper()
    if text[:1] == positive:
        return 1
    if text[:1] == negative:
        return -1
    return None


def gps_coordinate(value: Any, ref: Any, *, positive: str, negative: str, limit: float) -> float | None:
    """EXIF GPSLatitude / GPSLongitude (degrees, minutes, seconds: 1 to 3 rationals) and its reference letter
    (``positive`` N/E, ``negative`` S/W) -> signed decimal degrees within +-``limit``; None for anything else."""
    sign = _ref_sign(ref, positive, negative)
    if sign is None:
        return None
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    nums = [_number(p) for p in parts]
    if any(n is None or n < 0 for n in nums):
        return None
    deg, minutes, seconds = ([*nums, 0.0, 0.0])[:3]
    assert deg is not None and minutes is not None and seconds is not None
    if minutes >= 60 or seconds >= 60:
        return None
    out = deg + minutes / 60 + seconds / 3600
    return sign * out if out <= limit else None


def gps_altitude(value: Any, ref: Any) -> float | None:
    """EXIF GPSAltitude (metres, unsigned rational) and GPSAltitudeRef (0 or absent: above sea level, 1: below)
    -> signed metres; None for non-finite, negative or > 100 km values and unknown references."""
    alt = _number(value)
    if alt is None or alt < 0 or alt > MAX_ALTITUDE_M:
        return None
    if isinstance(ref, bytes):
        ref = ref[0] if len(ref) == 1 else (_text(ref) or "")
    if ref is None or ref == 0 or ref == "0":
        return alt
    if ref == 1 or ref == "1":
        return -alt
    return None


def _orientation(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= 8 else None


def _rating(value: Any) -> int | None:
    try:
        rating = float(_text(value) or "")
    except ValueError:
        return None
    if not math.isfinite(rating) or rating != int(rating) or not -1 <= rating <= 5:
        return None
    return int(rating)


def _description(value: Any) -> str | None:
    text = _text(value, MAX_TEXT)
    if text is None or text.lower() in CAMERA_DEFAULT_DESCRIPTIONS:
        return None
    return text


def season_of(taken_at: str | None, latitude: float | None) -> str | None:
    """Meteorological season of an ISO date ("YYYY-MM-..."): northern-hemisphere months, flipped when ``latitude``
    is negative (south of the equator); None without a date."""
    if not taken_at:
        return None
    try:
        month = int(taken_at[5:7])
    except ValueError:
        return None
    season = SEASONS_NORTH.get(month)
    if season is None:
        return None
    return _OPPOSITE[season] if latitude is not None and latitude < 0 else season


# -- the fields of one source ----------------------------------------------------------------------------------------
@dataclass
class _Fields:
    taken_at: str | None = None
    utc_offset_minutes: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lens: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    orientation: int | None = None
    rating: int | None = None
    description: str | None = None
    keywords: list[str] = field(default_factory=list)

    def position(self, lat: float | None, lon: float | None) -> None:
        if lat is None or lon is None or (lat == 0 and lon == 0):  # (0, 0): cameras without a fix
            return
        self.latitude, self.longitude = lat, lon


def _exif_fields(path: str, img: Image.Image) -> _Fields:
    out = _Fields()
    exif = _guard(path, "EXIF", img.getexif, None)
    if exif is None:
        return out
    empty: dict[int, Any] = {}
    ifd = _guard(path, "EXIF IFD", lambda: exif.get_ifd(ExifTags.IFD.Exif), empty)
    gps = _guard(path, "GPS IFD", lambda: exif.get_ifd(ExifTags.IFD.GPSInfo), empty)

    def taken() -> None:
        original = exif_datetime(ifd.get(TAG_DATETIME_ORIGINAL))
        if original is not None:
            out.taken_at, out.utc_offset_minutes = original, offset_minutes(ifd.get(TAG_OFFSET_TIME_ORIGINAL))
        else:
            out.taken_at = exif_datetime(exif.get(TAG_DATETIME))
            out.utc_offset_minutes = offset_minutes(ifd.get(TAG_OFFSET_TIME)) if out.taken_at else None

    def position() -> None:
        if (_text(gps.get(GPS_STATUS)) or "").upper().startswith("V"):
            return
        lat = gps_coordinate(gps.get(GPS_LATITUDE), gps.get(GPS_LATITUDE_REF), positive="N", negative="S", limit=90)
        lon = gps_coordinate(gps.get(GPS_LONGITUDE), gps.get(GPS_LONGITUDE_REF), positive="E", negative="W",
                             limit=180)
        out.position(lat, lon)
        if out.latitude is not None:
            out.altitude = gps_altitude(gps.get(GPS_ALTITUDE), gps.get(GPS_ALTITUDE_REF))

    def camera() -> None:
        out.camera_make, out.camera_model = _text(exif.get(TAG_MAKE)), _text(exif.get(TAG_MODEL))

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("EXIF date", taken), ("EXIF GPS", position), ("EXIF camera", camera),
        ("EXIF lens", lambda: setattr(out, "lens", _text(ifd.get(TAG_LENS_MODEL)))),
        ("EXIF orientation", lambda: setattr(out, "orientation", _orientation(exif.get(TAG_ORIENTATION)))),
        ("EXIF description", lambda: setattr(out, "description",
                                             _description(exif.get(TAG_IMAGE_DESCRIPTION)))),
    ]
    for what, step in steps:
        _guard(path, what, step, None)
    return out


# -- XMP -------------------------------------------------------------------------------------------------------------
def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class _Xmp:
    """Namespace-aware access to the properties of an XMP packet's ``rdf:Description`` elements."""

    def __init__(self, packet: bytes) -> None:
        from defusedxml import ElementTree

        packet = packet.strip(b"\x00 \t\r\n")
        root = ElementTree.fromstring(packet)
        self.descriptions = list(root.iter(_q(NS_RDF, "Description")))

    def values(self, ns: str, name: str) -> list[str]:
        """Every value of a property: an attribute, a simple element, or the items of an rdf:Bag / Seq / Alt (an Alt's
        x-default item first)."""
        key = _q(ns, name)
        out: list[str] = []
        for desc in self.descriptions:
            if key in desc.attrib:
                out.append(desc.attrib[key])
            for elem in desc.findall(key):
                items = [li for container in elem for li in container.findall(_q(NS_RDF, "li"))]
                if items:
                    items.sort(key=lambda li: li.get(_XML_LANG) != "x-default")
                    out.extend(li.text or "" for li in items)
                elif elem.text and elem.text.strip():
                    out.append(elem.text)
        return [v for v in (_text(v, MAX_TEXT) for v in out) if v]

    def first(self, ns: str, name: str) -> str | None:
        values = self.values(ns, name)
        return values[0] if values else None


_XMP_GPS = re.compile(r"^\s*(\d+(?:\.\d+)?),(\d+(?:\.\d+)?)(?:,(\d+(?:\.\d+)?))?\s*([NSEWnsew])\s*$")


def xmp_coordinate(value: str | None, *, positive: str, negative: str, limit: float) -> float | None:
    """XMP GPS coordinate "DDD,MM.mmk" or "DDD,MM,SSk" (k: N/S/E/W; XMP Specification Part 2, 1.2.7.4) -> signed
    decimal degrees; None otherwise."""
    m = _XMP_GPS.match(value or "")
    if not m:
        return None
    parts = [float(g) for g in m.groups()[:3] if g is not None]
    return gps_coordinate(tuple(parts), m.group(4), positive=positive, negative=negative, limit=limit)


def _rational(text: str | None) -> float | None:
    """An XMP rational "n/d" (or a plain number) -> float; None otherwise."""
    if not text:
        return None
    num, _, den = text.partition("/")
    try:
        out = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        return None
    return out if math.isfinite(out) else None


def xmp_datetime(value: str | None) -> tuple[str | None, int | None]:
    """XMP date (ISO 8601: "2023-06-01T10:00:00+02:00", fractions, "Z", or a date alone) -> (local ISO time, offset
    minutes or None); (None, None) when it does not parse. EXIF-style "YYYY:MM:DD HH:MM:SS" is accepted too."""
    if not value:
        return None, None
    exif_style = exif_datetime(value) if _EXIF_DATE.match(value) and value[4] == ":" else None
    if exif_style:
        return exif_style, None
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None, None
    offset = None
    if dt.utcoffset() is not None:
        minutes = int(dt.utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
        offset = minutes if MIN_OFFSET <= minutes <= MAX_OFFSET else None
    return _valid_datetime(dt), offset


def _xmp_fields(path: str, packet: bytes, what: str) -> _Fields:
    out = _Fields()
    xmp = _guard(path, what, lambda: _Xmp(packet), None)
    if xmp is None:
        return out

    def taken() -> None:
        for ns, name in ((NS_EXIF, "DateTimeOriginal"), (NS_PHOTOSHOP, "DateCreated"), (NS_XMP, "CreateDate")):
            taken_at, offset = xmp_datetime(xmp.first(ns, name))
            if taken_at:
                out.taken_at, out.utc_offset_minutes = taken_at, offset
                return

    def position() -> None:
        lat = xmp_coordinate(xmp.first(NS_EXIF, "GPSLatitude"), positive="N", negative="S", limit=90)
        lon = xmp_coordinate(xmp.first(NS_EXIF, "GPSLongitude"), positive="E", negative="W", limit=180)
        out.position(lat, lon)
        if out.latitude is not None:
            out.altitude = gps_altitude(_rational(xmp.first(NS_EXIF, "GPSAltitude")),
                                        xmp.first(NS_EXIF, "GPSAltitudeRef"))

    def orientation() -> None:
        text = xmp.first(NS_TIFF, "Orientation")
        out.orientation = _orientation(int(text)) if text and text.isdigit() else None

    def camera() -> None:
        out.camera_make, out.camera_model = _text(xmp.first(NS_TIFF, "Make")), _text(xmp.first(NS_TIFF, "Model"))

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("keywords", lambda: out.keywords.extend(xmp.values(NS_DC, "subject"))),
        ("description", lambda: setattr(out, "description", _description(xmp.first(NS_DC, "description")))),
        ("rating", lambda: setattr(out, "rating", _rating(xmp.first(NS_XMP, "Rating")))),
        ("date", taken), ("GPS", position), ("orientation", orientation),
        ("camera", camera),
        ("lens", lambda: setattr(out, "lens", _text(xmp.first(NS_EXIFEX, "LensModel") or xmp.first(NS_AUX, "Lens")))),
    ]
    for name, step in steps:
        _guard(path, f"{what} {name}", step, None)
    return out


def _embedded_xmp(img: Image.Image) -> bytes | None:
    """The raw XMP packet Pillow found in the file (JPEG / WebP / HEIF ``info['xmp']``, PNG iTXt, TIFF tag 700)."""
    for key in ("xmp", "XML:com.adobe.xmp"):
        packet = img.info.get(key)
        if packet:
            return packet.encode("utf-8") if isinstance(packet, str) else bytes(packet)
    tags = getattr(img, "tag_v2", None)
    if tags is not None and 700 in tags:
        packet = tags[700]
        return packet.encode("utf-8") if isinstance(packet, str) else bytes(packet)
    return None


def _iptc_fields(path: str, img: Image.Image) -> _Fields:
    from PIL import IptcImagePlugin

    out = _Fields()
    info = _guard(path, "IPTC", lambda: IptcImagePlugin.getiptcinfo(img), None)  # type: ignore[arg-type]
    if not info:
        return out

    def listed(key: tuple[int, int]) -> list[Any]:
        value = info.get(key)
        return list(value) if isinstance(value, list) else ([] if value is None else [value])

    out.keywords = [k for k in (_text(v, MAX_KEYWORD) for v in listed(IPTC_KEYWORDS)) if k]
    captions = [c for c in (_description(v) for v in listed(IPTC_CAPTION)) if c]
    out.description = captions[0] if captions else None
    return out


# -- sidecars --------------------------------------------------------------------------------------------------------
def sidecar_candidates(path: str) -> list[str]:
    """Sidecar paths of an image, most specific first: ``IMG.jpg.xmp`` (darktable, digiKam) before ``IMG.xmp``
    (Lightroom, Capture One), each in lower and upper case."""
    stem = os.path.splitext(path)[0]
    return [f"{path}.xmp", f"{path}.XMP", f"{stem}.xmp", f"{stem}.XMP"]


def find_sidecar(path: str, names: Container[str] | None = None) -> tuple[str, int] | None:
    """The XMP sidecar of ``path`` and its mtime (ns), or None. ``names``: the file names in the image's folder when
    the caller listed it already (then only the sidecar found is stat'ed)."""
    for candidate in sidecar_candidates(path):
        if names is not None and os.path.basename(candidate) not in names:
            continue
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if os.path.isfile(candidate):
            return candidate, st.st_mtime_ns
    return None


def sidecar_mtimes(paths: Iterable[str]) -> dict[str, int | None]:
    """{image path: mtime_ns of its sidecar or None}: one directory listing per folder, one stat per sidecar found."""
    by_folder: dict[str, list[str]] = {}
    for p in paths:
        by_folder.setdefault(os.path.dirname(p), []).append(p)
    out: dict[str, int | None] = {}
    for folder, members in by_folder.items():
        try:
            names = {n for n in os.listdir(folder) if n[-4:].lower() == ".xmp"}
        except OSError:
            names = set()
        for p in members:
            found = find_sidecar(p, names) if names else None
            out[p] = found[1] if found else None
    return out


def _read_sidecar(path: str, sidecar: str) -> bytes | None:
    from img_search.data.images import open_regular_file

    with open_regular_file(sidecar) as fh:  # a pipe named *.xmp would block the decode worker forever
        data = fh.read(MAX_SIDECAR_BYTES + 1)
    if len(data) > MAX_SIDECAR_BYTES:
        logger.debug("%s: sidecar %s larger than %d bytes, ignored", path, sidecar, MAX_SIDECAR_BYTES)
        return None
    return data


# -- colours ---------------------------------------------------------------------------------------------------------
_lab_cache: dict[str, Any] = {}


def _to_lab(colors: Sequence[tuple[int, int, int]] | NDArray[np.uint8]) -> NDArray[np.float64]:
    """sRGB colours, ``(n, 3)`` (tuples or uint8) -> CIELAB, (n, 3) float64 (L* 0..100, a*, b*), through littleCMS
    (Pillow's ImageCms; D50 Lab, 8-bit steps)."""
    from PIL import ImageCms

    transform = _lab_cache.get("transform")
    if transform is None:
        transform = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB",
                                            "LAB")
        _lab_cache["transform"] = transform
    rgb = np.asarray(colors, dtype=np.uint8).reshape(1, -1, 3)
    lab = ImageCms.applyTransform(Image.fromarray(rgb, "RGB"), transform)
    assert lab is not None
    # Pillow's LAB mode stores L* scaled to 0..255 (unsigned) and a*, b* as signed bytes
    raw = np.asarray(lab, dtype=np.uint8).reshape(-1, 3)
    out = raw.view(np.int8).astype(np.float64)
    out[:, 0] = raw[:, 0] * (100.0 / 255.0)
    return out


def _anchor_table() -> tuple[list[str], NDArray[np.intp], NDArray[np.float64]]:
    """(the colour names, each anchor's index into them, the anchors in CIELAB (a, 3))."""
    table = _lab_cache.get("anchors")
    if table is None:
        names = list(COLOR_ANCHORS)
        owner = np.array([i for i, rgbs in enumerate(COLOR_ANCHORS.values()) for _ in rgbs], dtype=np.intp)
        table = (names, owner, _to_lab([rgb for rgbs in COLOR_ANCHORS.values() for rgb in rgbs]))
        _lab_cache["anchors"] = table
    return table  # type: ignore[no-any-return]


def _name_indices(lab: NDArray[np.float64]) -> NDArray[np.intp]:
    """CIELAB colours (n, 3) -> the index of each one's name (nearest anchor by CIE 1976 distance), (n,).

    The squared distance expanded as |a|^2 - 2 x.a (+ |x|^2, the same for every anchor): one (n, 3) x (3, a) product
    instead of an (n, a, 3) difference array, ~10x less CPU for a picture's 1,024 samples."""
    _, owner, anchors = _anchor_table()
    return owner[((anchors**2).sum(axis=1)[None, :] - 2.0 * lab @ anchors.T).argmin(axis=1)]


def color_name(rgb: tuple[int, int, int]) -> str:
    """The everyday name (a key of ``COLOR_ANCHORS``) nearest to an sRGB colour in CIELAB."""
    names = _anchor_table()[0]
    return names[int(_name_indices(_to_lab([rgb]))[0])]


def dominant_colors(image: Image.Image) -> tuple[str, ...]:
    """Colour names covering at least ``MIN_COLOR_SHARE`` of ``image`` (any mode; alpha on white), most first.

    Each of the ``COLOR_GRID`` x ``COLOR_GRID`` samples is named (nearest anchor in CIELAB) and the names are counted:
    ~0.25 ms of CPU per picture. (Until issue 8's decode-cost work the samples went through a 5-colour median-cut
    palette first, named afterwards: ~1 ms, the largest cost of reading a photo's metadata, and a palette entry could
    average two colours into a third. The two agree on the set of names for about half of the benchmark's photos,
    the per-sample counting keeping more names near the 10 % cut.)"""
    from img_search.data.images import to_rgb

    small = to_rgb(image.resize((COLOR_GRID, COLOR_GRID), Image.Resampling.NEAREST))
    names = _anchor_table()[0]
    counts = np.bincount(_name_indices(_to_lab(np.asarray(small, dtype=np.uint8))), minlength=len(names))
    total = int(counts.sum()) or 1
    kept = [(int(n), names[i]) for i, n in enumerate(counts) if n / total >= MIN_COLOR_SHARE]
    return tuple(name for _, name in sorted(kept, key=lambda t: (-t[0], t[1])))


def _colors_from_file(img: Image.Image) -> Image.Image:
    """A small decode of an opened, not yet loaded image for its colours: JPEG decodes at a DCT scale (1/2..1/8)
    no smaller than the colour grid (``Image.draft``); other formats decode in full."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img.draft("RGB", (COLOR_GRID, COLOR_GRID))
    img.load()
    return img


# -- the whole ------------------------------------------------------------------------------------------------------
def _merge(first: _Fields, *rest: _Fields) -> _Fields:
    """Scalar fields from the first source that has them; keywords the union of all, in order."""
    out = replace(first, keywords=[])
    for source in (first, *rest):
        for name in ("taken_at", "camera_make", "camera_model", "lens", "orientation", "rating", "description"):
            if getattr(out, name) is None and getattr(source, name) is not None:
                setattr(out, name, getattr(source, name))
                if name == "taken_at":
                    out.utc_offset_minutes = source.utc_offset_minutes
        if out.latitude is None and source.latitude is not None:
            out.latitude, out.longitude, out.altitude = source.latitude, source.longitude, source.altitude
        out.keywords.extend(source.keywords)
    seen: set[str] = set()
    keywords = []
    for k in out.keywords:
        k = k[:MAX_KEYWORD]
        if k.lower() not in seen:
            seen.add(k.lower())
            keywords.append(k)
    out.keywords = keywords[:MAX_KEYWORDS]
    return out


def read_metadata(path: str, data: bytes | LargeFile | None = None, image: Image.Image | None = None, *,
                  colors: bool = True) -> PhotoMetadata:
    """Read what the photo at ``path`` says about itself (see the module docstring for the fields, their sources,
    units and checks).

    ``data``: the file's bytes when the caller has read them (decode workers); None, or the ``LargeFile``
    ``data.images.read_file`` gives for a file too large to hold, opens ``path`` lazily (headers only, plus a reduced
    decode for the colours). ``image``: the decoded image when the caller has it (its colours
    are taken from it, nothing is decoded again). ``colors=False`` skips the colours. Never raises: what cannot be
    read is left empty (logged at DEBUG).
    """
    img: Image.Image | None = None
    try:
        file = io.BytesIO(data) if isinstance(data, bytes) else path  # a LargeFile is read from its path
        img = _guard(path, "image header", lambda: Image.open(file), None)
        exif = _exif_fields(path, img) if img is not None else _Fields()
        packet = _guard(path, "embedded XMP", lambda: _embedded_xmp(img), None) if img is not None else None
        embedded = _xmp_fields(path, packet, "embedded XMP") if packet else _Fields()
        iptc = _iptc_fields(path, img) if img is not None else _Fields()
        sidecar = _guard(path, "XMP sidecar", lambda: find_sidecar(path), None)
        side = _Fields()
        if sidecar is not None:
            side_data = _guard(path, "XMP sidecar", lambda: _read_sidecar(path, sidecar[0]), None)
            side = _xmp_fields(path, side_data, f"XMP sidecar {sidecar[0]}") if side_data else _Fields()
        merged = _merge(side, exif, embedded, iptc)
        palette: tuple[str, ...] = ()
        if colors:
            source = image if image is not None else img
            if source is not None:
                palette = _guard(path, "colours", lambda: dominant_colors(
                    source if image is not None else _colors_from_file(source)), ())
        return PhotoMetadata(
            taken_at=merged.taken_at, utc_offset_minutes=merged.utc_offset_minutes, camera_make=merged.camera_make,
            camera_model=merged.camera_model, lens=merged.lens, latitude=merged.latitude,
            longitude=merged.longitude, altitude=merged.altitude, orientation=merged.orientation,
            rating=merged.rating, description=merged.description, keywords=tuple(merged.keywords), colors=palette,
            season=season_of(merged.taken_at, merged.latitude),
            sidecar_mtime_ns=sidecar[1] if sidecar is not None else None,
        )
    except Exception as exc:  # a bug above must not cost the image: record what the file says as nothing
        logger.debug("%s: metadata not readable (%s: %s)", path, type(exc).__name__, exc)
        return PhotoMetadata()
    finally:
        if img is not None and not isinstance(data, bytes):
            img.close()
