"""A generated folder of hostile files and names, with what `index` must make of each.

Every entry is one of three outcomes: ``ok`` (embedded), ``failed`` (recorded in the catalog with a reason that
starts with the given text) or ``ignored`` (not an image by name, hidden, excluded or a directory: never a catalog
row). Pictures come from ``tests/helpers.py``; the real HEIC is the one of ``tests/data/fixtures`` (pi-heif only
decodes, so no HEIC can be written here).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from helpers import make_jpeg, pattern
from PIL import Image, PngImagePlugin

HEIC_FIXTURE = Path(__file__).parents[1] / "data" / "fixtures" / "red_blue_64x48.heic"


@dataclass
class Corpus:
    root: Path
    ok: set[str] = field(default_factory=set)  # paths (os.fsdecode'd, absolute)
    failed: dict[str, str] = field(default_factory=dict)  # path -> the start of the reason
    ignored: set[str] = field(default_factory=set)

    def path(self, name: str | bytes) -> Path:
        raw = os.fsencode(self.root) + b"/" + (name if isinstance(name, bytes) else name.encode())
        return Path(os.fsdecode(raw))

    def add_ok(self, name: str | bytes, data: bytes) -> Path:
        p = self.path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.ok.add(str(p))
        return p

    def add_failed(self, name: str | bytes, data: bytes, reason: str) -> Path:
        p = self.path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.failed[str(p)] = reason
        return p


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of ``side`` x ``side`` black pixels: a few hundred KB that would inflate to side**2
    bytes (a real decompression bomb, compressed in slices so building it costs no memory)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    parts = [comp.compress(row * 256) for _ in range(side // 256)]
    parts.append(comp.compress(row * (side % 256)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def jpeg_with_app_segments(data: bytes, n: int, size: int = 65_000) -> bytes:
    """``data`` (a JPEG) with ``n`` APP15 segments of ``size`` bytes each inserted after SOI (n * size bytes of
    metadata in front of the picture)."""
    segment = b"\xff\xef" + struct.pack(">H", size + 2) + b"M" * size
    return data[:2] + segment * n + data[2:]


def build(root: Path, *, unreadable_is_readable: bool) -> Corpus:
    """Write the corpus under ``root``. ``unreadable_is_readable``: the indexing process can read a mode-000 file
    (root with its permission override), so that file is expected ``ok`` instead of ``permission denied``."""
    c = Corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    jpeg = encode(pattern(1, (80, 60)), "JPEG", quality=90)
    png = encode(pattern(2, (64, 48)), "PNG")

    # -- pictures that are strange but valid: embedded
    c.add_ok("plain.jpg", jpeg)
    c.add_ok("UPPER.JPG", encode(pattern(3), "JPEG"))
    c.add_ok("one-pixel-1x1.png", encode(Image.new("RGB", (1, 1), (250, 10, 10)), "PNG"))
    c.add_ok("wide-20000x20.png", encode(pattern(4, (20000, 20)), "PNG"))
    c.add_ok("tall-20x20000.jpg", encode(pattern(5, (20, 20000)), "JPEG"))
    grey16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    c.add_ok("sixteen-bit.png", encode(Image.fromarray(grey16), "PNG"))
    c.add_ok("cmyk.jpg", encode(pattern(6).convert("CMYK"), "JPEG"))
    pal = pattern(7).convert("P")
    c.add_ok("palette-transparency.png", encode(pal, "PNG", transparency=0))
    frames = [Image.new("RGB", (32, 32), col) for col in [(250, 0, 0), (0, 0, 250), (0, 250, 0)]]
    c.add_ok("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0))
    c.add_ok("animated.webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    c.add_ok("exif-rotated.jpg", encode(pattern(8, (60, 20)), "JPEG", exif=exif.tobytes()))
    c.add_ok("broken-exif.jpg", encode(pattern(9, (60, 20)), "JPEG", exif=b"Exif\x00\x00garbage-not-tiff"))
    c.add_ok("stereo.mpo", encode(pattern(10), "MPO", save_all=True, append_images=[pattern(11)]))
    c.add_ok("photo.heic", HEIC_FIXTURE.read_bytes())
    c.add_ok("multipage.tif", encode(pattern(12), "TIFF", save_all=True, append_images=[pattern(13)]))
    meta = '{"nodes": [' + ",".join(f'{{"id": {i}, "args": [1, 2, 3]}}' for i in range(60000)) + "]}"
    ztxt = PngImagePlugin.PngInfo()
    ztxt.add_text("workflow", meta, zip=True)  # inflates past Pillow's MAX_TEXT_CHUNK
    c.add_ok("huge-ztxt.png", encode(pattern(14), "PNG", pnginfo=ztxt))
    c.add_ok("huge-icc.png", encode(pattern(15), "PNG", icc_profile=meta.encode()[:2_000_000]))
    c.add_ok("huge-app-segments.jpg", jpeg_with_app_segments(encode(pattern(16), "JPEG"), 60))  # 3.9 MB
    c.add_ok("png-named.jpg", png)
    c.add_ok("trailing-garbage.jpg", encode(pattern(17), "JPEG") + os.urandom(10_000))
    # names: not UTF-8, control characters, terminal escapes, direction overrides, spaces, emoji
    c.add_ok(b"not-utf8-\xff\xfe.jpg", encode(pattern(18), "JPEG"))
    c.add_ok(b"latin1-caf\xe9.png", encode(pattern(19), "PNG"))
    c.add_ok("new\nline.jpg", encode(pattern(20), "JPEG"))
    c.add_ok("esc\x1b[31mred\x1b[0m.jpg", encode(pattern(21), "JPEG"))
    c.add_ok("tab\tand\rcr.png", encode(pattern(22), "PNG"))
    c.add_ok("rtl\u202egpj.png", encode(pattern(23), "PNG"))
    c.add_ok(" spaced name .jpg", encode(pattern(24), "JPEG"))
    c.add_ok("emoji-\U0001f4f7.jpg", encode(pattern(25), "JPEG"))
    c.add_ok("dir-named-like.jpg/inside.png", encode(pattern(26), "PNG"))  # the folder is walked, not read
    link = c.path("link-to-plain.jpg")
    link.symlink_to(c.path("plain.jpg"))
    c.ok.add(str(link))

    # -- damaged or hostile: recorded with a reason
    c.add_failed("truncated.jpg", jpeg[: len(jpeg) // 2], "corrupt or truncated image data")
    c.add_failed("truncated.png", png[: len(png) * 2 // 3], "corrupt or truncated image data")
    c.add_failed("zero-bytes.jpg", b"", "empty file (0 bytes)")
    c.add_failed("random-bytes.jpg", np.random.default_rng(0).bytes(4096), "not an image Pillow can read")
    c.add_failed("html.png", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n" * 20,
                 "not an image Pillow can read")
    c.add_failed("bomb-16000x16000.png", png_bomb(16000), "too large")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # the IHDR chunk's CRC
    c.add_failed("bad-crc.png", bytes(bad_crc), "not an image Pillow can read")
    c.add_failed("damaged.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(range(256)) * 12,
                 "not an image Pillow can read")
    c.add_failed("camera.NEF", b"II*\x00" + bytes(3000), "camera RAW (.nef) is not supported")
    loop = c.path("loop.jpg")
    loop.symlink_to(loop)
    c.failed[str(loop)] = "symlink loop"
    broken = c.path("broken-link.png")
    broken.symlink_to(c.path("gone.png"))
    c.failed[str(broken)] = "broken symlink (target does not exist)"
    fifo = c.path("fifo.jpg")
    os.mkfifo(fifo)
    c.failed[str(fifo)] = "not a regular file (device, socket or pipe)"
    secret = c.path("unreadable.jpg")
    secret.write_bytes(encode(pattern(27), "JPEG"))
    secret.chmod(0)
    if unreadable_is_readable:
        c.ok.add(str(secret))
    else:
        c.failed[str(secret)] = "permission denied"

    # -- never catalog rows
    for name, data in (("notes.txt", b"not an image"), (".hidden.jpg", jpeg), ("@eaDir/thumb.jpg", jpeg),
                       ("sidecar.xmp", b"<x:xmpmeta/>")):
        p = c.path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        c.ignored.add(str(p))
    for name in ("dir-named-like.jpg", "empty-dir.png"):
        c.path(name).mkdir(exist_ok=True)
        c.ignored.add(str(c.path(name)))
    make_jpeg(root.parent / "outside" / "o.jpg")
    dir_link = c.path("link-to-folder.jpg")
    dir_link.symlink_to(root.parent / "outside", target_is_directory=True)  # folders are not followed
    c.ignored.add(str(dir_link))
    return c
