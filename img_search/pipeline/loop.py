"""The one read -> encode -> write loop. Callers choose the sources, the loader and the sink.

``img-search index`` feeds files and a catalog sink; the dataset pipelines (``pipeline.embed``) feed
dataset rows and a Parquet sink; the distributed runner only decides which shard of sources a process
gets. None of them writes a second loop.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.base import Encoder, ImagePreprocessor
from img_search.pipeline.progress import Progress
from img_search.pipeline.reader import (
    Batches,
    DecodeGate,
    Loaded,
    ReadBatch,
    ReadItem,
    SourceDataset,
    read_batches,
)

S = TypeVar("S")

logger = logging.getLogger(__name__)

# Decode processes beyond a few per core only add fork and memory cost: each holds a decoded batch in flight.
MAX_WORKERS_PER_CORE = 4


class Sink(Protocol):
    """Writer stage: receives each encoded batch (ok items in order with their vectors, and failures)."""

    def put(self, batch: ReadBatch[Any], vectors: NDArray[np.float32] | None) -> None: ...

    def close(self) -> None:
        """Flush and commit everything received; re-raise any error the sink hit."""
        ...


def fit_to_work(n_sources: int, batch_size: int, workers: int) -> tuple[int, int]:
    """Clamp the batch size and worker count to the work: cost follows the collection, not the option.

    A batch never holds more than ``n_sources`` items, so no stage (sampler, collate, encoder, sink) can size
    anything by a huge option; there are never more decode processes than batches to do, nor more than
    ``MAX_WORKERS_PER_CORE`` per core. A clamped worker count is logged at INFO. Returns (batch_size, workers).
    """
    batch_size = max(1, min(batch_size, n_sources))
    if workers <= 0:
        return batch_size, 0
    useful = min(math.ceil(n_sources / batch_size), MAX_WORKERS_PER_CORE * (os.cpu_count() or 1))
    if workers > useful:
        logger.info("using %d decode workers, not %d: %d batches to do on %d cores", useful, workers,
                    math.ceil(n_sources / batch_size), os.cpu_count() or 1)
        workers = useful
    return batch_size, workers


@dataclass(frozen=True)
class EarlyStart:
    """Start the decode workers before the encoder exists (they only need the image preprocessor), so the first
    batches are decoded while the model loads and prepares its runtime (issue 8: the loop otherwise waits ~0.5 s
    for its first batch).

    ``preprocess``: the preprocessor loaded ahead (``embedding.hf.load_image_preprocessor``); ``encoder()``: loads
    and prepares the encoder, called in this process after the workers fork; ``loader_for(preprocess)``: the
    source loader that goes with a preprocessor (its reduced-decode size follows the input side). When the loaded
    encoder's own preprocessor differs from ``preprocess`` (``!=``), the batches decoded ahead are dropped and the
    workers start again with the encoder's.
    """

    preprocess: ImagePreprocessor
    encoder: Callable[[], Encoder]
    loader_for: Callable[[ImagePreprocessor], Callable[[Any], Loaded]]


@dataclass
class LoopStats:
    embedded: int = 0
    failed: list[ReadItem[Any]] = field(default_factory=list)
    seconds: float = 0.0


def run_loop(
    sources: Sequence[S],
    load: Callable[[S], Loaded],
    encoder: Encoder | None,
    make_sink: Callable[[], Sink],
    *,
    batch_size: int,
    workers: int,
    progress: Progress,
    description: str = "embedding",
    start: EarlyStart | None = None,
) -> LoopStats:
    """Embed ``sources`` in batches and hand each batch to the sink; the sink is built after the workers fork.

    ``encoder`` None: a pass that embeds nothing (the loader does the work, e.g. reading the text in pictures,
    ``pipeline.ocr``): no pixels are prepared and the sink gets ``vectors`` None; ``LoopStats.embedded`` then counts
    the sources loaded. ``start``: fork the decode workers first, then load the encoder (``EarlyStart``; ``load``
    and ``encoder`` are then not used); ``LoopStats.seconds`` starts once the encoder is ready. With decode workers
    and an encoder on the CPU, the workers decode only while the model is not computing (``reader.DecodeGate``)."""
    stats = LoopStats()
    if not sources:
        return stats
    batch_size, workers = fit_to_work(len(sources), batch_size, workers)
    gate = DecodeGate() if workers > 0 and (encoder is not None or start is not None) else None
    try:
        if start is not None:
            batches, encoder = _start_early(sources, start, batch_size, workers, gate)
        else:
            dataset = SourceDataset(sources, load, encoder.image_preprocessor() if encoder is not None else None,
                                    gate)
            batches = read_batches(dataset, batch_size=batch_size, workers=workers)  # forks before any sink thread
    except BaseException:
        if gate is not None:
            gate.close()
        raise
    on_cpu = str(getattr(encoder, "device", "")).split(":")[0] == "cpu"
    turn = gate.model_turn if gate is not None and on_cpu else nullcontext
    try:
        sink = make_sink()
    except BaseException:
        batches.close()
        if gate is not None:
            gate.close()
        raise
    progress.start(len(sources), description)
    t0 = time.monotonic()
    try:
        for batch in batches:
            vectors = None
            if batch.ok and encoder is not None:
                with turn():
                    vectors = encoder.encode_batch(batch.pixels)
            sink.put(batch, vectors)
            stats.embedded += len(batch.ok)
            stats.failed.extend(batch.failed)
            progress.advance(len(batch))
    finally:
        batches.close()  # stop the decode workers now, not when the traceback is freed
        if gate is not None:
            gate.close()
        # commit everything already encoded, even when interrupted: a re-run then starts after it
        sink.close()
        stats.seconds = time.monotonic() - t0
        progress.stop()
    return stats


def _start_early(sources: Sequence[S], start: EarlyStart, batch_size: int, workers: int, gate: DecodeGate | None
                 ) -> tuple[Batches, Encoder]:
    """Fork the decode workers with ``start.preprocess``, then load the encoder; restart the workers with the
    encoder's own preprocessor if it differs. Returns (batches, encoder); the workers are stopped on any error."""
    batches = read_batches(SourceDataset(sources, start.loader_for(start.preprocess), start.preprocess, gate),
                           batch_size=batch_size, workers=workers)
    try:
        encoder = start.encoder()
        own = encoder.image_preprocessor()
    except BaseException:
        batches.close()
        raise
    if own != start.preprocess:
        logger.info("the encoder's image preprocessor is not the one loaded ahead: decoding again with its own")
        batches.close()
        batches = read_batches(SourceDataset(sources, start.loader_for(own), own, gate), batch_size=batch_size,
                               workers=workers)
    return batches, encoder
