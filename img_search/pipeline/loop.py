"""The one read -> encode -> write loop. Callers choose the sources, the loader and the sink.

``img-search index`` feeds files and a catalog sink; the dataset pipelines (``pipeline.embed``) feed
dataset rows and a Parquet sink; the distributed runner only decides which shard of sources a process
gets. None of them writes a second loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.base import Encoder
from img_search.pipeline.progress import Progress
from img_search.pipeline.reader import Loaded, ReadBatch, ReadItem, SourceDataset, read_batches

S = TypeVar("S")


class Sink(Protocol):
    """Writer stage: receives each encoded batch (ok items in order with their vectors, and failures)."""

    def put(self, batch: ReadBatch[Any], vectors: NDArray[np.float32] | None) -> None: ...

    def close(self) -> None:
        """Flush and commit everything received; re-raise any error the sink hit."""
        ...


@dataclass
class LoopStats:
    embedded: int = 0
    failed: list[ReadItem[Any]] = field(default_factory=list)
    seconds: float = 0.0


def run_loop(
    sources: Sequence[S],
    load: Callable[[S], Loaded],
    encoder: Encoder,
    make_sink: Callable[[], Sink],
    *,
    batch_size: int,
    workers: int,
    progress: Progress,
    description: str = "embedding",
) -> LoopStats:
    """Embed ``sources`` in batches and hand each batch to the sink; the sink is built after the workers fork."""
    stats = LoopStats()
    if not sources:
        return stats
    dataset = SourceDataset(sources, load, encoder.image_preprocessor())
    workers = min(workers, max(1, len(sources) // batch_size)) if workers else 0
    batches = read_batches(dataset, batch_size=batch_size, workers=workers)  # forks before any sink thread
    sink = make_sink()
    progress.start(len(sources), description)
    t0 = time.monotonic()
    try:
        for batch in batches:
            vectors = encoder.encode_batch(batch.pixels) if batch.ok else None
            sink.put(batch, vectors)
            stats.embedded += len(batch.ok)
            stats.failed.extend(batch.failed)
            progress.advance(len(batch))
    finally:
        # commit everything already encoded, even when interrupted: a re-run then starts after it
        sink.close()
        stats.seconds = time.monotonic() - t0
        progress.stop()
    return stats
