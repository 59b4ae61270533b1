"""Search filters applied inside the search (not after top-k): date range, folder, camera, tag, place, text, size.

``SearchFilter`` is what a user asks for (parsed from CLI options or a request body by the ``parse_*`` helpers, which
raise ``InvalidInputError`` with the expected format). ``FilterIndex`` holds, per live image, the columns filters look
at as numpy arrays (loaded once per collection view from ``Catalog.filter_rows``), so a filter over 100k images is a
few vectorised comparisons; ``FilterIndex.allowed(filter)`` gives the ids that pass, and the collection searches only
those (``search.collection.Collection.search``).

Dates: an image's date is its EXIF capture time, in the local time the camera recorded (so "after 2023-05-01" means
the calendar day on the photo, wherever it was taken); an image without one falls back to its file's modification time
(local time of this machine), and results say which it is (``date_source``). ``after`` is inclusive, ``before`` is
exclusive: ``--after 2023-05-01 --before 2023-09-01`` is May to August.
Distances: haversine on a sphere of radius 6,371,008.8 m (the IUGG mean Earth radius; error below 0.5 % against the
WGS 84 ellipsoid).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.catalog.metadata import FilterRow
from img_search.errors import InvalidInputError

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius (Moritz 2000, Geodetic Reference System 1980)
_UNITS_M = {"km": 1000.0, "m": 1.0, "mi": 1609.344}
_NEAR = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*,\s*([-+]?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*(km|m|mi)\s*$",
                   re.IGNORECASE)
_SIZE = re.compile(r"^\s*(\d+)\s*(?:[x×]\s*(\d+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class GeoCircle:
    """A place: centre in decimal degrees (WGS 84) and a radius in metres."""

    latitude: float
    longitude: float
    radius_m: float


@dataclass(frozen=True)
class SearchFilter:
    """Conditions every hit must meet (all of them; within one list, any of its values).

    ``after`` / ``before``: local date-times (after inclusive, before exclusive). ``folders``: absolute folder paths
    (an image anywhere below one passes). ``cameras``: case-insensitive substrings of "make model". ``tags``: exact
    tags (case-insensitive). ``near``: within a radius of a point. ``has_text``: True keeps images with OCR text,
    False those without. ``min_width`` / ``min_height``: pixels.
    """

    after: dt.datetime | None = None
    before: dt.datetime | None = None
    folders: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    near: GeoCircle | None = None
    has_text: bool | None = None
    min_width: int | None = None
    min_height: int | None = None

    def __bool__(self) -> bool:
        return any(v not in (None, ()) for v in self.__dict__.values())

    def to_request(self) -> dict[str, Any]:
        """The filter as ``build_filter``'s keyword arguments (strings), e.g. for an HTTP request body."""
        out: dict[str, Any] = {}
        if self.after is not None:
            out["after"] = self.after.isoformat()
        if self.before is not None:
            out["before"] = self.before.isoformat()
        for key in ("folders", "cameras", "tags"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        if self.near is not None:
            out["near"] = f"{self.near.latitude!r},{self.near.longitude!r},{self.near.radius_m!r}m"
        if self.has_text is not None:
            out["has_text"] = self.has_text
        if self.min_width is not None or self.min_height is not None:
            out["min_size"] = f"{self.min_width or 0}x{self.min_height or 0}"
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if value in (None, ()):
                continue
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, GeoCircle):
                value = {"latitude": value.latitude, "longitude": value.longitude, "radius_m": value.radius_m}
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


# ------------------------------------------------------------------------------------------------------ parsing
def parse_date(text: str, *, what: str = "date") -> dt.datetime:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` (ISO 8601, local, no zone) -> a naive datetime."""
    try:
        value = dt.datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise InvalidInputError(f"{what} must be a date like 2023-05-01 (or 2023-05-01T18:30), got {text!r}") from None
    if value.tzinfo is not None:
        raise InvalidInputError(f"{what} is compared with the local time on the photos: drop the zone from {text!r}")
    return value


def parse_near(text: str) -> GeoCircle:
    """``LAT,LON,RADIUS`` in decimal degrees with a unit on the radius (``48.85,2.35,10km``, ``500m``, ``3mi``)."""
    m = _NEAR.match(str(text))
    if m is None:
        raise InvalidInputError(
            f"--near must be LAT,LON,RADIUS in decimal degrees with a unit (km, m or mi), e.g. 48.85,2.35,10km; "
            f"got {text!r}")
    lat, lon, radius = float(m[1]), float(m[2]), float(m[3]) * _UNITS_M[m[4].lower()]
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise InvalidInputError(f"--near: latitude must be within -90..90 and longitude within -180..180, got {text!r}")
    if radius <= 0:
        raise InvalidInputError(f"--near: the radius must be above 0, got {text!r}")
    return GeoCircle(lat, lon, radius)


def parse_min_size(text: str) -> tuple[int, int]:
    """``WxH`` (both at least, in pixels) or ``N`` (the shorter side at least N) -> (min width, min height)."""
    m = _SIZE.match(str(text))
    if m is None:
        raise InvalidInputError(f"--min-size must be WIDTHxHEIGHT or a number of pixels, e.g. 1920x1080; got {text!r}")
    width = int(m[1])
    return width, int(m[2]) if m[2] is not None else width


def build_filter(*, after: str | None = None, before: str | None = None, folders: Iterable[str] = (),
                 cameras: Iterable[str] = (), tags: Iterable[str] = (), near: str | None = None,
                 has_text: bool | None = None, min_size: str | None = None) -> SearchFilter:
    """A ``SearchFilter`` from user-facing strings (CLI options, request fields); raises ``InvalidInputError``."""
    start = parse_date(after, what="--after") if after else None
    end = parse_date(before, what="--before") if before else None
    if start is not None and end is not None and end <= start:
        raise InvalidInputError(f"--before ({before}) must be later than --after ({after})")
    min_w = min_h = None
    if min_size:
        min_w, min_h = parse_min_size(min_size)
    clean = lambda values: tuple(v.strip() for v in values if v and v.strip())  # noqa: E731
    return SearchFilter(
        after=start, before=end,
        folders=tuple(os.path.abspath(os.path.expanduser(f)) for f in clean(folders)),
        cameras=clean(cameras), tags=clean(tags),
        near=parse_near(near) if near else None, has_text=has_text, min_width=min_w, min_height=min_h)


# ------------------------------------------------------------------------------------------------------ geometry
def haversine_m(lat1: NDArray[np.float64] | float, lon1: NDArray[np.float64] | float, lat2: float,
                lon2: float) -> NDArray[np.float64]:
    """Great-circle distance in metres between points given in decimal degrees (haversine formula)."""
    p1, p2 = np.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2) - np.radians(lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * math.cos(p2) * np.sin(dl / 2) ** 2
    return np.asarray(2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0))), dtype=np.float64)


def _local_seconds(text: str | None) -> float:
    if not text:
        return math.nan
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        return math.nan
    return (value.replace(tzinfo=None) - _EPOCH).total_seconds()


_EPOCH = dt.datetime(1970, 1, 1)


def local_seconds(value: dt.datetime) -> float:
    """A naive local datetime as seconds since 1970-01-01T00:00 of the same clock (what ``FilterIndex`` stores)."""
    return (value - _EPOCH).total_seconds()


def _mtime_local_seconds(mtime_ns: int | None) -> float:
    if mtime_ns is None:
        return math.nan
    local = dt.datetime.fromtimestamp(mtime_ns / 1e9)  # this machine's local time, like a camera clock
    return local_seconds(local)


def _lookup(n: int, chosen: Sequence[int]) -> NDArray[np.bool_]:
    """A (n + 1,) bool table, True at ``chosen``; index it with codes where -1 (none) reads the last, False slot."""
    table = np.zeros(n + 1, np.bool_)
    table[np.asarray(chosen, np.int64)] = True
    return table


# ------------------------------------------------------------------------------------------------------ the index
@dataclass
class FilterIndex:
    """Per live image (``ids``, int64, ascending): the columns filters look at, as numpy arrays of the same length.

    ``date``: float64 seconds of local time since 1970-01-01 (``local_seconds``; capture time, else file mtime, NaN
    without either), ``date_from_mtime``: bool. ``latitude`` / ``longitude``: float64 degrees, NaN when unknown.
    ``width`` / ``height``: int64 pixels, -1 when unknown. ``has_text``: bool. Folders and cameras are interned:
    ``folder_of[i]`` indexes ``folders`` (the image's folder path), ``camera_of[i]`` indexes ``cameras`` (-1: none).
    """

    ids: NDArray[np.int64]
    date: NDArray[np.float64]
    date_from_mtime: NDArray[np.bool_]
    latitude: NDArray[np.float64]
    longitude: NDArray[np.float64]
    width: NDArray[np.int64]
    height: NDArray[np.int64]
    has_text: NDArray[np.bool_]
    folder_of: NDArray[np.int64]
    folders: list[str]
    camera_of: NDArray[np.int64]
    cameras: list[str]
    _positions: dict[int, int] = field(default_factory=dict, repr=False)
    _camera_keys: dict[str, set[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, rows: Iterable[FilterRow]) -> FilterIndex:
        """Build the arrays from ``Catalog.filter_rows()`` (one pass)."""
        rows = list(rows)
        n = len(rows)
        folder_ids: dict[str, int] = {}
        camera_ids: dict[str, int] = {}
        folder_of = np.empty(n, np.int64)
        camera_of = np.full(n, -1, np.int64)
        date = np.empty(n, np.float64)
        from_mtime = np.zeros(n, np.bool_)
        for i, r in enumerate(rows):
            folder_of[i] = folder_ids.setdefault(os.path.dirname(r.path), len(folder_ids))
            if r.camera:
                camera_of[i] = camera_ids.setdefault(r.camera, len(camera_ids))
            seconds = _local_seconds(r.taken_at)
            if math.isnan(seconds):
                seconds = _mtime_local_seconds(r.mtime_ns)
                from_mtime[i] = not math.isnan(seconds)
            date[i] = seconds
        nan = float("nan")
        return cls(
            ids=np.fromiter((r.image_id for r in rows), np.int64, n),
            date=date, date_from_mtime=from_mtime,
            latitude=np.fromiter((nan if r.latitude is None else r.latitude for r in rows), np.float64, n),
            longitude=np.fromiter((nan if r.longitude is None else r.longitude for r in rows), np.float64, n),
            width=np.fromiter((-1 if r.width is None else r.width for r in rows), np.int64, n),
            height=np.fromiter((-1 if r.height is None else r.height for r in rows), np.int64, n),
            has_text=np.fromiter((r.has_text for r in rows), np.bool_, n),
            folder_of=folder_of, folders=list(folder_ids), camera_of=camera_of, cameras=list(camera_ids))

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, flt: SearchFilter, tagged: set[int] | None = None) -> NDArray[np.bool_]:
        """Which images pass ``flt`` (bool, aligned with ``ids``). ``tagged``: ids carrying one of ``flt.tags``
        (the tag table is queried by the caller: ``Catalog.image_ids_with_tags``)."""
        keep = np.ones(len(self.ids), np.bool_)
        if flt.after is not None:
            keep &= self.date >= local_seconds(flt.after)  # NaN compares False: undated images drop out
        if flt.before is not None:
            keep &= self.date < local_seconds(flt.before)
        if flt.folders:
            prefixes = tuple(os.path.join(f, "") for f in flt.folders)
            chosen = [j for j, folder in enumerate(self.folders) if os.path.join(folder, "").startswith(prefixes)]
            keep &= _lookup(len(self.folders), chosen)[self.folder_of]
        if flt.cameras:
            keep &= _lookup(len(self.cameras), self._matching_cameras(flt.cameras))[self.camera_of]
        if flt.tags:
            keep &= np.isin(self.ids, np.fromiter(tagged or (), np.int64), assume_unique=True)
        if flt.near is not None:
            known = ~np.isnan(self.latitude)
            dist = np.full(len(self.ids), np.inf)
            dist[known] = haversine_m(self.latitude[known], self.longitude[known], flt.near.latitude,
                                      flt.near.longitude)
            keep &= dist <= flt.near.radius_m
        if flt.has_text is not None:
            keep &= self.has_text if flt.has_text else ~self.has_text
        if flt.min_width is not None:
            keep &= self.width >= flt.min_width
        if flt.min_height is not None:
            keep &= self.height >= flt.min_height
        return keep

    def _matching_cameras(self, wanted: Sequence[str]) -> list[int]:
        """Indexes into ``cameras`` of the names containing any of ``wanted`` (case-insensitive). A term made of whole
        words of a name ("Pixel 7" in "Google Pixel 7") is a dictionary lookup; only other terms are searched for as
        substrings of every name."""
        keys = self._camera_keys
        if not keys and self.cameras:  # built whole in a new dict, then published: threads share a FilterIndex
            keys = {}
            for j, name in enumerate(self.cameras):
                words = name.lower().split()
                for a in range(len(words)):
                    for b in range(a + 1, len(words) + 1):
                        keys.setdefault(" ".join(words[a:b]), set()).add(j)
            self._camera_keys = keys
        chosen: set[int] = set()
        partial = []
        for term in wanted:
            found = keys.get(" ".join(term.lower().split()))
            if found is None:
                partial.append(term.lower())
            else:
                chosen |= found
        if partial:
            chosen.update(j for j, name in enumerate(self.cameras) if any(t in name.lower() for t in partial))
        return sorted(chosen)

    def allowed(self, flt: SearchFilter, tagged: set[int] | None = None) -> NDArray[np.int64]:
        """The ids (int64, ascending) of the images that pass ``flt``."""
        return self.ids[self.mask(flt, tagged)]

    def position(self, image_id: int) -> int | None:
        if not self._positions and len(self.ids):
            self._positions = {int(i): j for j, i in enumerate(self.ids.tolist())}
        return self._positions.get(int(image_id))

    def date_of(self, image_ids: Sequence[int]) -> list[tuple[dt.datetime | None, str | None]]:
        """(local date-time, source) of each id: source "taken" (EXIF) or "modified" (file mtime); (None, None)
        when unknown."""
        out: list[tuple[dt.datetime | None, str | None]] = []
        for image_id in image_ids:
            j = self.position(image_id)
            if j is None or math.isnan(self.date[j]):
                out.append((None, None))
                continue
            out.append((_EPOCH + dt.timedelta(seconds=float(self.date[j])),
                        "modified" if self.date_from_mtime[j] else "taken"))
        return out
