"""The read -> encode -> write loop (pipeline/loop.py) with a fake encoder and a recording sink.

Sources are integers; source ``i`` loads as a solid picture whose red channel is ``i``, so the fake encoder can tell
which sources reached it and the expected vector of each source is known.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from numpy.typing import NDArray
from PIL import Image

from img_search.catalog import CATALOG_FILENAME, Catalog
from img_search.data.folder import FileEntry
from img_search.embedding.base import Encoder, ModelInfo, PixelBatch, collate_pixels
from img_search.errors import ImageDecodeError
from img_search.pipeline.loop import LoopStats, run_loop
from img_search.pipeline.reader import Loaded, ReadBatch
from img_search.pipeline.writer import CatalogWriter

DIM = 4


class ColourLoader:
    """Source ``i`` -> a 4x4 picture of colour (i, 255 - i, 7); sources in ``bad`` fail to decode."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.bad = bad

    def __call__(self, source: int) -> Loaded:
        if source in self.bad:
            raise ImageDecodeError(f"bad source {source}")
        return Loaded(Image.new("RGB", (4, 4), (source, 255 - source, 7)), bytes([source]) * 16)


def preprocess(image: Any) -> PixelBatch:
    return {"pixel_values": np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0}


def expected_vectors(sources: list[int]) -> NDArray[np.float32]:
    raw = np.array([[s + 1.0, 1.0, 0.0, 2.0] for s in sources], dtype=np.float32).reshape(-1, DIM)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


class FakeEncoder:
    """Implements the Encoder protocol: a deterministic unit vector per source, and a log of what it was given."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.info = ModelInfo(model_id="fake", family="fake", dim=DIM, logit_scale=0.0, logit_bias=None,
                              text_max_length=8)
        self.device = "cpu"
        self.seen: list[list[int]] = []  # source ids of each encode_batch call
        self.interrupt_at = interrupt_at

    def image_preprocessor(self) -> Callable[[Any], PixelBatch]:
        return preprocess

    def encode_batch(self, batch: PixelBatch) -> NDArray[np.float32]:
        if self.interrupt_at is not None and len(self.seen) == self.interrupt_at:
            raise KeyboardInterrupt
        sources = [round(float(v) * 255) for v in batch["pixel_values"][:, 0, 0, 0]]
        self.seen.append(sources)
        return expected_vectors(sources)

    def encode_images(self, images: list[Any]) -> NDArray[np.float32]:
        return self.encode_batch(collate_pixels([preprocess(im) for im in images]))

    def encode_texts(self, texts: list[str]) -> NDArray[np.float32]:
        return np.zeros((len(texts), DIM), np.float32)


class RecordingSink:
    def __init__(self, log: list[str], fail_at: int | None = None) -> None:
        self.log, self.fail_at = log, fail_at
        self.puts: list[tuple[list[int], list[tuple[int, str | None]], NDArray[np.float32] | None]] = []
        self.closed = 0
        log.append("sink built")

    def put(self, batch: ReadBatch[Any], vectors: NDArray[np.float32] | None) -> None:
        if self.fail_at is not None and len(self.puts) == self.fail_at:
            raise RuntimeError("disk full")
        self.puts.append(([i.source for i in batch.ok], [(i.source, i.error) for i in batch.failed],
                          None if vectors is None else vectors.copy()))
        self.log.append("put")

    def close(self) -> None:
        self.closed += 1
        self.log.append("close")


class RecordingProgress:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def start(self, total: int, description: str) -> None:
        self.log.append(f"start {total} {description}")

    def advance(self, n: int) -> None:
        self.log.append(f"advance {n}")

    def stop(self) -> None:
        self.log.append("stop")


class Run:
    """One run_loop call's collaborators, kept for inspection."""

    def __init__(self, interrupt_at: int | None = None, sink_fails_at: int | None = None) -> None:
        self.log: list[str] = []
        self.encoder = FakeEncoder(interrupt_at)
        self.sinks: list[RecordingSink] = []
        self.sink_fails_at = sink_fails_at
        self.workers_at_sink: list[psutil.Process] = []
        self._children_before = {p.pid for p in psutil.Process().children()}

    def make_sink(self) -> RecordingSink:
        # processes forked by this run only (earlier tests may have left children of their own)
        self.workers_at_sink = [p for p in psutil.Process().children() if p.pid not in self._children_before]
        self.sinks.append(RecordingSink(self.log, self.sink_fails_at))
        return self.sinks[-1]

    def __call__(self, sources: list[int], *, bad: frozenset[int] = frozenset(), batch_size: int = 4,
                 workers: int = 0, description: str = "embedding") -> LoopStats:
        return run_loop(sources, ColourLoader(bad), self.encoder, self.make_sink, batch_size=batch_size,
                        workers=workers, progress=RecordingProgress(self.log), description=description)


def test_fake_encoder_is_an_encoder() -> None:
    assert isinstance(FakeEncoder(), Encoder)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_reach_the_sink_in_order_with_their_vectors(workers: int) -> None:
    run = Run()
    stats = run(list(range(10)), bad=frozenset({3, 8}), batch_size=4, workers=workers)

    [sink] = run.sinks
    assert [(ok, failed) for ok, failed, _ in sink.puts] == [
        ([0, 1, 2], [(3, "bad source 3")]),
        ([4, 5, 6, 7], []),
        ([9], [(8, "bad source 8")]),
    ]
    for ok, _, vecs in sink.puts:
        assert vecs is not None
        np.testing.assert_array_equal(vecs, expected_vectors(ok))
    assert run.encoder.seen == [[0, 1, 2], [4, 5, 6, 7], [9]]  # failed sources never reach the model
    assert sink.closed == 1
    assert stats.embedded == 8
    assert [(i.source, i.error) for i in stats.failed] == [(3, "bad source 3"), (8, "bad source 8")]
    assert stats.seconds > 0


def test_progress_counts_every_source_between_start_and_stop() -> None:
    run = Run()
    run(list(range(10)), bad=frozenset({5}), batch_size=4, description="photos")
    events = [e for e in run.log if e != "sink built"]
    assert events == ["start 10 photos", "put", "advance 4", "put", "advance 4", "put", "advance 2", "close", "stop"]


def test_a_batch_that_failed_entirely_skips_the_encoder() -> None:
    run = Run()
    stats = run(list(range(6)), bad=frozenset({2, 3}), batch_size=2)
    assert run.encoder.seen == [[0, 1], [4, 5]]
    assert [(ok, vecs is None) for ok, _, vecs in run.sinks[0].puts] == [([0, 1], False), ([], True), ([4, 5], False)]
    assert stats.embedded == 4 and len(stats.failed) == 2


def test_no_sources_builds_no_sink_and_reports_nothing() -> None:
    run = Run()
    stats = run([])
    assert (stats.embedded, stats.failed) == (0, [])
    assert run.sinks == [] and run.log == [] and run.encoder.seen == []


def test_the_sink_is_built_after_the_decode_workers_are_forked() -> None:
    """A sink may start a thread (the catalog writer does); forking after that would copy a half-held lock."""
    run = Run()
    run(list(range(16)), batch_size=4, workers=2)
    assert len(run.workers_at_sink) == 2


@pytest.mark.parametrize("where", ["encoder", "sink"])
def test_an_error_mid_run_closes_the_sink_and_propagates(where: str) -> None:
    run = Run(sink_fails_at=2 if where == "sink" else None)
    if where == "encoder":
        real_encode = run.encoder.encode_batch

        def encode_then_fail(batch: PixelBatch) -> NDArray[np.float32]:
            if len(run.encoder.seen) == 2:
                raise ValueError("CUDA out of memory")
            return real_encode(batch)

        run.encoder.encode_batch = encode_then_fail  # type: ignore[method-assign]
    error = ValueError if where == "encoder" else RuntimeError
    with pytest.raises(error, match="CUDA out of memory" if where == "encoder" else "disk full"):
        run(list(range(12)), batch_size=4)
    [sink] = run.sinks
    assert [ok for ok, _, _ in sink.puts] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sink.closed == 1 and run.log[-2:] == ["close", "stop"]


def test_interrupt_commits_the_batches_already_encoded_and_workers_end() -> None:
    run = Run(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run(list(range(40)), batch_size=4, workers=2)
    [sink] = run.sinks
    assert [ok for ok, _, _ in sink.puts] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # what was encoded was handed over
    assert sink.closed == 1 and run.log[-2:] == ["close", "stop"]  # ... and committed
    workers = run.workers_at_sink
    assert len(workers) == 2
    gc.collect()  # the traceback (and with it the loader) is gone now
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], f"decode workers outlived the interrupted run: {[p.pid for p in alive]}"


class EntryLoader:
    """A FileEntry named ``/fake/<i>.jpg`` loads as source ``i`` (the catalog sink needs FileEntry sources)."""

    def __call__(self, entry: FileEntry) -> Loaded:
        return ColourLoader()(int(Path(entry.path).stem))


def test_interrupt_leaves_the_encoded_batches_committed_in_the_catalog(tmp_path: Path) -> None:
    with Catalog.in_dir(tmp_path) as cat:
        model_id = cat.ensure_model("fake", family="fake", dim=DIM, logit_scale=0.0, logit_bias=None)
    sources = [FileEntry(f"/fake/{i}.jpg", 10, 1) for i in range(20)]
    encoder = FakeEncoder(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_loop(sources, EntryLoader(), encoder, lambda: CatalogWriter(tmp_path / CATALOG_FILENAME, model_id),
                 batch_size=4, workers=0, progress=RecordingProgress([]))
    with Catalog.in_dir(tmp_path) as cat:
        assert sorted(cat.images_under("/fake"), key=lambda p: int(Path(p).stem)) == [e.path for e in sources[:12]]
        _, vecs = cat.load_vectors(model_id, DIM)  # in image-id order: the order of commits
        np.testing.assert_allclose(vecs, expected_vectors(list(range(12))), rtol=1e-6)


def _still_running(pids: list[int], timeout: float) -> list[int]:
    """Pids not ended (gone or zombie) within ``timeout`` s. Reads /proc directly: psutil's waiting raises and
    catches exceptions internally, which would chain to the interrupt being handled and keep its frames alive."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state not in ("Z", "X"):
                running.append(pid)
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_interrupt_stops_the_workers_before_it_propagates() -> None:
    run = Run(interrupt_at=2)
    try:
        run(list(range(40)), batch_size=4, workers=2)
    except KeyboardInterrupt:
        # the caller is still handling the interrupt (the runner records the run as interrupted, the CLI prints its
        # message): the workers should be gone by now, not decoding on into a queue nobody reads
        running = _still_running([p.pid for p in run.workers_at_sink], timeout=3)
    else:
        pytest.fail("the interrupt did not propagate")
    assert len(run.workers_at_sink) == 2 and running == []


def _scrambled(image: Any) -> PixelBatch:
    """A preprocessor that is not the encoder's: the fake encoder would read wrong source ids from its pixels."""
    return {"pixel_values": 1.0 - preprocess(image)["pixel_values"]}


@pytest.mark.parametrize("ahead", [preprocess, _scrambled])
def test_early_start_forks_before_the_encoder_and_checks_its_preprocessor(ahead: Any) -> None:
    from img_search.pipeline.loop import EarlyStart

    log: list[str] = []
    encoder = FakeEncoder()
    workers_at_load: list[int] = []
    children_before = {p.pid for p in psutil.Process().children()}

    def load() -> Encoder:
        workers_at_load.extend(p.pid for p in psutil.Process().children() if p.pid not in children_before)
        log.append("encoder loaded")
        return encoder

    sink: list[RecordingSink] = []
    start = EarlyStart(ahead, load, lambda pre: ColourLoader())
    stats = run_loop(list(range(10)), ColourLoader(), None, lambda: sink.append(RecordingSink(log)) or sink[-1],
                     batch_size=4, workers=1, progress=RecordingProgress(log), start=start)
    assert workers_at_load  # the decode worker was running while the encoder loaded
    assert log[:2] == ["encoder loaded", "sink built"] and stats.embedded == 10
    assert [s for batch in encoder.seen for s in batch] == list(range(10))  # pixels made by the encoder's own
    np.testing.assert_allclose(np.concatenate([v for _, _, v in sink[0].puts if v is not None]),
                               expected_vectors(list(range(10))))


class TimedLoader(ColourLoader):
    """A ColourLoader that takes ``seconds`` per source and appends the monotonic time (system-wide on Linux, so
    comparable across the decode worker processes) at which each source starts loading to ``log`` (O_APPEND)."""

    def __init__(self, log: Path, seconds: float) -> None:
        super().__init__()
        self.log, self.seconds = log, seconds

    def __call__(self, source: int) -> Loaded:
        with self.log.open("a") as f:
            f.write(f"{time.monotonic()}\n")
        time.sleep(self.seconds)
        return super().__call__(source)


class SlowEncoder(FakeEncoder):
    """A FakeEncoder whose forward pass takes ``seconds`` and records its (start, end) monotonic interval."""

    def __init__(self, device: str, seconds: float) -> None:
        super().__init__()
        self.device, self.seconds = device, seconds
        self.intervals: list[tuple[float, float]] = []

    def encode_batch(self, batch: PixelBatch) -> NDArray[np.float32]:
        start = time.monotonic()
        time.sleep(self.seconds)
        out = super().encode_batch(batch)
        self.intervals.append((start, time.monotonic()))
        return out


def loads_started_during_encoding(device: str, tmp_path: Path) -> list[int]:
    """Run 12 sources (0.1 s each to load) in batches of 2 with 2 decode workers through a 0.4 s forward pass on
    ``device``; per pass, how many sources started loading more than 0.05 s after it began.

    A worker that passed the gate just before it closed records its start within microseconds, hence the 0.05 s
    margin; without the gate, the worker asked for a new batch as the pass begins starts its second source 0.1 s
    later, inside the pass."""
    log = tmp_path / f"loads-{device}.txt"
    encoder = SlowEncoder(device, seconds=0.4)
    sink_log: list[str] = []
    stats = run_loop(list(range(12)), TimedLoader(log, 0.1), encoder, lambda: RecordingSink(sink_log),
                     batch_size=2, workers=2, progress=RecordingProgress(sink_log))
    assert stats.embedded == 12 and [s for batch in encoder.seen for s in batch] == list(range(12))
    starts = [float(line) for line in log.read_text().split()]
    assert len(starts) == 12
    return [sum(a + 0.05 < t < b for t in starts) for a, b in encoder.intervals]


def test_decode_workers_wait_while_a_cpu_model_computes(tmp_path: Path) -> None:
    """Issue 8: on CPU the decode workers take turns with the model (reader.DecodeGate): no source starts loading
    during a forward pass."""
    assert sum(loads_started_during_encoding("cpu", tmp_path)) == 0


def test_decode_workers_overlap_with_a_model_on_an_accelerator(tmp_path: Path) -> None:
    """On an accelerator the forward pass does not use the CPU's cores: the workers keep decoding during it."""
    during = loads_started_during_encoding("cuda", tmp_path)
    assert sum(during) >= 3, during


def test_runs_leave_no_file_descriptors_behind(tmp_path: Path) -> None:
    """The gate's pipe is released with the run (a service runs many re-embedding jobs in one process), also when
    the run fails."""
    import os

    def open_fds() -> int:
        gc.collect()  # what earlier tests left for the collector (their loaders' pipes) closes now, not mid-test
        return len(os.listdir("/proc/self/fd"))

    run = Run()
    run(list(range(6)), batch_size=2, workers=2)
    before = open_fds()
    for _ in range(3):
        Run()(list(range(6)), batch_size=2, workers=2)
        with pytest.raises(KeyboardInterrupt):
            Run(interrupt_at=1)(list(range(6)), batch_size=2, workers=2)
    assert open_fds() == before
