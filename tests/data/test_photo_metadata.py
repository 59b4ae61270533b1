"""data.metadata: EXIF, XMP (embedded and sidecar), IPTC, colours and seasons, and garbage in each."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from metadata_photos import ascii_, double, exif_for, iptc_app13, photo, rational, raw_exif, short, xmp_packet
from PIL import Image, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

from img_search.catalog import PhotoMetadata
from img_search.data.images import decode_image
from img_search.data.metadata import (
    dominant_colors,
    exif_datetime,
    gps_altitude,
    gps_coordinate,
    offset_minutes,
    read_metadata,
    season_of,
    sidecar_mtimes,
    xmp_coordinate,
    xmp_datetime,
)


def _both(path: Path) -> PhotoMetadata:
    """read_metadata from the path alone (back-fill) and from bytes + decoded image (decode workers): the same."""
    data = path.read_bytes()
    from_bytes = read_metadata(str(path), data, decode_image(data))
    assert read_metadata(str(path)) == from_bytes
    return from_bytes


def test_exif_fields_round_trip(tmp_path: Path) -> None:
    exif = exif_for(taken="2023:07:14 18:30:05", offset="-03:30", make="Google", model="Pixel 7",
                    lens="Pixel 7 back camera 6.81mm f/1.85", orientation=6, lat=-33.8568, lon=-151.2153,
                    altitude=12.5, altitude_ref=1)
    m = _both(photo(tmp_path / "a.jpg", exif=exif))
    assert m.taken_at == "2023-07-14T18:30:05" and m.utc_offset_minutes == -210
    assert (m.camera_make, m.camera_model, m.camera) == ("Google", "Pixel 7", "Google Pixel 7")
    assert m.lens == "Pixel 7 back camera 6.81mm f/1.85" and m.orientation == 6
    assert m.latitude == pytest.approx(-33.8568, abs=1e-5) and m.longitude == pytest.approx(-151.2153, abs=1e-5)
    assert m.altitude == pytest.approx(-12.5)  # below sea level
    assert m.season == "winter"  # July, southern hemisphere
    assert m.keywords == () and m.description is None and m.sidecar_mtime_ns is None


def test_datetime_falls_back_to_ifd0_and_north_is_positive(tmp_path: Path) -> None:
    m = _both(photo(tmp_path / "a.jpg", exif=exif_for(datetime="2021:12:24 20:00:00", lat=48.8584, lon=2.2945,
                                                       altitude=35.0)))
    assert m.taken_at == "2021-12-24T20:00:00" and m.utc_offset_minutes is None
    assert m.latitude == pytest.approx(48.8584, abs=1e-5) and m.longitude == pytest.approx(2.2945, abs=1e-5)
    assert m.altitude == pytest.approx(35.0) and m.season == "winter"


R48, R2 = rational((48, 1), (30, 1), (0, 1)), rational((2, 1), (20, 1), (0, 1))


@pytest.mark.parametrize(
    ("ifd0", "exif", "gps", "none_fields"),
    [
        # wrong types for every tag
        ({0x010F: short(5), 0x0110: double(3.5), 0x0112: ascii_("6"), 0x0132: short(2023)},
         {0x9003: rational((1, 1)), 0x9011: short(1), 0xA434: short(3)},
         {1: short(1), 2: ascii_("forty-eight"), 3: ascii_("E"), 4: R2},
         ("camera_make", "camera_model", "orientation", "taken_at", "utc_offset_minutes", "lens", "latitude",
          "longitude", "season")),
        # right types, impossible values
        ({0x010F: ascii_(""), 0x0112: short(9)}, {0x9003: ascii_("0000:00:00 00:00:00"), 0x9011: ascii_("+99:00")},
         {1: ascii_("N"), 2: rational((400, 1), (0, 1), (0, 1)), 3: ascii_("E"), 4: R2},
         ("camera_make", "orientation", "taken_at", "utc_offset_minutes", "latitude", "longitude")),
        ({}, {0x9003: ascii_("2023:13:45 25:61:00")},
         {1: ascii_("Q"), 2: R48, 3: ascii_("E"), 4: R2}, ("taken_at", "latitude", "longitude")),  # bad ref
        ({}, {}, {1: ascii_("N"), 2: rational((48, 1), (70, 1), (0, 1)), 3: ascii_("E"), 4: R2},
         ("latitude", "longitude")),  # 70 minutes
        ({}, {}, {1: ascii_("N"), 2: rational((1, 0), (0, 1), (0, 1)), 3: ascii_("E"), 4: R2},
         ("latitude", "longitude")),  # division by zero
        ({}, {}, {2: R48, 4: R2}, ("latitude", "longitude")),  # no refs: the sign is unknown
        ({}, {}, {1: ascii_("N"), 2: rational((0, 1), (0, 1), (0, 1)), 3: ascii_("E"),
                  4: rational((0, 1), (0, 1), (0, 1))}, ("latitude", "longitude")),  # (0, 0): no fix
        ({}, {}, {1: ascii_("N"), 2: R48, 3: ascii_("E"), 4: R2, 9: ascii_("V")},
         ("latitude", "longitude")),  # measurement void
        ({}, {}, {1: ascii_("N"), 2: R48, 3: ascii_("E"), 4: R2, 5: short(7), 6: rational((10, 0))},
         ("altitude",)),
    ],
)
def test_garbage_exif_gives_none_fields_and_never_raises(tmp_path: Path, ifd0: dict, exif: dict, gps: dict,
                                                         none_fields: tuple) -> None:
    path = tmp_path / "bad.jpg"
    Image.new("RGB", (64, 48), (120, 130, 140)).save(path, exif=raw_exif(ifd0, exif, gps))
    m = _both(path)
    for name in none_fields:
        assert getattr(m, name) is None, name
    assert m.colors == ("gray",)  # the rest of the file is still read
    if "latitude" not in none_fields:
        assert m.latitude == pytest.approx(48.5) and m.longitude == pytest.approx(2 + 1 / 3)


def test_valid_fields_survive_garbage_beside_them(tmp_path: Path) -> None:
    exif = raw_exif({0x010F: ascii_("Canon"), 0x0110: ascii_(b"Canon EOS R5\x00\x00  "), 0x0112: ascii_("x")},
                    {0x9003: ascii_("2022:04:01 09:00:00")}, {1: ascii_("N"), 2: ascii_("junk")})
    path = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48), (120, 130, 140)).save(path, exif=exif)
    m = _both(path)
    assert (m.camera_make, m.camera_model, m.camera) == ("Canon", "Canon EOS R5", "Canon EOS R5")
    assert m.taken_at == "2022-04-01T09:00:00" and m.season == "spring"
    assert m.orientation is None and m.latitude is None


def test_not_an_image_or_missing_file_gives_empty_metadata(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff not really")
    assert read_metadata(str(tmp_path / "x.jpg")) == PhotoMetadata()
    assert read_metadata(str(tmp_path / "missing.jpg")) == PhotoMetadata()
    noisy = io.BytesIO()
    Image.effect_noise((400, 300), 60).convert("RGB").save(noisy, "JPEG", exif=exif_for(make="Nikon"))
    cut = noisy.getvalue()[: len(noisy.getvalue()) // 2]  # truncated in the pixel data: the headers are still read
    assert read_metadata(str(tmp_path / "t.jpg"), cut).camera_make == "Nikon"


def test_embedded_xmp_and_iptc_keywords(tmp_path: Path) -> None:
    xmp = xmp_packet(keywords=("Cat", "sofa"), description="Mimi asleep", rating=4)
    path = photo(tmp_path / "a.jpg", xmp=xmp, iptc=iptc_app13(("cat", "living room"), caption="IPTC caption"))
    m = _both(path)
    assert m.keywords == ("Cat", "sofa", "living room")  # union, case-insensitive de-duplication
    assert m.description == "Mimi asleep" and m.rating == 4  # x-default item of the Alt
    only_iptc = _both(photo(tmp_path / "b.jpg", iptc=iptc_app13(("harbour",), caption="Boats at dawn")))
    assert only_iptc.keywords == ("harbour",) and only_iptc.description == "Boats at dawn"


def test_png_xmp_chunk(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp_packet(keywords=("diagram",)).decode())
    Image.new("RGB", (16, 16), (0, 0, 230)).save(tmp_path / "a.png", pnginfo=info)
    m = _both(tmp_path / "a.png")
    assert m.keywords == ("diagram",) and m.colors == ("blue",)


@pytest.mark.parametrize("name", ["a.jpg.xmp", "a.xmp", "a.JPG.XMP"])
def test_sidecar_beside_the_image(tmp_path: Path, name: str) -> None:
    img_name = "a.JPG" if name.startswith("a.JPG") else "a.jpg"
    path = photo(tmp_path / img_name, xmp=xmp_packet(keywords=("embedded",), description="from the camera"),
                 exif=exif_for(make="Sony", taken="2020:01:05 12:00:00"))
    extra = ('<exif:GPSLatitude>51,30.45N</exif:GPSLatitude><exif:GPSLongitude>0,7.5W</exif:GPSLongitude>'
             '<exif:DateTimeOriginal>2019-08-01T10:00:00+01:00</exif:DateTimeOriginal>')
    sidecar = tmp_path / name
    sidecar.write_bytes(xmp_packet(keywords=("Ana", "birthday"), description="Ana's 7th", rating=5, extra=extra))
    m = _both(path)
    assert m.keywords == ("Ana", "birthday", "embedded")  # sidecar first
    assert m.description == "Ana's 7th" and m.rating == 5  # the sidecar wins over the embedded packet
    assert m.taken_at == "2019-08-01T10:00:00" and m.utc_offset_minutes == 60  # and over EXIF
    assert m.camera_make == "Sony"  # what the sidecar does not say comes from the file
    assert m.latitude == pytest.approx(51.5075) and m.longitude == pytest.approx(-0.125)
    assert m.season == "summer"
    assert m.sidecar_mtime_ns == os.stat(sidecar).st_mtime_ns
    assert sidecar_mtimes([str(path), str(tmp_path / "other.jpg")]) == {
        str(path): os.stat(sidecar).st_mtime_ns, str(tmp_path / "other.jpg"): None}


def test_hostile_or_broken_sidecars_are_ignored(tmp_path: Path) -> None:
    path = photo(tmp_path / "a.jpg", exif=exif_for(make="Fujifilm"))
    bombs = [
        b"not xml at all <<<",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>',
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    ]
    for data in bombs:
        (tmp_path / "a.jpg.xmp").write_bytes(data)
        m = read_metadata(str(path))
        assert m.camera_make == "Fujifilm" and m.keywords == () and m.sidecar_mtime_ns is not None


@pytest.mark.parametrize(
    ("color", "expected"),
    [((230, 20, 20), ("red",)), ((20, 40, 210), ("blue",)), ((250, 250, 250), ("white",)),
     ((10, 10, 10), ("black",)), ((40, 150, 40), ("green",)), ((250, 220, 30), ("yellow",))],
)
def test_colours_of_solid_images(tmp_path: Path, color: tuple[int, int, int], expected: tuple[str, ...]) -> None:
    assert dominant_colors(Image.new("RGB", (300, 200), color)) == expected
    assert _both(photo(tmp_path / "c.jpg", color, size=(300, 200))).colors == expected


def test_colours_by_coverage_and_small_patches_dropped() -> None:
    arr = np.zeros((100, 100, 3), np.uint8)
    arr[:, :] = (20, 40, 210)  # 65% blue
    arr[:, :30] = (230, 20, 20)  # 30% red
    arr[:5, 30:] = (40, 150, 40)  # 3.5% green: below the 10% cut
    assert dominant_colors(Image.fromarray(arr)) == ("blue", "red")
    speckle = np.where(np.random.default_rng(0).random((300, 400, 1)) < 0.5, (230, 20, 20), (250, 250, 250))
    # pixel-fine red and white stay two colours (sampled, not averaged into pink)
    assert set(dominant_colors(Image.fromarray(speckle.astype(np.uint8)))) == {"red", "white"}
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent: composited on white
    assert dominant_colors(rgba) == ("white",)


@pytest.mark.parametrize(
    ("taken", "lat", "season"),
    [("2023-01-15T00:00:00", None, "winter"), ("2023-01-15T00:00:00", -33.9, "summer"),
     ("2023-03-01T00:00:00", 10.0, "spring"), ("2023-03-01T00:00:00", -0.1, "autumn"),
     ("2023-06-30T00:00:00", 48.0, "summer"), ("2023-08-31T23:59:59", -48.0, "winter"),
     ("2023-09-01T00:00:00", 0.0, "autumn"), ("2023-11-30T00:00:00", -1.0, "spring"),
     ("2023-12-01T00:00:00", 60.0, "winter"), (None, 10.0, None)],
)
def test_meteorological_seasons(taken: str | None, lat: float | None, season: str | None) -> None:
    assert season_of(taken, lat) == season


def test_value_parsers() -> None:
    assert exif_datetime("2023:06:01 10:00:00") == "2023-06-01T10:00:00"
    assert exif_datetime(b"2023:06:01 10:00:00\x00") == "2023-06-01T10:00:00"
    assert exif_datetime("2023-06-01 10:00") == "2023-06-01T10:00:00"
    for bad in ("", "    :  :     :  :  ", "0000:00:00 00:00:00", "2023:02:30 10:00:00", "1700:01:01 00:00:00", 5):
        assert exif_datetime(bad) is None
    assert offset_minutes("+05:45") == 345 and offset_minutes("-00:30") == -30 and offset_minutes("+14:00") == 840
    for bad in ("+15:00", "-13:00", "+02:75", "02:00", "", None, 120):
        assert offset_minutes(bad) is None
    r = IFDRational
    assert gps_coordinate((r(48, 1), r(51, 1), r(30, 1)), "N", positive="N", negative="S",
                          limit=90) == pytest.approx(48.858333, abs=1e-6)
    assert gps_coordinate((48.5,), b"S\x00", positive="N", negative="S", limit=90) == -48.5
    assert gps_coordinate((r(10, 1), r(0, 1), r(0, 1)), None, positive="N", negative="S", limit=90) is None
    assert gps_coordinate((r(179, 1), r(59, 1), r(59, 1)), "W", positive="E", negative="W",
                          limit=180) == pytest.approx(-179.99972, abs=1e-5)
    assert gps_coordinate((r(180, 1), r(1, 1), r(0, 1)), "E", positive="E", negative="W", limit=180) is None
    assert gps_coordinate((r(-5, 1),), "N", positive="N", negative="S", limit=90) is None
    assert gps_altitude(r(8848, 1), 0) == 8848 and gps_altitude(r(430, 1), b"\x01") == -430
    assert gps_altitude(r(1, 0), 0) is None and gps_altitude(r(10, 1), 7) is None and gps_altitude(2e6, 0) is None
    assert xmp_coordinate("48,51.5N", positive="N", negative="S", limit=90) == pytest.approx(48.858333, abs=1e-6)
    assert xmp_coordinate("2,17,40W", positive="E", negative="W", limit=180) == pytest.approx(-2.294444, abs=1e-6)
    assert xmp_coordinate("91,0N", positive="N", negative="S", limit=90) is None
    assert xmp_coordinate("48.1", positive="N", negative="S", limit=90) is None
    assert xmp_datetime("2023-06-01T10:00:00.25Z") == ("2023-06-01T10:00:00", 0)
    assert xmp_datetime("2023-06-01") == ("2023-06-01T00:00:00", None)
    assert xmp_datetime("2023:06:01 10:00:00") == ("2023-06-01T10:00:00", None)
    assert xmp_datetime("June 2023") == (None, None)
