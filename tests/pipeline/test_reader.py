"""The reader stage (pipeline/reader.py): sources -> ReadBatches of preprocessed pixels, failures carried as data.

Most tests use a tiny stand-in preprocessor (8x8 pixels plus the pid of the process that ran it) so they can check
which process decoded what and compare pixel rows with a direct computation; one test runs a real checkpoint's
preprocessor for the shapes and dtype the encoder receives. That decode workers die with a SIGKILLed parent is
checked end to end in tests/pipeline/test_runner.py (test_kill_and_resume_loses_and_duplicates_nothing).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import make_jpeg, run_measuring_peak
from numpy.typing import NDArray

import img_search.data.images as images_module
from img_search.data.folder import FileEntry
from img_search.data.images import HASH_DIGEST_SIZE, content_hash, load_image
from img_search.errors import ImageDecodeError
from img_search.pipeline.reader import FileLoader, Loaded, ReadBatch, SourceDataset, read_batches, read_one

SIZE = (96, 64)  # helpers.make_jpeg's default (width, height)


def tiny_preprocess(image: Any) -> dict[str, NDArray[Any]]:
    """RGB image -> (3, 8, 8) float32 in [0, 1], and the pid of the process that ran it (to see the workers)."""
    pixels = np.asarray(image.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return {"pixel_values": pixels, "pid": np.array(os.getpid(), dtype=np.int64)}


def entry(path: Path) -> FileEntry:
    st = path.stat()
    return FileEntry(str(path), st.st_size, st.st_mtime_ns)


def deny_reading(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """Make ``open`` in data.images fail with EACCES for one path: as root, permission bits would not stop us.
    Forked decode workers inherit the patch."""
    real_open = open

    def guarded_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(path) == str(victim):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(images_module, "open", guarded_open, raising=False)


HUGE = 3 * 2**30
PEAK_MIB = 400  # peak RSS allowed while the loader refuses HUGE zero bytes (the interpreter with Pillow: ~60 MiB)


def test_file_loader_refuses_a_huge_file_in_bounded_memory(tmp_path: Path) -> None:
    """`index` held a 3 GB file whole (3.46 GB peak) before skipping it: the child process's own peak is measured."""
    path = tmp_path / "huge.jpg"
    _now_huge(path)
    code = (
        "import sys\n"
        "from img_search.data.folder import FileEntry\n"
        "from img_search.pipeline.reader import FileLoader, read_one\n"
        "item = read_one(FileEntry(sys.argv[1], 0, 0), FileLoader(read_metadata=True), None)\n"
        "print(item.error)\n"
    )
    error, peak_mib = run_measuring_peak(code, str(path))
    assert error.startswith("not an image Pillow can read")
    assert peak_mib < PEAK_MIB


def test_file_loader_reads_a_valid_picture_followed_by_a_gigabyte_in_bounded_memory(tmp_path: Path) -> None:
    """A 96x64 JPEG then 1 GiB of zeros: `index` read it whole (1.1 GiB peak); now it is decoded from the file and
    hashed by streaming, in the child process's own bounded peak, with the whole file's digest."""
    path = make_jpeg(tmp_path / "padded.jpg", seed=3)
    head = path.read_bytes()
    with open(path, "r+b") as fh:
        fh.truncate(len(head) + 2**30)
    code = (
        "import sys\n"
        "from img_search.data.folder import FileEntry\n"
        "from img_search.pipeline.reader import FileLoader, read_one\n"
        "item = read_one(FileEntry(sys.argv[1], 0, 0), FileLoader(read_metadata=True), None)\n"
        "print(item.error, item.width, item.height, item.content_hash.hex())\n"
    )
    out, peak_mib = run_measuring_peak(code, str(path))
    assert out == f"None {SIZE[0]} {SIZE[1]} {images_module.content_hash_file(str(path)).hex()}"
    assert peak_mib < PEAK_MIB


# -- the loader ----------------------------------------------------------------------------------------------------
def test_file_loader_hashes_the_bytes_it_decoded(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", seed=1)
    loaded = FileLoader()(entry(path))
    assert isinstance(loaded, Loaded)
    assert loaded.content_hash == content_hash(path.read_bytes())
    assert loaded.content_hash is not None and len(loaded.content_hash) == HASH_DIGEST_SIZE
    assert loaded.image.mode == "RGB" and loaded.image.size == SIZE


def test_file_loader_and_dataset_survive_pickling(tmp_path: Path) -> None:
    """Spawned or remote workers receive the loader by pickle: it must keep its settings."""
    small, big = make_jpeg(tmp_path / "small.jpg", seed=1), make_jpeg(tmp_path / "big.jpg", seed=2, size=(97, 64))
    loader = pickle.loads(pickle.dumps(FileLoader(max_image_pixels=SIZE[0] * SIZE[1])))
    assert loader.max_image_pixels == SIZE[0] * SIZE[1]
    assert read_one(entry(small), loader, tiny_preprocess).error is None
    refused = read_one(entry(big), loader, tiny_preprocess)
    assert refused.error is not None and refused.error.startswith("too large: 97x64")

    dataset = SourceDataset([entry(small)], FileLoader(), tiny_preprocess)
    item = pickle.loads(pickle.dumps(dataset))[0]
    assert item.content_hash == content_hash(small.read_bytes()) and item.pixels is not None


# -- failures are data, never exceptions -----------------------------------------------------------------------------
def _corrupt(path: Path) -> None:
    data = make_jpeg(path).read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _vanished(path: Path) -> None:
    path.unlink()


def _now_a_fifo(path: Path) -> None:  # a read would block forever
    path.unlink()
    os.mkfifo(path)


def _now_huge(path: Path) -> None:  # sparse: no disk; refused from its header, never read whole
    with open(path, "wb") as fh:
        fh.truncate(HUGE)


def _now_a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


FAILURES = {
    # how the file is damaged after the scan -> the reason the user sees
    "corrupt": (_corrupt, r"^corrupt or truncated image data: "),
    "zero bytes": (lambda p: p.write_bytes(b""), r"^empty file \(0 bytes\)$"),
    "not an image": (lambda p: p.write_text("hello"), r"^not an image Pillow can read"),
    "vanished after the scan": (_vanished, r"^cannot read the file: No such file or directory$"),
    "replaced by a directory": (_now_a_directory, r"^is a directory$"),
    "replaced by a named pipe": (_now_a_fifo, r"^not a regular file \(device, socket or pipe\)$"),
    "replaced by 3 GB of zeros": (_now_huge, r"^not an image Pillow can read"),
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_a_bad_file_becomes_a_failed_item_with_a_reason(tmp_path: Path, kind: str) -> None:
    damage, reason = FAILURES[kind]
    path = make_jpeg(tmp_path / "x.jpg")
    source = entry(path)  # what the scan saw
    damage(path)
    item = read_one(source, FileLoader(), tiny_preprocess)
    assert item.source == source
    assert item.error is not None
    assert re.match(reason, item.error), item.error
    assert (item.pixels, item.content_hash, item.width, item.height) == (None, None, None, None)


def test_permission_denied_becomes_a_failed_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_jpeg(tmp_path / "secret.jpg")
    deny_reading(monkeypatch, path)
    item = read_one(entry(path), FileLoader(), tiny_preprocess)
    assert item.error == "permission denied (cannot read the file)" and item.pixels is None


def test_unexpected_exceptions_in_loader_or_preprocessor_are_carried_with_their_type(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg")

    def broken_loader(source: FileEntry) -> Loaded:
        raise KeyError("no such row")

    def broken_preprocess(image: Any) -> dict[str, NDArray[Any]]:
        raise ValueError("odd aspect ratio")

    assert read_one(entry(path), broken_loader, tiny_preprocess).error == "KeyError: 'no such row'"
    assert read_one(entry(path), FileLoader(), broken_preprocess).error == "ValueError: odd aspect ratio"

    def typed_failure(source: FileEntry) -> Loaded:
        raise ImageDecodeError("row 7 has no image bytes")

    assert read_one(entry(path), typed_failure, tiny_preprocess).error == "row 7 has no image bytes"  # as written


# -- batches, in process and in worker processes ---------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_keep_source_order_and_align_pixels_with_ok_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    paths = [make_jpeg(tmp_path / f"{i:02d}.jpg", seed=i) for i in range(8)]
    sources = [entry(p) for p in paths]
    bad = {1: "cannot read the file: No such file or directory", 4: "is a directory",
           5: "permission denied (cannot read the file)", 7: "empty file (0 bytes)"}
    paths[1].unlink()
    _now_a_directory(paths[4])
    deny_reading(monkeypatch, paths[5])
    paths[7].write_bytes(b"")

    batches = list(read_batches(SourceDataset(sources, FileLoader(), tiny_preprocess), batch_size=3, workers=workers))

    assert [len(b) for b in batches] == [3, 3, 2]
    for n, batch in enumerate(batches):
        chunk = range(3 * n, min(3 * n + 3, len(sources)))
        assert [i.source for i in batch.ok] == [sources[k] for k in chunk if k not in bad]
        assert [(i.source, i.error) for i in batch.failed] == [(sources[k], bad[k]) for k in chunk if k in bad]
        ok_paths = [Path(i.source.path) for i in batch.ok]
        # row j of the stacked pixels belongs to ok item j, even with failures in between
        expected = [tiny_preprocess(load_image(str(p)))["pixel_values"] for p in ok_paths]
        assert batch.pixels["pixel_values"].shape == (len(ok_paths), 3, 8, 8)
        assert batch.pixels["pixel_values"].dtype == np.float32
        np.testing.assert_array_equal(batch.pixels["pixel_values"], np.stack(expected))
        assert [i.content_hash for i in batch.ok] == [content_hash(p.read_bytes()) for p in ok_paths]
        assert all((i.width, i.height) == SIZE and i.pixels is None for i in batch.ok)  # arrays live in the batch
        decoded_by = set(batch.pixels["pid"].tolist())
        assert (decoded_by == {os.getpid()}) if workers == 0 else (os.getpid() not in decoded_by)


def test_a_batch_of_only_failures_has_no_pixels(tmp_path: Path) -> None:
    sources = [FileEntry(str(tmp_path / f"gone{i}.jpg"), 10, 1) for i in range(2)]
    [batch] = read_batches(SourceDataset(sources, FileLoader(), tiny_preprocess), batch_size=4, workers=0)
    assert isinstance(batch, ReadBatch)
    assert batch.ok == [] and len(batch.failed) == 2 and batch.pixels == {}


def test_real_preprocessor_gives_the_encoder_its_input_shape(tmp_path: Path, siglip_encoder: Any) -> None:
    """The tiny SigLIP checkpoint (tests/conftest.py) has 32x32 inputs: any picture size becomes (3, 32, 32)."""
    paths = [make_jpeg(tmp_path / f"{i}.jpg", seed=i, size=size)
             for i, size in enumerate([(96, 64), (40, 100), (32, 32), (300, 20), (64, 64)])]
    dataset = SourceDataset([entry(p) for p in paths], FileLoader(), siglip_encoder.image_preprocessor())
    batches = list(read_batches(dataset, batch_size=4, workers=0))
    assert [b.pixels["pixel_values"].shape for b in batches] == [(4, 3, 32, 32), (1, 3, 32, 32)]
    assert all(b.pixels["pixel_values"].dtype == np.float32 for b in batches)
    vectors = siglip_encoder.encode_batch(batches[0].pixels)
    assert vectors.shape == (4, siglip_encoder.info.dim) and vectors.dtype == np.float32


def test_reduced_decode_keeps_the_photo_size_and_a_full_picture_for_text_reading(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "big.jpg", seed=4, size=(400, 300))
    seen: list[tuple[int, int]] = []

    def preprocess(image: Any) -> dict[str, NDArray[Any]]:
        seen.append(image.size)
        return tiny_preprocess(image)

    item = read_one(entry(path), FileLoader(min_side=64), preprocess)
    assert (item.width, item.height, seen[-1]) == (400, 300, (100, 75))  # catalogued at its own size
    loaded = FileLoader(min_side=64, keep_full=True)(entry(path))
    assert loaded.image.size == (400, 300) and loaded.model_image.size == (100, 75)  # OCR reads every pixel
    item = read_one(entry(path), FileLoader(min_side=64, keep_full=True), preprocess)
    assert (item.width, item.height, seen[-1]) == (400, 300, (100, 75))
    np.testing.assert_array_equal(item.pixels["pixel_values"] if item.pixels else None,
                                  tiny_preprocess(load_image(str(path), min_side=64))["pixel_values"])
    small = make_jpeg(tmp_path / "small.jpg", seed=5, size=(96, 64))
    assert FileLoader(min_side=64, keep_full=True)(entry(small)).model_image is None  # not scaled: one decode
