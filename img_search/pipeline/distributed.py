"""Where the loop runs: one process, or several under Hugging Face Accelerate. It never forks the loop.

A ``DistContext`` answers rank / world size and offers the few collectives the pipelines need. ``run_sharded``
gives each process its share of the sources and runs the one loop (``loop.run_loop``) on it with a
``GatheringSink``: after every batch the encoded rows of all processes are gathered on the main process, which
alone writes them. Shares are padded to equal length (Accelerate's ``split_between_processes`` repeats the last
source) so every process runs the same number of batches — collectives stay in step — and the main process
drops the repeats by source position: no row is written twice or lost when the number of sources is not a
multiple of the world size.

``main_process_first`` builds a model or dataset on the main process first (with retries on network-type
errors), then on the others, which then read what the main process put in the Hugging Face cache. A failure on
any process is reported to all of them, so none is left waiting at a collective.

Launching: ``accelerate launch --num_processes N -m img_search.pipeline.embed ...`` (GPUs), or on CPU-only
machines ``accelerate launch --multi_gpu --num_processes N ...`` / ``torchrun --nproc_per_node N ...`` (gloo).
``accelerate launch --cpu`` starts a single process unless an MPI launcher is configured; the pipeline then runs
as one process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from img_search.embedding.base import Encoder
from img_search.errors import DatasetError, ImgSearchError, ModelNotFoundError
from img_search.pipeline.loop import LoopStats, Sink, run_loop
from img_search.pipeline.progress import Progress
from img_search.pipeline.reader import Loaded, ReadBatch, ReadItem
from img_search.registry import Registry

logger = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")

DEFAULT_BUILD_ATTEMPTS = 3
DEFAULT_RETRY_BACKOFF_SECONDS = 2.0
# errors worth retrying: a flaky network or Hub (both surface as OSError or wrapped in our typed errors)
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, ModelNotFoundError, DatasetError)
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class DistributedError(ImgSearchError):
    """Another process failed, or the distributed set-up is unusable (e.g. Accelerate missing)."""


class DistContext(Protocol):
    """This process's place in the job and the collectives the pipelines use (all ranks must call them)."""

    rank: int
    world_size: int
    device: str | None  # the device this rank should use; None: let the encoder choose

    @property
    def is_main(self) -> bool: ...

    def barrier(self) -> None: ...

    def broadcast(self, obj: T) -> T:
        """The main process's ``obj``, on every rank."""
        ...

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        ...

    def gather_vectors(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        """Every rank's (rows, dim) matrix — same shape on every rank — stacked in rank order."""
        ...

    def split(self, items: list[T]) -> list[T]:
        """This rank's contiguous share of ``items``, padded (by repeating the last item) to equal length."""
        ...


class LocalContext:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return True

    def barrier(self) -> None:
        pass

    def broadcast(self, obj: T) -> T:
        return obj

    def gather_objects(self, obj: Any) -> list[Any]:
        return [obj]

    def gather_vectors(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        return vectors

    def split(self, items: list[T]) -> list[T]:
        return list(items)


class AccelerateContext:
    """Accelerate's ``PartialState``: NCCL on GPUs, gloo on CPUs (``ACCELERATE_USE_CPU`` or no CUDA)."""

    device: str | None

    def __init__(self) -> None:
        try:
            import torch
            from accelerate import PartialState
            from accelerate.utils import parse_flag_from_env
        except ImportError as exc:
            raise DistributedError(
                f"distributed runs need Hugging Face Accelerate ({exc}); install it: pip install 'img-search[dist]'"
            ) from exc
        cpu = bool(parse_flag_from_env("ACCELERATE_USE_CPU")) or not torch.cuda.is_available()
        self._torch = torch
        self.state = PartialState(cpu=cpu)
        self.rank = int(self.state.process_index)
        self.world_size = int(self.state.num_processes)
        device = self.state.device
        self.device = "cpu" if device.type == "cpu" else str(device)
        logger.debug("rank %d of %d on %s (%s)", self.rank, self.world_size, self.device, self.state.distributed_type)

    @property
    def is_main(self) -> bool:
        return bool(self.state.is_main_process)

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def broadcast(self, obj: T) -> T:
        from accelerate.utils import broadcast_object_list

        box: list[Any] = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]  # type: ignore[no-any-return]

    def gather_objects(self, obj: Any) -> list[Any]:
        from accelerate.utils import gather_object

        return list(gather_object([obj]))

    def gather_vectors(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        from accelerate.utils import gather

        tensor = self._torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.state.device)
        out: NDArray[np.float32] = gather(tensor).cpu().numpy()
        return out

    def split(self, items: list[T]) -> list[T]:
        with self.state.split_between_processes(list(items), apply_padding=True) as share:
            return list(share)


def _launched_distributed() -> bool:
    for var in _WORLD_SIZE_VARS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


AUTO = "auto"
DISTRIBUTORS: Registry[Callable[[], DistContext]] = Registry("distributor")
DISTRIBUTORS.add("local", LocalContext)
DISTRIBUTORS.add("accelerate", AccelerateContext)


def make_context(kind: str = AUTO) -> DistContext:
    """``auto``: Accelerate when a launcher started several processes (WORLD_SIZE > 1), else one local process."""
    if kind == AUTO:
        kind = "accelerate" if _launched_distributed() else "local"
    return DISTRIBUTORS.get(kind)()


# ---------------------------------------------------------------------------------------------------------------
# building on the main process first


def with_retries(build: Callable[[], T], *, what: str, attempts: int = DEFAULT_BUILD_ATTEMPTS,
                 backoff: float = DEFAULT_RETRY_BACKOFF_SECONDS, sleep: Callable[[float], None] = time.sleep) -> T:
    """``build()``, retried with exponential back-off on network-type errors; never retried with the Hub offline."""
    from img_search.embedding.hf import hub_offline

    attempt = 1
    while True:
        try:
            return build()
        except RETRYABLE_ERRORS as exc:
            if attempt >= attempts or hub_offline():
                raise
            delay = backoff * 2 ** (attempt - 1)
            logger.warning("building %s failed (%s: %s); retry %d of %d in %.0f s", what, type(exc).__name__, exc,
                           attempt, attempts - 1, delay)
            sleep(delay)
            attempt += 1


def _attempt(build: Callable[[], T]) -> tuple[T | None, Exception | None]:
    # Every failure must reach the other ranks (they would otherwise wait at the next collective forever),
    # so any exception is caught here and re-raised after the ranks have agreed.
    try:
        return build(), None
    except Exception as exc:
        return None, exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def main_process_first(ctx: DistContext, build: Callable[[], T], *, what: str,
                       attempts: int = DEFAULT_BUILD_ATTEMPTS, backoff: float = DEFAULT_RETRY_BACKOFF_SECONDS) -> T:
    """Build on the main process (with retries), then on the other ranks; raise on every rank if any failed."""
    result: T | None = None
    error: Exception | None = None
    if ctx.is_main:
        result, error = _attempt(lambda: with_retries(build, what=what, attempts=attempts, backoff=backoff))
    main_error = ctx.broadcast(None if error is None else _describe(error))
    if main_error is not None:
        if error is not None:
            raise error
        raise DistributedError(f"the main process could not build {what}: {main_error}")
    if not ctx.is_main:
        result, error = _attempt(build)  # from the cache the main process just filled
    errors = ctx.gather_objects(None if error is None else _describe(error))
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(errors) if message]
    if failed:
        rank, message = failed[0]
        raise DistributedError(f"process {rank} could not build {what}: {message}")
    return result  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# one loop over this rank's share, gathered on the main process


@dataclass(frozen=True, slots=True)
class Indexed(Generic[S]):
    """A source with its position in the full list: the key that drops the padding repeats."""

    index: int
    source: S


class IndexedLoader(Generic[S]):
    """Picklable: loads ``Indexed(i, source)`` with the caller's loader."""

    def __init__(self, load: Callable[[S], Loaded]) -> None:
        self.load = load

    def __call__(self, item: Indexed[S]) -> Loaded:
        return self.load(item.source)


class SilentProgress:
    """Progress of the non-main ranks: the main process reports for the job."""

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def stop(self) -> None:
        pass


class GatheringSink:
    """Gathers each batch of every rank on the main process and hands the merged batch to the real sink.

    Items are unwrapped from ``Indexed`` (the real sink sees the caller's sources) and a source position seen
    before — a padding repeat — is dropped.
    """

    def __init__(self, ctx: DistContext, inner: Sink | None, dim: int) -> None:
        self.ctx = ctx
        self.inner = inner
        self.dim = dim
        self.seen: set[int] = set()

    def put(self, batch: ReadBatch[Indexed[Any]], vectors: NDArray[np.float32] | None) -> None:
        items = batch.ok + batch.failed
        n_ok = len(batch.ok)
        metas: list[list[tuple[ReadItem[Indexed[Any]], bool]]] = self.ctx.gather_objects(
            [(item, i < n_ok) for i, item in enumerate(items)]
        )
        rows = max(len(m) for m in metas)
        local = np.zeros((rows, self.dim), dtype=np.float32)
        if vectors is not None and n_ok:
            local[:n_ok] = vectors
        gathered = self.ctx.gather_vectors(local)
        if self.inner is None:
            return
        merged: ReadBatch[Any] = ReadBatch()
        positions: list[int] = []
        for rank, rank_items in enumerate(metas):
            for j, (item, ok) in enumerate(rank_items):
                if item.source.index in self.seen:
                    continue
                self.seen.add(item.source.index)
                plain = ReadItem(item.source.source, content_hash=item.content_hash, width=item.width,
                                 height=item.height, error=item.error)
                if ok:
                    merged.ok.append(plain)
                    positions.append(rank * rows + j)
                else:
                    merged.failed.append(plain)
        self.inner.put(merged, gathered[positions] if positions else None)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def run_sharded(
    sources: Sequence[S],
    load: Callable[[S], Loaded],
    encoder: Encoder,
    make_sink: Callable[[], Sink],
    ctx: DistContext,
    *,
    batch_size: int,
    workers: int,
    progress: Progress,
    description: str = "embedding",
) -> LoopStats:
    """Run the loop on this rank's share of ``sources``; only the main process calls ``make_sink`` and writes.

    Every rank must call this with the same ``sources``. The returned stats are this rank's own (padding
    included); what was written is what the main process's sink counted.
    """
    share = ctx.split([Indexed(i, s) for i, s in enumerate(sources)])
    if ctx.world_size > 1:
        description = f"{description} (process {ctx.rank} of {ctx.world_size})"

    def sink_factory() -> Sink:
        return GatheringSink(ctx, make_sink() if ctx.is_main else None, encoder.info.dim)

    return run_loop(share, IndexedLoader(load), encoder, sink_factory, batch_size=batch_size, workers=workers,
                    progress=progress if ctx.is_main else SilentProgress(), description=description)
