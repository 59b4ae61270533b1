"""Every bad-input case: what Pillow can decode is embedded as RGB, the rest fails with a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from helpers import pattern
from PIL import Image

from img_search.data.images import decode_image, load_image, read_file, to_rgb
from img_search.errors import ImageDecodeError


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_truncated_jpeg_fails() -> None:
    data = _encode(pattern(1, (200, 150)), "JPEG")
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def test_zero_bytes_and_non_image() -> None:
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"%PDF-1.4 this is not a picture at all" * 10)


@pytest.mark.parametrize("mode", ["CMYK", "P", "L", "1", "YCbCr", "I", "F"])
def test_modes_become_rgb(mode: str) -> None:
    src = pattern(2).convert(mode) if mode not in ("I", "F") else pattern(2).convert("L").convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "YCbCr", "I", "F") else "PNG"
    img = decode_image(_encode(src, fmt))
    assert img.mode == "RGB" and img.size == src.size


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    data = _encode(Image.fromarray(arr), "PNG")
    px = np.asarray(decode_image(data))
    assert px.shape == (8, 8, 3)
    assert abs(int(px[0, 0, 0]) - 128) <= 1  # clipping would give 255


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    src = Image.new("RGBA", (4, 4), (255, 0, 0, 0)).convert(mode)  # fully transparent red
    px = np.asarray(decode_image(_encode(src, "PNG")))
    assert (px == 255).all()


def test_pa_mode_in_memory() -> None:  # PNG cannot store PA; other decoders can produce it
    src = Image.new("P", (4, 4), 0).convert("PA")
    src.putalpha(0)
    assert (np.asarray(to_rgb(src)) == 255).all()


def test_palette_with_transparency() -> None:
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    px = np.asarray(decode_image(_encode(p, "PNG", transparency=0)))
    assert (px == 255).all()


def test_exif_orientation_applied() -> None:
    img = pattern(3, (60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 60)


def test_broken_exif_does_not_cost_the_image() -> None:
    img = pattern(3, (60, 20))
    data = _encode(img, "JPEG", exif=b"Exif\x00\x00garbage-not-tiff")
    assert decode_image(data).size == (60, 20)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in [(250, 0, 0), (0, 0, 250), (0, 250, 0)]]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    px = np.asarray(decode_image(data)).astype(int)
    assert px[8, 8, 0] > 200 and px[8, 8, 2] < 60


def test_pixel_limit_is_configurable() -> None:
    data = _encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(ImageDecodeError, match="too large: 300x200"):
        decode_image(data, max_image_pixels=10_000)
    assert decode_image(data, max_image_pixels=60_000).size == (300, 200)


def test_decompression_bomb_header_rejected_without_decoding() -> None:
    # a PNG header claiming 100k x 100k pixels; Pillow's own guard would raise, ours names the limit
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(png)


def test_unreadable_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="is a directory"):
        read_file(str(tmp_path))
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(str(tmp_path / "missing.jpg"))
