"""Every bad-input case: what Pillow can decode is embedded as RGB, the rest fails with a reason."""

from __future__ import annotations

import io
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import pattern, run_measuring_peak
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


# -- PNG metadata over Pillow's limits (case png_big_text_chunk) -------------------------------------------------
def _big_metadata_pngs() -> dict[str, tuple[bytes, Image.Image]]:
    """The four PNGs of the field report: zTXt, compressed iTXt and iCCP chunks inflating past 1 MB, and a plain one."""
    from PIL import PngImagePlugin

    meta = "{\"nodes\": [" + ",".join(f'{{"id": {i}, "kind": "step", "args": [1, 2, 3]}}' for i in range(40000)) + "]}"
    assert len(meta) > PngImagePlugin.MAX_TEXT_CHUNK
    img = pattern(7, (64, 48))
    ztxt, itxt = PngImagePlugin.PngInfo(), PngImagePlugin.PngInfo()
    ztxt.add_text("workflow", meta, zip=True)
    itxt.add_itxt("workflow", meta, zip=True)
    return {
        "ztxt": (_encode(img, "PNG", pnginfo=ztxt), img),
        "itxt": (_encode(img, "PNG", pnginfo=itxt), img),
        "icc": (_encode(img, "PNG", icc_profile=meta.encode()[:2_000_000]), img),
        "plain": (_encode(img, "PNG"), img),
    }


@pytest.mark.parametrize("name", ["ztxt", "itxt", "icc", "plain"])
def test_png_with_oversized_metadata_keeps_its_pixels(name: str) -> None:
    data, src = _big_metadata_pngs()[name]
    if name != "plain":  # Pillow itself refuses these (its bomb limit on metadata stays in force)
        with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):
            Image.open(io.BytesIO(data)).load()
    np.testing.assert_array_equal(np.asarray(decode_image(data)), np.asarray(src))


def test_png_text_past_max_text_memory_and_after_the_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import PngImagePlugin

    from img_search.data.images import png_without_oversized_metadata

    src = pattern(8, (40, 30))
    info = PngImagePlugin.PngInfo()
    for i in range(6):
        info.add_text(f"note{i}", "x" * 300)  # plain tEXt: only the total counts
    data = _encode(src, "PNG", pnginfo=info)
    monkeypatch.setattr(PngImagePlugin, "MAX_TEXT_MEMORY", 1000)
    with pytest.raises(ValueError, match="MAX_TEXT_MEMORY"):
        Image.open(io.BytesIO(data)).load()
    stripped = png_without_oversized_metadata(data)
    assert stripped is not None and stripped.count(b"tEXt") == 3  # 3 x 300 fit in 1000; the rest are dropped
    np.testing.assert_array_equal(np.asarray(decode_image(data)), np.asarray(src))
    assert png_without_oversized_metadata(_encode(src, "PNG")) is None  # nothing to drop
    assert png_without_oversized_metadata(b"GIF89a") is None


def test_png_metadata_chunk_after_the_image_data() -> None:
    """Text chunks after IDAT are read by load(), not open(): the fallback covers both."""
    import struct
    import zlib

    from PIL import PngImagePlugin

    src = pattern(9, (32, 24))
    plain = _encode(src, "PNG")
    body = b"comment\x00\x00" + zlib.compress(b"a" * (PngImagePlugin.MAX_TEXT_CHUNK + 10))
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    iend = plain.rindex(b"IEND") - 4
    data = plain[:iend] + chunk + plain[iend:]
    img = Image.open(io.BytesIO(data))
    with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):
        img.load()
    np.testing.assert_array_equal(np.asarray(decode_image(data)), np.asarray(src))


# -- formats (case unscanned_photo_extensions) ---------------------------------------------------------------------
def test_every_indexed_extension_is_one_pillow_opens() -> None:
    from img_search.data.formats import UNSUPPORTED_FORMATS
    from img_search.data.images import HEIF_AVAILABLE, IMAGE_EXTENSIONS

    assert HEIF_AVAILABLE  # pi-heif is a core dependency
    registered = Image.registered_extensions()
    assert sorted(e for e in IMAGE_EXTENSIONS if e not in registered) == []
    assert not set(UNSUPPORTED_FORMATS) & set(IMAGE_EXTENSIONS)
    assert not set(UNSUPPORTED_FORMATS) & set(registered)  # nothing Pillow could read is refused by name
    assert UNSUPPORTED_FORMATS[".nef"].reason(".nef").startswith("camera RAW (.nef) is not supported: convert")


def test_mpo_decodes_its_first_picture() -> None:
    left, right = Image.new("RGB", (96, 64), (200, 30, 30)), Image.new("RGB", (96, 64), (30, 30, 200))
    data = _encode(left, "MPO", save_all=True, append_images=[right])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    px = np.asarray(decode_image(data)).astype(int)
    assert px.shape == (64, 96, 3) and px[32, 48, 0] > 180 and px[32, 48, 2] < 60


def test_avif_decodes_natively() -> None:
    src = Image.new("RGB", (64, 48), (30, 160, 90))
    px = np.asarray(decode_image(_encode(src, "AVIF", quality=90))).astype(int)
    assert px.shape == (48, 64, 3) and np.abs(px - (30, 160, 90)).max() < 12


HEIC_FIXTURE = Path(__file__).parent / "fixtures" / "red_blue_64x48.heic"


def test_heic_decodes_through_pi_heif() -> None:
    """A real HEIC (595 bytes: a 64x48 picture, left half red (200, 30, 30), right half blue (30, 30, 200), encoded
    once with libheif's `heif-enc -q 90` (x265); pi-heif itself only decodes)."""
    img = decode_image(HEIC_FIXTURE.read_bytes())
    px = np.asarray(img).astype(int)
    assert img.size == (64, 48)
    assert np.abs(px[24, 8] - (200, 30, 30)).max() < 12 and np.abs(px[24, 56] - (30, 30, 200)).max() < 12


def test_heif_files_reach_the_heif_decoder() -> None:
    # a damaged HEIC (the case's file: a real 'ftypheic' box, then noise) fails with a reason, like any damaged image
    from pi_heif import is_supported

    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 12
    assert is_supported(data)
    with pytest.raises(ImageDecodeError, match="not an image Pillow can read"):
        decode_image(data)


# -- the pixel limit -----------------------------------------------------------------------------------------------
@pytest.fixture()
def pixel_state(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Restore Pillow's guard, our configured limit and the warning filters after a test that configures them."""
    import warnings

    import img_search.data.images as images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setattr(images, "_configured_limit", images._configured_limit)
    with warnings.catch_warnings():
        yield images


def test_pillow_guard_stays_on_by_default() -> None:
    from img_search.data.images import pixel_limit
    from img_search.settings import DEFAULT_MAX_IMAGE_PIXELS

    assert Image.MAX_IMAGE_PIXELS is not None
    assert pixel_limit() == 2 * Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


@pytest.mark.parametrize("limit", [10_000, 10_001])
def test_configured_limit_is_enforced_by_pillow_itself(pixel_state, limit: int) -> None:  # type: ignore[no-untyped-def]
    pixel_state.configure_pixel_limit(limit)
    assert pixel_state.pixel_limit() == limit
    big = _encode(Image.new("RGB", (101, 101)), "PNG")  # 10,201 pixels
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(big))  # any code in the process, not only ours
    with pytest.raises(ImageDecodeError, match=r"too large: .*10,20[01]"):
        decode_image(big)
    exact = _encode(Image.new("RGB", (limit, 1)), "PNG")  # at the limit: accepted by both
    assert decode_image(exact).size == (limit, 1)
    above = _encode(Image.new("RGB", (limit + 1, 1)), "PNG")
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(above)


def test_a_call_may_lower_the_limit_never_raise_it(pixel_state) -> None:  # type: ignore[no-untyped-def]
    from img_search.errors import InvalidInputError

    pixel_state.configure_pixel_limit(50_000)
    data = _encode(Image.new("RGB", (300, 100)), "PNG")
    assert decode_image(data, max_image_pixels=50_000).size == (300, 100)
    with pytest.raises(ImageDecodeError, match="too large: 300x100 = 30,000 pixels exceeds the limit of 20,000"):
        decode_image(data, max_image_pixels=20_000)
    with pytest.raises(InvalidInputError, match="above the process-wide pixel limit of 50,000") as err:
        decode_image(data, max_image_pixels=50_001)
    assert not isinstance(err.value, ImageDecodeError)  # a usage error, not a bad file
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(InvalidInputError, match=">= 1"):
            decode_image(data, max_image_pixels=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match=">= 1"):
            pixel_state.configure_pixel_limit(bad)


def test_bomb_warning_raised_as_error_becomes_a_reason(pixel_state) -> None:  # type: ignore[no-untyped-def]
    import warnings

    pixel_state.configure_pixel_limit(20_000)  # Pillow warns above 10,000 pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)  # as `python -W error` would
    with pytest.raises(ImageDecodeError, match="too large: 12,000 pixels is above Pillow's warning threshold"):
        decode_image(_encode(Image.new("RGB", (120, 100)), "PNG"))


def test_decoding_in_threads_never_touches_the_global(pixel_state) -> None:  # type: ignore[no-untyped-def]
    import types
    from concurrent.futures import ThreadPoolExecutor

    pixel_state.configure_pixel_limit(1_000_000)
    writes: list[str] = []

    class Watched(types.ModuleType):
        def __setattr__(self, name: str, value: object) -> None:
            if name != "__class__":  # the test's own restoring of the module
                writes.append(name)
            super().__setattr__(name, value)

    pil_image = sys.modules["PIL.Image"]
    small, large = _encode(pattern(1, (40, 30)), "PNG"), _encode(pattern(2, (400, 300)), "JPEG")

    def work(i: int) -> str:
        limit = 10_000 if i % 2 else None
        try:
            return str(decode_image(large, max_image_pixels=limit).size)
        except ImageDecodeError as exc:
            return str(exc)[:9] + str(decode_image(small, max_image_pixels=limit).size)

    pil_image.__class__ = Watched
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(64)))
    finally:
        pil_image.__class__ = types.ModuleType
    assert writes == []
    assert Image.MAX_IMAGE_PIXELS == 500_000
    assert results == ["(400, 300)", "too large(40, 30)"] * 32


# -- reduced-scale JPEG decoding (decode modes) ------------------------------------------------------------------
def _photo(size: tuple[int, int] = (640, 480), seed: int = 3) -> Image.Image:
    return pattern(seed, size)


def test_reduced_decode_keeps_both_sides_at_least_min_side_and_the_full_size() -> None:
    from img_search.data.images import full_size

    data = _encode(_photo((640, 480)), "JPEG", quality=90)
    full = decode_image(data)
    for min_side, expected in ((224, (320, 240)), (100, (160, 120)), (50, (80, 60)), (240, (320, 240)),
                               (241, (640, 480)), (400, (640, 480))):
        out = decode_image(data, min_side=min_side)
        assert out.size == expected
        assert min(out.size) >= min_side or out.size == full.size
        assert full_size(out) == (640, 480)
    assert full_size(full) == (640, 480)


def test_reduced_decode_is_close_to_a_full_decode_resized() -> None:
    data = _encode(_photo((800, 600), seed=7), "JPEG", quality=92)
    reduced = decode_image(data, min_side=200)
    assert reduced.size == (400, 300)
    full_small = np.asarray(decode_image(data).resize(reduced.size, Image.Resampling.BOX), np.float32)
    diff = np.abs(np.asarray(reduced, np.float32) - full_small)
    assert diff.mean() < 5.0  # of 255 (the picture carries noise of sigma 20): DCT scaling ~ an area average


def test_reduced_decode_applies_exif_orientation() -> None:
    from img_search.data.images import full_size

    img = _photo((640, 480), seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = _encode(img, "JPEG", exif=exif.tobytes(), quality=92)
    full, reduced = decode_image(data), decode_image(data, min_side=200)
    assert full.size == (480, 640) and reduced.size == (240, 320)
    assert full_size(reduced) == (480, 640)
    got = np.asarray(reduced, np.float32)
    expected = np.asarray(full.resize(reduced.size, Image.Resampling.BOX), np.float32)
    upside_down = np.asarray(full.transpose(Image.Transpose.ROTATE_180).resize(reduced.size, Image.Resampling.BOX),
                             np.float32)
    assert np.abs(got - expected).mean() < 5.0 < np.abs(got - upside_down).mean()  # turned the same way


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_reduced_decode_leaves_other_formats_untouched(fmt: str) -> None:
    from img_search.data.images import full_size

    data = _encode(_photo((640, 480), seed=2), fmt)
    full, asked = decode_image(data), decode_image(data, min_side=100)
    assert asked.size == (640, 480) and full_size(asked) == (640, 480)
    np.testing.assert_array_equal(np.asarray(asked), np.asarray(full))


def test_reduced_decode_checks_the_pixel_limit_on_the_full_size() -> None:
    data = _encode(_photo((640, 480)), "JPEG")
    with pytest.raises(ImageDecodeError, match="too large: 640x480"):
        decode_image(data, max_image_pixels=640 * 480 - 1, min_side=50)
    assert decode_image(data, max_image_pixels=640 * 480, min_side=50).size == (80, 60)


def test_decode_mode_names() -> None:
    from img_search.data.images import DECODE_FULL, decode_factor, reduced_decode_side, reduced_mode
    from img_search.errors import InvalidInputError

    assert reduced_mode(1) == "reduced-1x" and decode_factor("reduced-2x") == 2 and decode_factor(DECODE_FULL) is None
    assert reduced_decode_side(224, "reduced-2x") == 448 and reduced_decode_side(224, DECODE_FULL) is None
    assert reduced_decode_side(None, "reduced-1x") is None  # unknown input side: full decoding
    for bad in ("reduced", "reduced-0x", "half", ""):
        with pytest.raises(InvalidInputError):
            decode_factor(bad)
    with pytest.raises(InvalidInputError):
        decode_image(b"x", min_side=0)


# -- files: regular files only, and no more read than needed (new-user trial: /dev/zero, a FIFO, a 3 GB sparse file) --
HUGE = 3 * 2**30  # a sparse file of this many zero bytes costs no disk
# peak resident memory (MiB) a process may reach when refusing the huge file: interpreter + numpy + Pillow are ~60 MiB;
# reading the file whole took 3 GiB
PEAK_MIB = 400


def _sparse(path: Path, size: int = HUGE) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


@pytest.mark.parametrize("make", ["fifo", "dev-zero"])
def test_a_pipe_or_a_device_is_refused_before_any_read(tmp_path: Path, make: str) -> None:
    """A FIFO would block the read forever and /dev/zero never ends: both are refused at once, as `index`'s scan
    refuses them, by every reader of image files (the hash too)."""
    from img_search.data.images import content_hash_file, open_regular_file

    if make == "fifo":
        path = str(tmp_path / "pipe.jpg")
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    for read in (read_file, load_image, content_hash_file, open_regular_file):
        with pytest.raises(ImageDecodeError, match=r"^not a regular file \(device, socket or pipe\)$"):
            read(path)


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    data = _encode(pattern(3, (20, 10)), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    assert read_file(str(tmp_path / "link.png")) == data


def test_a_huge_file_that_is_no_image_is_refused_after_its_header(tmp_path: Path) -> None:
    """3 GB of zeros: refused from its header; a child process measures its own peak memory (VmHWM)."""
    path = _sparse(tmp_path / "huge.jpg")
    code = (
        "import sys\n"
        "from img_search.data.images import read_file\n"
        "from img_search.errors import ImageDecodeError\n"
        "try:\n"
        "    read_file(sys.argv[1])\n"
        "except ImageDecodeError as exc:\n"
        "    print(exc)\n"
    )
    reason, peak_mib = run_measuring_peak(code, str(path))
    assert reason == "not an image Pillow can read (unknown format or damaged header)"
    assert peak_mib < PEAK_MIB


def test_content_hash_file_is_content_hash_in_bounded_memory(tmp_path: Path) -> None:
    """The catalog keys vectors by the hash: streaming must give the digest of the whole bytes, for files below,
    at and above the chunk size, and hold no more than a chunk or two of Python memory."""
    from img_search.data.images import HASH_CHUNK_BYTES, content_hash, content_hash_file

    rng = np.random.default_rng(0)
    for size in (1, HASH_CHUNK_BYTES - 1, HASH_CHUNK_BYTES, 3 * HASH_CHUNK_BYTES + 17):
        path = tmp_path / f"f{size}.bin"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        assert content_hash_file(str(path)) == content_hash(path.read_bytes())
    big = _sparse(tmp_path / "big.bin", 64 * HASH_CHUNK_BYTES)
    tracemalloc.start()
    try:
        digest = content_hash_file(str(big))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == content_hash(bytes(64 * HASH_CHUNK_BYTES))
    assert peak < 4 * HASH_CHUNK_BYTES


@pytest.mark.parametrize("name", ["ztxt", "itxt", "icc", "plain"])
def test_a_png_file_whose_header_pillow_refuses_for_its_metadata_keeps_its_pixels(tmp_path: Path, name: str) -> None:
    """read_file checks the header first; a PNG whose metadata passes Pillow's limits is still read whole, for
    decode_image's fallback."""
    data, src = _big_metadata_pngs()[name]
    (tmp_path / "a.png").write_bytes(data)
    assert read_file(str(tmp_path / "a.png")) == data
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "a.png"))), np.asarray(src))


def test_a_file_above_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_encode(pattern(4, (40, 30)), "PNG"))
    with pytest.raises(ImageDecodeError, match=r"^too large: 40x30 = 1,200 pixels exceeds the limit of 1,000"):
        read_file(str(path), max_image_pixels=1000)
    assert read_file(str(path), max_image_pixels=1200) == path.read_bytes()


# -- files larger than READ_WHOLE_MAX_BYTES: decoded from the file, hashed by streaming -------------------------------
TRAILING = 2**30  # zero bytes after a tiny picture: far above READ_WHOLE_MAX_BYTES, sparse (no disk)


def _tiny_with_exif(path: Path, fmt: str) -> bytes:
    from metadata_photos import exif_for

    exif = exif_for(taken="2021:06:05 14:30:00", make="Fujifilm", model="X-T4")
    img = pattern(11, (4, 4))
    data = _encode(img, fmt, exif=exif)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_tiny_image_followed_by_a_gigabyte_is_decoded_hashed_and_read_in_bounded_memory(tmp_path: Path,
                                                                                          fmt: str) -> None:
    """A 4x4 picture then 1 GiB of zeros: read_file held all of it (1.1 GiB peak). A child process reads, decodes,
    hashes and reads the metadata as `index`'s decode workers and `similar` do; its own peak memory (VmHWM) is
    measured. The digest is the whole file's, the pixels and metadata are the tiny picture's."""
    from img_search.data.images import content_hash, content_hash_file
    from img_search.data.metadata import read_metadata

    head = _tiny_with_exif(tmp_path / f"alone.{fmt.lower()}", fmt)
    path = tmp_path / f"padded.{fmt.lower()}"
    path.write_bytes(head)
    with open(path, "r+b") as fh:
        fh.truncate(len(head) + TRAILING)
    code = (
        "import sys\n"
        "from img_search.data.images import content_hash, decode_image, read_file\n"
        "from img_search.data.metadata import read_metadata\n"
        "data = read_file(sys.argv[1])\n"
        "image = decode_image(data)\n"
        "meta = read_metadata(sys.argv[1], data, image)\n"
        "print(content_hash(data).hex())\n"
        "print(image.tobytes().hex())\n"
        "print(repr(meta))\n"
    )
    out, peak_mib = run_measuring_peak(code, str(path))
    digest, pixels, meta = out.split("\n")
    assert digest == content_hash_file(str(path)).hex() != content_hash(head).hex()
    assert pixels == decode_image(head).tobytes().hex()
    alone = read_metadata(str(tmp_path / f"alone.{fmt.lower()}"), head, decode_image(head))
    assert alone.camera_model == "X-T4" and meta == repr(alone)
    assert peak_mib < PEAK_MIB


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "GIF", "WEBP", "ztxt-PNG"])
def test_a_large_file_decodes_hashes_and_reads_as_its_bytes_do(tmp_path: Path, fmt: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Above READ_WHOLE_MAX_BYTES (lowered here: every file is large) the same pixels, reduced JPEG decode, digest
    and metadata come from the file as from its bytes, PNG metadata over Pillow's limits included."""
    from img_search.data import images
    from img_search.data.images import LargeFile, content_hash, full_size
    from img_search.data.metadata import read_metadata

    if fmt == "ztxt-PNG":
        data, _ = _big_metadata_pngs()["ztxt"]
    else:
        data = _tiny_with_exif(tmp_path / "x", fmt) if fmt in ("JPEG", "PNG") else _encode(pattern(12, (300, 200)), fmt)
    path = tmp_path / "photo"
    path.write_bytes(data)
    monkeypatch.setattr(images, "READ_WHOLE_MAX_BYTES", 16)
    large = read_file(str(path))
    assert isinstance(large, LargeFile) and large.size == len(data)
    for min_side in (None, 64):
        got, want = decode_image(large, min_side=min_side), decode_image(data, min_side=min_side)
        assert got.tobytes() == want.tobytes() and full_size(got) == full_size(want)
    assert content_hash(large) == content_hash(data)
    assert read_metadata(str(path), large, decode_image(large)) == read_metadata(str(path), data, decode_image(data))
    monkeypatch.setattr(images, "READ_WHOLE_MAX_BYTES", len(data))
    assert read_file(str(path)) == data  # at the threshold: read whole, once


def test_a_large_file_that_changes_after_read_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded and hashed in two reads: a file replaced or rewritten in between must not pair one content's pixels
    with another's digest."""
    from img_search.data import images
    from img_search.data.images import content_hash

    monkeypatch.setattr(images, "READ_WHOLE_MAX_BYTES", 16)
    path = tmp_path / "a.png"
    path.write_bytes(_encode(pattern(13), "PNG"))
    large = read_file(str(path))
    replacement = tmp_path / "b.png"
    replacement.write_bytes(_encode(pattern(14), "PNG"))
    os.replace(replacement, path)
    for use in (decode_image, content_hash):
        with pytest.raises(ImageDecodeError, match=r"^the file changed while it was being read"):
            use(large)
    large = read_file(str(path))
    with open(path, "ab") as fh:
        fh.write(b"more")
    with pytest.raises(ImageDecodeError, match=r"^the file changed while it was being read"):
        content_hash(large)
