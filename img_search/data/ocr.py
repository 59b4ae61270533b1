"""Text in images (``img-search index --ocr``): an ``OcrEngine`` interface, the ``OCR_ENGINES`` registry and the
``OcrReader`` that the decode workers call on each decoded picture.

One engine is registered: ``rapidocr`` (RapidOCR on ONNX Runtime, the ``rapidocr-onnxruntime`` package: PP-OCRv4
detection, direction classification and recognition models shipped inside the wheel, so it runs offline; install it
with ``pip install 'img-search[ocr]'``). Its OpenCV dependency (``opencv-python``) needs the system's
``libGL.so.1``; where that is missing the error names the system package to install.

What an engine returns is a ``catalog.OcrText``: the lines read, in reading order (top to bottom, then left to
right; boxes on the same row joined by a space), joined by newlines; the mean recognition confidence of those lines;
the engine's name and version. Lines below ``MIN_LINE_CONFIDENCE`` are dropped (see there), as are lines without
a letter or digit. A picture that cannot be read gives an ``OcrFailure`` (an ``OcrText`` with no text and the
reason), which the catalog stores like any other result so the picture is not read again; the reason is logged.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from PIL import Image

from img_search.catalog.metadata import OcrText
from img_search.errors import UnavailableError
from img_search.registry import Registry

logger = logging.getLogger(__name__)

DEFAULT_OCR_ENGINE = "rapidocr"
INSTALL_HINT = "pip install 'img-search[ocr]'"

# A recognised line is kept when its confidence is at least this. Measured with rapidocr-onnxruntime 1.4.4 (PP-OCRv4)
# on scikit-image's sample photos without text (astronaut, coffee, chelsea, rocket, stereo_motorcycle, ...): the
# spurious "lines" it reads in textures score 0.06-0.63 (highest: 0.628); rendered signs and scanned text score
# 0.93-1.0 (bench/ocr_throughput.py, docs/PERFORMANCE.md "Text in images (OCR)"). RapidOCR's own floor is 0.5.
MIN_LINE_CONFIDENCE = 0.7
# Pictures are scaled down to this longest side (pixels) before detection: detection dominates the cost and grows with
# the pixel count (docs/PERFORMANCE.md). Text at least ~12 px tall at this size is read: a shop sign or a receipt in a
# 12 MP photo, a screenshot up to this width at full size. RapidOCR's own bound is 2000.
OCR_MAX_SIDE = 1600

_HAS_WORD = re.compile(r"\w", re.UNICODE)
# shared libraries OpenCV's wheel loads from the system, and the Debian / Fedora packages that provide them
_SYSTEM_LIBRARIES = {
    "libGL.so.1": ("libgl1", "mesa-libGL"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libSM.so.6": ("libsm6", "libSM"),
    "libXext.so.6": ("libxext6", "libXext"),
}


@dataclass(frozen=True)
class OcrFailure(OcrText):
    """An ``OcrText`` recorded for a picture the engine could not read (``text`` '' and ``confidence`` None), with
    the ``reason``. Stored like any result, so `index --ocr` does not try the same content again."""

    reason: str = ""


class OcrEngine(ABC):
    """Reads the text in one RGB picture. Engines are built lazily in the process that uses them (ONNX Runtime
    sessions do not survive a fork); ``threads``: intra-op threads of the engine's runtime (None: its default)."""

    #: registry name
    key: str = ""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    @classmethod
    @abstractmethod
    def check_available(cls) -> None:
        """Import the engine's libraries without loading a model; ``UnavailableError`` naming what to install."""

    @property
    @abstractmethod
    def name(self) -> str:
        """Name and version, as recorded with each text ("rapidocr-onnxruntime 1.4.4")."""

    @abstractmethod
    def read(self, image: Image.Image) -> OcrText:
        """The text of ``image`` (RGB, any size). Raises on an engine failure (the caller records an OcrFailure)."""


OCR_ENGINES: Registry[type[OcrEngine]] = Registry("OCR engine")


def _import_failure(package: str, exc: ImportError) -> UnavailableError:
    """The error for an engine library that does not import: the missing extra, or the missing system library."""
    text = str(exc)
    missing = re.search(r"(lib[\w.+-]+\.so(?:\.\d+)*)", text)
    if missing and "cannot open shared object file" in text:
        lib = missing.group(1)
        debian, fedora = _SYSTEM_LIBRARIES.get(lib, (None, None))
        where = (f"install the system package that provides it (Debian/Ubuntu: `apt-get install {debian}`; "
                 f"Fedora/RHEL: `dnf install {fedora}`)" if debian else "install the system package that provides it")
        headless = (" or replace OpenCV by its headless build (`pip uninstall -y opencv-python && pip install "
                    "opencv-python-headless`)" if lib in ("libGL.so.1", "libSM.so.6", "libXext.so.6") else "")
        return UnavailableError(f"text reading (--ocr) cannot load {lib}, which OpenCV needs ({package}): {where}"
                                f"{headless}")
    if isinstance(exc, ModuleNotFoundError):
        return UnavailableError(f"text reading (--ocr) needs the optional OCR libraries ({package} is not "
                                f"installed: {exc.name or text}): {INSTALL_HINT}")
    return UnavailableError(f"text reading (--ocr) cannot import {package} ({type(exc).__name__}: {text}); "
                            f"reinstall it: {INSTALL_HINT}")


def _row_order(boxes: Sequence[tuple[float, float, float, str, float]]) -> list[list[tuple[float, str, float]]]:
    """Group (top, bottom, left, text, score) boxes into rows: a box joins the current row when its vertical centre
    lies within the row's extent; rows top to bottom, boxes left to right."""
    rows: list[tuple[float, float, list[tuple[float, str, float]]]] = []
    for top, bottom, left, text, score in sorted(boxes, key=lambda b: (b[0] + b[1]) / 2):
        centre = (top + bottom) / 2
        if rows and rows[-1][0] <= centre <= rows[-1][1]:
            row_top, row_bottom, items = rows[-1]
            items.append((left, text, score))
            rows[-1] = (min(row_top, top), max(row_bottom, bottom), items)
        else:
            rows.append((top, bottom, [(left, text, score)]))
    return [sorted(items) for _, _, items in rows]


def assemble_lines(boxes: Sequence[tuple[Sequence[Sequence[float]], str, float]], engine: str,
                   min_confidence: float = MIN_LINE_CONFIDENCE) -> OcrText:
    """An ``OcrText`` from an engine's boxes: (4 corner points (x, y) in pixels, text, confidence 0..1).

    Boxes below ``min_confidence`` or without a letter or digit are dropped; the rest are put in reading order
    (``_row_order``), boxes of one row joined by a space. ``confidence`` is the mean over the kept boxes."""
    kept: list[tuple[float, float, float, str, float]] = []
    for points, text, score in boxes:
        clean = " ".join(str(text).split())
        if float(score) < min_confidence or not _HAS_WORD.search(clean):
            continue
        ys = [float(p[1]) for p in points]
        xs = [float(p[0]) for p in points]
        kept.append((min(ys), max(ys), min(xs), clean, float(score)))
    if not kept:
        return OcrText("", None, engine)
    lines = [" ".join(t for _, t, _ in row) for row in _row_order(kept)]
    return OcrText("\n".join(lines), sum(k[4] for k in kept) / len(kept), engine)


def scaled_for_ocr(image: Image.Image, max_side: int | None = None) -> Image.Image:
    """``image`` as RGB with its longest side at most ``max_side`` pixels (default ``OCR_MAX_SIDE``; aspect kept;
    never enlarged)."""
    max_side = OCR_MAX_SIDE if max_side is None else max_side
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    w, h = rgb.size
    if max(w, h) <= max_side:
        return rgb
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


@OCR_ENGINES.register("rapidocr")
class RapidOcrEngine(OcrEngine):
    """RapidOCR (https://github.com/RapidAI/RapidOCR) on ONNX Runtime with the models of its wheel (PP-OCRv4 mobile
    detection and Chinese/English recognition, PP-OCR v2 direction classifier); its default settings, except its own
    confidence floor, which is replaced by ``MIN_LINE_CONFIDENCE``, and the input scaled to ``OCR_MAX_SIDE``."""

    key = "rapidocr"
    package = "rapidocr-onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(threads)
        self.check_available()
        from rapidocr_onnxruntime import RapidOCR

        kwargs: dict[str, Any] = {"text_score": 0.0}  # every line comes back; assemble_lines applies the floor
        if threads is not None:
            kwargs.update(intra_op_num_threads=int(threads), inter_op_num_threads=1)
            import cv2

            cv2.setNumThreads(int(threads))
        self._ocr = RapidOCR(**kwargs)
        self._name = f"{self.package} {metadata.version(self.package)}"

    @classmethod
    def check_available(cls) -> None:
        try:
            importlib.import_module("cv2")
            importlib.import_module("rapidocr_onnxruntime")
        except ImportError as exc:
            raise _import_failure(cls.package, exc) from None

    @property
    def name(self) -> str:
        return self._name

    def read(self, image: Image.Image) -> OcrText:
        result, _ = self._ocr(scaled_for_ocr(image))
        boxes = [(r[0], r[1], r[2]) for r in (result or []) if len(r) >= 3]
        return assemble_lines(boxes, self._name)


def check_ocr_engine(name: str = DEFAULT_OCR_ENGINE) -> None:
    """Fail early, before any work: ``UnknownNameError`` for an unknown engine, ``UnavailableError`` (naming the
    ``pip install`` or the system package) when its libraries do not import."""
    OCR_ENGINES.get(name).check_available()


def open_ocr_engine(name: str = DEFAULT_OCR_ENGINE, *, threads: int | None = None) -> OcrEngine:
    """Build the engine ``name`` (loads its models: call it in the process that reads)."""
    return OCR_ENGINES.get(name)(threads)


class OcrReader:
    """What the decode workers call on each decoded picture: picklable and fork-safe (the engine is built on first
    use, in the process that reads, and again after a fork).

    ``skip``: content hashes already read (``Catalog.ocr_hashes()``; incremental like the vectors): ``read`` returns
    None for them. ``threads``: the engine's intra-op threads per process. ``on_read`` (tests, benchmarks): called
    after each picture actually read, in the reading process.
    """

    def __init__(self, engine: str = DEFAULT_OCR_ENGINE, *, skip: Collection[bytes] = frozenset(),
                 threads: int | None = None, on_read: Callable[[bytes | None, OcrText], None] | None = None) -> None:
        OCR_ENGINES.get(engine)
        self.engine_name = engine
        self.skip = frozenset(skip)
        self.threads = threads
        self.on_read = on_read
        self._engine: OcrEngine | None = None
        self._pid: int | None = None
        self._seen: set[bytes] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"], state["_pid"], state["_seen"] = None, None, set()
        return state

    def engine(self) -> OcrEngine:
        if self._engine is None or self._pid != os.getpid():
            self._engine = open_ocr_engine(self.engine_name, threads=self.threads)
            self._pid, self._seen = os.getpid(), set()
        return self._engine

    def __call__(self, image: Image.Image, content_hash: bytes | None, source: str = "") -> OcrText | None:
        """The text of ``image`` (None when ``content_hash`` was read before). An engine failure on this picture is
        logged and returned as an ``OcrFailure``; a missing engine (``UnavailableError``) is raised."""
        if content_hash is not None and (content_hash in self.skip or content_hash in self._seen):
            return None  # read before, or by this process earlier in the run (a copy): the catalog shares it
        engine = self.engine()
        try:
            text = engine.read(image)
        except Exception as exc:  # one odd picture must not end the run
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("could not read the text in %s: %s", source or "a picture", reason)
            text = OcrFailure("", None, engine.name, reason)
        if content_hash is not None:
            self._seen.add(content_hash)
        if self.on_read is not None:
            self.on_read(content_hash, text)
        return text
