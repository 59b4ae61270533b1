"""`index --ocr`: real text read by RapidOCR from signs rendered with Pillow into photos (several fonts, sizes, a
rotated sign), incremental by content (an engine that counts its calls), failures recorded without failing the run, a
collection indexed earlier back-filled without re-embedding, and the errors when the OCR libraries are missing."""

from __future__ import annotations

import glob
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from helpers import make_jpeg
from PIL import Image, ImageDraw, ImageFont

from img_search.catalog import Catalog, OcrText
from img_search.data import ocr as ocr_mod
from img_search.data.ocr import (
    MIN_LINE_CONFIDENCE,
    OCR_ENGINES,
    OcrEngine,
    assemble_lines,
    check_ocr_engine,
    scaled_for_ocr,
)
from img_search.errors import UnavailableError
from img_search.pipeline.runner import IndexOptions, index_folders
from img_search.search.filters import build_filter
from img_search.settings import load_settings

# -- a fake engine that counts its calls across the decode processes ------------------------------------------------


class CountingOcr(OcrEngine):
    """Reads no pixels: 'text' names the picture's mean colour; a 77-pixel-wide picture makes it fail. Every call
    appends a line to ``log`` (a file, so calls in forked decode workers count too)."""

    key = "test-counting"
    log: ClassVar[Path | None] = None

    @classmethod
    def check_available(cls) -> None:
        return None

    @property
    def name(self) -> str:
        return "counting 1.0"

    def read(self, image: Image.Image) -> OcrText:
        if CountingOcr.log is not None:
            with open(CountingOcr.log, "a") as fh:
                fh.write(f"{image.width}x{image.height}\n")
        if image.width == 77:
            raise RuntimeError("engine crashed on this picture")
        mean = int(np.asarray(image).mean())
        return OcrText(f"colour{mean} counted", 0.9, self.name)


if CountingOcr.key not in OCR_ENGINES:
    OCR_ENGINES.add(CountingOcr.key, CountingOcr)


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


class CountingEncoder:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.images = inner, 0
        self.info, self.device = inner.info, inner.device

    def image_preprocessor(self):  # type: ignore[no-untyped-def]
        return self.inner.image_preprocessor()

    def encode_batch(self, batch):  # type: ignore[no-untyped-def]
        out = self.inner.encode_batch(batch)
        self.images += len(out)
        return out


def _never():  # type: ignore[no-untyped-def]
    raise AssertionError("nothing needs embedding: the model must not be loaded")


def _index(folder: Path, idx: Path, model: Path, factory, **kw):  # type: ignore[no-untyped-def]
    opts = IndexOptions(model=str(model), batch_size=4, workers=kw.pop("workers", 1), **kw)
    return index_folders([str(folder)], idx, opts, encoder_factory=factory)


def test_ocr_is_incremental_backfills_without_reembedding_and_survives_failures(
        photo_dir: Path, tmp_path: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setattr(CountingOcr, "log", log)
    idx = tmp_path / "idx"
    shutil.copy(photo_dir / "a" / "img01.jpg", photo_dir / "copy_of_img01.jpg")  # 13 files, 12 contents
    make_jpeg(photo_dir / "crash.jpg", seed=99, size=(77, 50))  # the engine fails on this one: 14 files, 13 contents
    enc = CountingEncoder(siglip_encoder)
    first = _index(photo_dir, idx, tiny_siglip, lambda: enc)  # an existing collection, indexed without --ocr
    # the copy's bytes are img01's: encoded once, its vector reused
    assert (first.embedded, first.reused) == (13, 1) and first.ocr is None and _calls(log) == 0

    ocr = dict(ocr=True, ocr_engine=CountingOcr.key)
    later = _index(photo_dir, idx, tiny_siglip, _never, **ocr)  # --ocr later: read, never re-embedded
    assert later.embedded == 0 and later.unchanged == 14
    assert later.ocr is not None and (later.ocr.read, later.ocr.with_text, later.ocr.failed) == (13, 12, 1)
    assert _calls(log) == 13  # one read per content: the copy shares its original's text
    with Catalog.in_dir(idx, readonly=True) as cat:
        assert len(cat.ocr_hashes()) == 13
        copy, crash = cat.image(str(photo_dir / "copy_of_img01.jpg")), cat.image(str(photo_dir / "crash.jpg"))
        assert copy is not None and crash is not None and crash.status == "ok"  # the image itself is indexed
        assert crash.content_hash is not None and cat.ocr_text(crash.content_hash) == OcrText("", None, "counting 1.0")
        assert copy.content_hash is not None
        copy_text = cat.ocr_text(copy.content_hash)
        assert copy_text is not None and copy_text.text.startswith("colour")
        assert len(cat.text_search(["counted"], 50)) == 13  # 12 contents with text, the copy included

    again = _index(photo_dir, idx, tiny_siglip, _never, **ocr)
    assert again.ocr is not None and again.ocr.read == 0 and _calls(log) == 13  # nothing read twice

    make_jpeg(photo_dir / "a" / "img03.jpg", seed=300)  # changed content
    make_jpeg(photo_dir / "new.jpg", seed=301)
    shutil.copy(photo_dir / "b" / "img02.jpg", photo_dir / "copy_of_img02.jpg")  # a copy: vector and text reused
    enc.images = 0
    changed = _index(photo_dir, idx, tiny_siglip, lambda: enc, **ocr)  # read in the decode workers this time
    assert (changed.embedded, changed.reused, enc.images) == (2, 1, 2)
    assert changed.ocr is not None and changed.ocr.read == 2 and _calls(log) == 15


def test_a_reader_that_cannot_start_leaves_images_indexed_and_text_for_the_next_run(
        photo_dir: Path, tmp_path: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, threads=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("models missing from the wheel")

    monkeypatch.setattr(CountingOcr, "__init__", broken)
    idx = tmp_path / "idx"
    s = _index(photo_dir, idx, tiny_siglip, lambda: siglip_encoder, workers=0, ocr=True, ocr_engine=CountingOcr.key)
    assert s.embedded == 12 and not s.failed and s.ocr is not None and s.ocr.read == 0
    with Catalog.in_dir(idx, readonly=True) as cat:
        assert cat.ocr_hashes() == set() and cat.status_counts() == {"ok": 12}
    monkeypatch.undo()
    monkeypatch.setattr(CountingOcr, "log", tmp_path / "calls.log")
    s = _index(photo_dir, idx, tiny_siglip, _never, ocr=True, ocr_engine=CountingOcr.key)
    assert s.ocr is not None and s.ocr.read == 12


# -- real OCR ---------------------------------------------------------------------------------------------------------
def _fonts() -> dict[str, ImageFont.FreeTypeFont | ImageFont.ImageFont]:
    fonts: dict[str, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
    for path in sorted(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True)):
        fonts.setdefault(os.path.basename(path), ImageFont.truetype(path, 10))
    return fonts


def _sized(font: ImageFont.FreeTypeFont | ImageFont.ImageFont | None, size: int):  # type: ignore[no-untyped-def]
    if font is None or not isinstance(font, ImageFont.FreeTypeFont):
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    return font.font_variant(size=size)


def _backgrounds() -> list[Image.Image]:
    """Real photographs (scikit-image's bundled samples) where available, else textured gradients."""
    try:
        from skimage import data

        return [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("astronaut", "coffee", "chelsea",
                                                                              "rocket")]
    except Exception:
        from helpers import pattern

        return [pattern(s, (640, 480)) for s in range(4)]


def _sign(text: str, font, angle: float = 0.0) -> Image.Image:  # type: ignore[no-untyped-def]
    left, top, right, bottom = font.getbbox(text)
    pad = max(6, (bottom - top) // 3)
    sign = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (245, 240, 225, 255))
    ImageDraw.Draw(sign).text((pad - left, pad - top), text, font=font, fill=(30, 30, 30))
    return sign.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC) if angle else sign


def test_real_text_in_photos_is_found_by_text_search(tmp_path: Path, tiny_siglip: Path,
                                                     siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("rapidocr_onnxruntime", reason="the ocr extra is not installed")
    fonts = _fonts()
    pick = lambda *names: next((fonts[n] for n in names if n in fonts), None)  # noqa: E731
    bold, serif, mono = pick("DejaVuSans-Bold.ttf"), pick("DejaVuSerif.ttf"), pick("DejaVuSansMono.ttf")
    cases = [  # (file, text, font, size in px, rotation in degrees, canvas)
        ("default28.jpg", "Bakery", None, 28, 0, (640, 480)),
        ("default18.jpg", "bakery", None, 18, 0, (640, 480)),
        ("bold64.jpg", "BAKERY", bold, 64, 0, (640, 480)),
        ("serif36.jpg", "Old Town Bakery", serif, 36, 0, (640, 480)),
        # (monospaced words sometimes lose the space between them: "bakery open" -> "bakeryopen"; one word here)
        ("mono24.jpg", "bakery", mono, 24, 0, (640, 480)),
        ("rotated.jpg", "BAKERY", bold, 56, 12, (640, 480)),
        ("photo_sized.jpg", "BAKERY", serif, 150, -8, (2400, 1800)),  # scaled to OCR_MAX_SIDE before reading
    ]
    folder = tmp_path / "photos"
    folder.mkdir()
    backgrounds = _backgrounds()
    for n, (name, text, font, size, angle, canvas) in enumerate(cases):
        photo = backgrounds[n % len(backgrounds)].resize(canvas)
        sign = _sign(text, _sized(font, size), angle)
        photo.paste(sign, (canvas[0] // 12, canvas[1] // 8), sign)
        photo.save(folder / name, quality=90)
    for n, photo in enumerate(backgrounds):  # the same photos without a sign
        photo.resize((640, 480)).save(folder / f"plain{n}.jpg", quality=90)
    idx = tmp_path / "idx"
    summary = _index(folder, idx, tiny_siglip, lambda: siglip_encoder, ocr=True)
    assert summary.ocr is not None and summary.ocr.read == len(cases) + len(backgrounds)
    assert summary.ocr.failed == 0 and summary.ocr.with_text >= len(cases)
    with Catalog.in_dir(idx, readonly=True) as cat:
        found = {os.path.basename(r.path) for r in cat.images_by_id(i for i, _ in cat.text_search(["bakery"],
                                                                                                 50)).values()}
        assert found == {c[0] for c in cases}
        row = cat.image(str(folder / "serif36.jpg"))
        assert row is not None and row.content_hash is not None
        text = cat.ocr_text(row.content_hash)
        assert text is not None and text.text.lower() == "old town bakery"
        assert text.confidence is not None and text.confidence >= MIN_LINE_CONFIDENCE
        assert text.engine.startswith("rapidocr-onnxruntime ")
    # issue 9: `search "BAKERY"` finds the signs first in hybrid mode, which a random-weight embedding alone cannot
    from img_search.search.searcher import SearchOptions, open_searcher
    from img_search.settings import load_settings

    searcher = open_searcher(load_settings(idx), encoder=siglip_encoder)
    try:
        names = lambda hits: {os.path.basename(h.path) for h in hits}  # noqa: E731
        fused = searcher.search_text("BAKERY", limit=len(cases), options=SearchOptions(hybrid="rrf"))
        assert names(fused) == {c[0] for c in cases} and all(h.matched != "embedding" for h in fused)
        auto = searcher.search_text("BAKERY", limit=len(cases))  # the collection holds OCR text: auto is rrf
        assert names(auto) == names(fused)
        alone = searcher.search_text("BAKERY", limit=len(cases), options=SearchOptions(hybrid="off"))
        assert names(alone) != {c[0] for c in cases}
        near_only = searcher.search_text("BAKERY", limit=len(cases), options=SearchOptions(
            hybrid="rrf", filter=build_filter(min_size="2000x1500")))
        assert names(near_only) == {"photo_sized.jpg"}  # filters hold in hybrid mode too
    finally:
        searcher.close()


# -- line assembly ----------------------------------------------------------------------------------------------------
def _box(x: float, y: float, w: float = 50, h: float = 20) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def test_lines_in_reading_order_with_the_confidence_floor() -> None:
    boxes = [
        (_box(300, 102), "CAFE", 0.95),  # same row as BAKERY, right of it, a little lower
        (_box(10, 100), "BAKERY", 0.99),
        (_box(10, 200), "Open daily", 0.90),
        (_box(10, 300), "x#", MIN_LINE_CONFIDENCE - 0.01),  # below the floor
        (_box(10, 400), " -- ", 0.99),  # no letter or digit
    ]
    out = assemble_lines(boxes, "e 1")
    assert out.text == "BAKERY CAFE\nOpen daily" and out.engine == "e 1"
    assert out.confidence == pytest.approx((0.95 + 0.99 + 0.90) / 3)
    assert assemble_lines([(_box(0, 0), "noise", 0.3)], "e") == OcrText("", None, "e")


def test_scaled_for_ocr_keeps_aspect_and_never_enlarges() -> None:
    assert scaled_for_ocr(Image.new("RGB", (4000, 3000)), 1600).size == (1600, 1200)
    assert scaled_for_ocr(Image.new("L", (300, 200)), 1600).size == (300, 200)
    assert scaled_for_ocr(Image.new("L", (300, 200)), 1600).mode == "RGB"


# -- missing libraries ------------------------------------------------------------------------------------------------
def test_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # as if not installed
    with pytest.raises(UnavailableError, match=r"pip install 'img-search\[ocr\]'"):
        check_ocr_engine("rapidocr")


def test_missing_libgl_names_the_system_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_libgl(name: str, package: str | None = None):  # type: ignore[no-untyped-def]
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")
        return real(name, package)

    monkeypatch.setattr(ocr_mod.importlib, "import_module", no_libgl)
    with pytest.raises(UnavailableError) as err:
        check_ocr_engine("rapidocr")
    assert "libGL.so.1" in str(err.value) and "apt-get install libgl1" in str(err.value)
    assert "opencv-python-headless" in str(err.value)


def test_index_ocr_without_the_extra_fails_before_any_work(photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from img_search.cli import main

    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    monkeypatch.setenv("IMG_SEARCH_OCR", "1")  # the setting, from the environment
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["index", str(photo_dir), "--index-dir", str(tmp_path / "idx"), "--model", str(tiny_siglip), "-q"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "pip install 'img-search[ocr]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "idx" / "catalog.sqlite3").exists()


def test_ocr_setting_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(tmp_path).ocr is False
    (tmp_path / "config.toml").write_text("ocr = true\n")
    assert load_settings(tmp_path).ocr is True
    monkeypatch.setenv("IMG_SEARCH_OCR", "0")
    assert load_settings(tmp_path).ocr is False
    assert load_settings(tmp_path, ocr=True).ocr is True


class RecordingProgress:
    """A ``pipeline.progress.Progress`` that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def start(self, total: int, description: str) -> None:
        self.calls.append(("start", total, description))

    def advance(self, n: int) -> None:
        self.calls.append(("advance", n))

    def stop(self) -> None:
        self.calls.append(("stop",))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_backfill_progress_advances_picture_by_picture(
        photo_dir: Path, tmp_path: Path, tiny_siglip: Path, siglip_encoder,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Reading a picture's text takes about a second: a bar that moved by --batch-size (32) pictures at a time looked
    stuck and had no useful ETA. The back-fill advances by one picture at a time, however large the batch size."""
    monkeypatch.setattr(CountingOcr, "log", tmp_path / "calls.log")
    idx = tmp_path / "idx"
    _index(photo_dir, idx, tiny_siglip, lambda: siglip_encoder)  # indexed without --ocr: 12 pictures without text
    progress = RecordingProgress()
    opts = IndexOptions(model=str(tiny_siglip), batch_size=32, workers=workers, ocr=True, ocr_engine=CountingOcr.key)
    summary = index_folders([str(photo_dir)], idx, opts, encoder_factory=_never, progress=progress)
    assert summary.ocr is not None and summary.ocr.read == 12
    start = progress.calls.index(("start", 12, "reading text"))
    stop = progress.calls.index(("stop",), start)
    assert progress.calls[start + 1 : stop] == [("advance", 1)] * 12
