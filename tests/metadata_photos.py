"""Photos with metadata for tests, written with Pillow: EXIF (date, offset, GPS, camera, lens, orientation), embedded
XMP, IPTC keywords (a JPEG APP13 segment built by hand: Pillow reads IPTC but does not write it) and XMP sidecars."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational


def dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """Decimal degrees (>= 0) -> EXIF (degrees, minutes, seconds) rationals, seconds to 1/100."""
    deg = int(value)
    minutes = int((value - deg) * 60)
    seconds = round(((value - deg) * 60 - minutes) * 60 * 100)
    return IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(seconds, 100)


def exif_for(*, taken: str | None = None, offset: str | None = None, make: Any = None, model: Any = None,
             lens: Any = None, orientation: Any = None, lat: float | None = None, lon: float | None = None,
             lat_ref: str | None = None, lon_ref: str | None = None, altitude: float | None = None,
             altitude_ref: int | None = None, datetime: str | None = None,
             description: str | None = None) -> Image.Exif:
    """An ``Image.Exif`` with the given tags (Exif 2.32 numbers); ``lat``/``lon`` absolute values with their refs
    (default N/E, S/W for negative values). Pillow writes each tag with its registered type: ``raw_exif`` below
    writes any type."""
    exif = Image.Exif()
    for tag, value in ((0x010F, make), (0x0110, model), (0x0112, orientation), (0x0132, datetime),
                       (0x010E, description)):
        if value is not None:
            exif[tag] = value
    ifd = exif.get_ifd(ExifTags.IFD.Exif)
    for tag, value in ((0x9003, taken), (0x9011, offset), (0xA434, lens)):
        if value is not None:
            ifd[tag] = value
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if lat is not None:
        gps[1], gps[2] = lat_ref or ("S" if lat < 0 else "N"), dms(abs(lat))
    if lon is not None:
        gps[3], gps[4] = lon_ref or ("W" if lon < 0 else "E"), dms(abs(lon))
    if altitude is not None:
        gps[5], gps[6] = bytes([altitude_ref or 0]), IFDRational(round(abs(altitude) * 10), 10)
    return exif


def xmp_packet(*, keywords: tuple[str, ...] = (), description: str | None = None, rating: int | None = None,
               extra: str = "") -> bytes:
    """An XMP packet (rdf:Description with dc:subject Bag, dc:description Alt, xmp:Rating attribute)."""
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    subject = f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>" if keywords else ""
    desc = (f'<dc:description><rdf:Alt><rdf:li xml:lang="fr">autre</rdf:li>'
            f'<rdf:li xml:lang="x-default">{description}</rdf:li></rdf:Alt></dc:description>' if description else "")
    rating_attr = f' xmp:Rating="{rating}"' if rating is not None else ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/"{rating_attr}>'
        f"{subject}{desc}{extra}</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def iptc_app13(keywords: tuple[str, ...], caption: str | None = None) -> bytes:
    """A JPEG APP13 segment: "Photoshop 3.0" image resource 0x0404 holding IPTC IIM 2:25 keywords (and 2:120)."""
    records = b""
    for kw in keywords:
        data = kw.encode()
        records += b"\x1c\x02\x19" + struct.pack(">H", len(data)) + data
    if caption:
        data = caption.encode()
        records += b"\x1c\x02\x78" + struct.pack(">H", len(data)) + data
    if len(records) % 2:
        records += b"\x00"
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(records)) + records
    body = b"Photoshop 3.0\x00" + resource
    return b"\xff\xed" + struct.pack(">H", len(body) + 2) + body


def photo(path: Path, color: tuple[int, int, int] = (120, 130, 140), size: tuple[int, int] = (64, 48), *,
          exif: Image.Exif | None = None, xmp: bytes | None = None, iptc: bytes | None = None) -> Path:
    """A solid-colour JPEG with the given EXIF, embedded XMP and IPTC segment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"quality": 95}
    if exif is not None:
        kwargs["exif"] = exif
    if xmp is not None:
        kwargs["xmp"] = xmp
    Image.new("RGB", size, color).save(path, "JPEG", **kwargs)
    if iptc is not None:
        data = path.read_bytes()
        path.write_bytes(data[:2] + iptc + data[2:])  # right after SOI
    return path


# -- hand-built EXIF: any type for any tag (Pillow writes each known tag with its registered type) ---------------------
Entry = tuple[int, int, bytes]  # (TIFF type, count, value bytes, little-endian)


def ascii_(text: str | bytes) -> Entry:
    data = (text.encode() if isinstance(text, str) else text) + b"\x00"
    return 2, len(data), data


def short(*values: int) -> Entry:
    return 3, len(values), struct.pack(f"<{len(values)}H", *values)


def rational(*pairs: tuple[int, int]) -> Entry:
    return 5, len(pairs), b"".join(struct.pack("<II", n, d) for n, d in pairs)


def double(*values: float) -> Entry:
    return 12, len(values), struct.pack(f"<{len(values)}d", *values)


def raw_exif(ifd0: dict[int, Entry], exif: dict[int, Entry] | None = None,
             gps: dict[int, Entry] | None = None) -> bytes:
    """An APP1 EXIF payload ("Exif\\0\\0" + little-endian TIFF) with IFD0 and optional Exif and GPS sub-IFDs holding
    exactly the given entries (tag -> (type, count, bytes)): wrong types for tests of garbage."""
    ifds: list[dict[int, Entry]] = [dict(ifd0)]
    pointers: list[tuple[int, int]] = []  # (tag in IFD0, index of the sub-IFD)
    for tag, sub in ((0x8769, exif), (0x8825, gps)):
        if sub is not None:
            pointers.append((tag, len(ifds)))
            ifds.append(dict(sub))
            ifds[0][tag] = (4, 1, b"\x00\x00\x00\x00")  # patched below

    def size(ifd: dict[int, Entry]) -> int:
        extra = sum(len(v) + len(v) % 2 for _, _, v in ifd.values() if len(v) > 4)
        return 2 + 12 * len(ifd) + 4 + extra

    offsets = [8]
    for ifd in ifds[:-1]:
        offsets.append(offsets[-1] + size(ifd))
    for tag, index in pointers:
        ifds[0][tag] = (4, 1, struct.pack("<I", offsets[index]))
    out = b"II*\x00" + struct.pack("<I", 8)
    for ifd, start in zip(ifds, offsets, strict=True):
        data_at = start + 2 + 12 * len(ifd) + 4
        entries, data = b"", b""
        for tag in sorted(ifd):
            typ, count, value = ifd[tag]
            if len(value) > 4:
                entries += struct.pack("<HHII", tag, typ, count, data_at + len(data))
                data += value + b"\x00" * (len(value) % 2)
            else:
                entries += struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\x00")
        out += struct.pack("<H", len(ifd)) + entries + struct.pack("<I", 0) + data
    return b"Exif\x00\x00" + out
