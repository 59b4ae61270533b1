"""Embed an image dataset with one or more models into one Parquet file: ``id, model_name, dataset_name, embedding``.

Entry point (Hydra; base config ``img_search/config/embed_config.yaml``)::

    python -m img_search.pipeline.embed models=siglip datasets=inquire tasks.batch_size=256 \\
        output_path=outputs/inquire/siglip-gallery.parquet

Groups: ``models`` (a list of encoder specs; ``models=siglip`` is google/siglip-so400m-patch14-384, also
``siglip_base``, ``siglip2``, ``clip``, ``jina_v4``), ``datasets`` (``inquire``, ``image_folder``,
``parquet_images``), ``tasks`` (batch size, decode workers, build retries, distribution), ``logging``, ``output``
(embedding dtype, compression, rows per committed part, overwrite). ``+extra_models.NAME={name: ..., encoder: ...}``
adds models to the run (Hydra cannot append to a list from the command line).

For each model: the ids already in the output for (model, dataset) are skipped — an interrupted run, re-run
with the same output, completes it without duplicating or losing rows — then the remaining rows go through
the one read -> encode -> write loop (``loop.run_loop``, via ``distributed.run_sharded`` so the same code runs
under ``accelerate launch``) into a ``ParquetSink``. Rows whose image cannot be decoded are reported, counted
and not written (a re-run retries them). The output file is rewritten with every model's rows at the end.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from img_search.data import ImageDataset, ImageRef, create_dataset
from img_search.embedding.base import Encoder
from img_search.errors import ImgSearchError, InvalidInputError, ModelNotFoundError, UnknownNameError
from img_search.pipeline.distributed import (
    AUTO,
    DEFAULT_BUILD_ATTEMPTS,
    DEFAULT_RETRY_BACKOFF_SECONDS,
    DistContext,
    main_process_first,
    make_context,
    run_sharded,
)
from img_search.pipeline.parquet_writer import (
    DATASET_COLUMN,
    DEFAULT_COMPRESSION,
    DEFAULT_ROWS_PER_SHARD,
    GALLERY,
    MODEL_COLUMN,
    Layout,
    ParquetOutput,
    ParquetSink,
    RowColumns,
    embedding_type,
)
from img_search.pipeline.progress import LogProgress, Progress
from img_search.pipeline.reader import Loaded
from img_search.settings import DEFAULT_BATCH_SIZE, DEFAULT_MAX_IMAGE_PIXELS
from img_search.wording import noun

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
CONFIG_NAME = "embed_config"
EXIT_RUNTIME_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130
MAX_FAILURES_LOGGED = 20

S = TypeVar("S")


class EmbedConfigError(InvalidInputError):
    """The embedding job's configuration is invalid (unknown key, bad value, no model)."""


def _from_mapping(cls: type[Any], raw: Any, where: str) -> Any:
    """A frozen config dataclass from a mapping; unknown keys are an error that lists the valid ones."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise EmbedConfigError(f"`{where}` must be a mapping, got {raw!r}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise EmbedConfigError(
            f"unknown {noun(len(unknown), 'key')} {', '.join(unknown)} in `{where}`; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
    try:
        return cls(**dict(raw))
    except ImgSearchError:
        raise  # already typed, with its own message
    except (TypeError, ValueError) as exc:
        raise EmbedConfigError(f"invalid `{where}`: {exc}") from exc


@dataclass(frozen=True)
class ModelSpec:
    """One encoder: a Hub id or local checkpoint, its ENCODERS registry name, and loader keyword arguments."""

    name: str
    encoder: str = "auto"
    output_name: str | None = None  # the model_name column; default: the Hub id or absolute checkpoint path
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a `name` (Hub id or checkpoint directory)")

    @property
    def model_name(self) -> str:
        from img_search.embedding.hf import canonical_model_id

        return self.output_name or canonical_model_id(self.name)


@dataclass(frozen=True)
class TaskConfig:
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None  # decode processes per rank; None: one per core, 1-4
    build_attempts: int = DEFAULT_BUILD_ATTEMPTS
    retry_backoff_seconds: float = DEFAULT_RETRY_BACKOFF_SECONDS
    distributed: str = AUTO  # auto | local | accelerate

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and int(self.workers) < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if int(self.build_attempts) < 1:
            raise ValueError(f"build_attempts must be >= 1, got {self.build_attempts}")

    def decode_workers(self) -> int:
        from img_search.pipeline.runner import default_workers

        return default_workers() if self.workers is None else int(self.workers)


@dataclass(frozen=True)
class OutputConfig:
    dtype: str = "float32"  # float32 | float16 (the embedding column's element type)
    compression: str = DEFAULT_COMPRESSION
    rows_per_part: int = DEFAULT_ROWS_PER_SHARD  # rows per committed part: at most this much work is lost to a kill
    overwrite: bool = False  # delete the output (every model's rows) before starting

    def __post_init__(self) -> None:
        embedding_type(self.dtype)  # an unknown dtype fails here, before any work
        if int(self.rows_per_part) < 1:
            raise ValueError(f"rows_per_part must be >= 1, got {self.rows_per_part}")


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    progress_every_seconds: float = 10.0

    def apply(self, ctx: DistContext | None = None) -> None:
        level = logging.getLevelName(str(self.level).upper())
        if not isinstance(level, int):
            raise EmbedConfigError(f"unknown logging level {self.level!r}")
        if ctx is not None and not ctx.is_main:
            level = max(level, logging.WARNING)  # one voice per job
        logging.getLogger("img_search").setLevel(level)


@dataclass(frozen=True)
class EmbedJob:
    """The validated, frozen configuration of one embedding run."""

    models: tuple[ModelSpec, ...]
    dataset: Mapping[str, Any]
    output_path: Path
    tasks: TaskConfig = field(default_factory=TaskConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, dataset_key: str = "datasets") -> EmbedJob:
        raw_models = cfg.get("models") or []
        extra = cfg.get("extra_models") or {}
        if isinstance(raw_models, Mapping) or not isinstance(raw_models, Sequence):
            raise EmbedConfigError("`models` must be a list of model specs, e.g. models=siglip")
        if not isinstance(extra, Mapping):
            raise EmbedConfigError("`extra_models` must map a label to a model spec")
        specs = [*raw_models, *extra.values()]
        models = tuple(_from_mapping(ModelSpec, m, f"models.{i}") for i, m in enumerate(specs))
        if not models:
            raise EmbedConfigError("no model to run: choose one, e.g. models=siglip")
        names = [m.model_name for m in models]
        if len(set(names)) != len(names):
            raise EmbedConfigError(f"a model is listed twice: {names}")
        dataset = cfg.get(dataset_key)
        if not isinstance(dataset, Mapping):
            raise EmbedConfigError(f"`{dataset_key}` must be a dataset config, e.g. {dataset_key}=...")
        output_path = cfg.get("output_path")
        if not output_path:
            raise EmbedConfigError("output_path is required, e.g. output_path=outputs/embeddings.parquet")
        return cls(
            models=models,
            dataset=dict(dataset),
            output_path=Path(str(output_path)).expanduser(),
            tasks=_from_mapping(TaskConfig, cfg.get("tasks"), "tasks"),
            output=_from_mapping(OutputConfig, cfg.get("output"), "output"),
            logging=_from_mapping(LoggingConfig, cfg.get("logging"), "logging"),
        )


@dataclass
class EmbedSummary:
    model_name: str
    dataset_name: str
    rows: int = 0  # distinct ids in the dataset
    already_done: int = 0  # present in the output before this run
    embedded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EncoderFactory = Callable[[ModelSpec, DistContext], Encoder]


def load_model(spec: ModelSpec, ctx: DistContext) -> Encoder:
    """The encoder of ``spec``; under a multi-process launch ``device: auto`` means this rank's device."""
    from img_search.embedding import load_encoder

    kwargs = dict(spec.kwargs)
    if ctx.device and str(kwargs.get("device", "auto")) == "auto" and ctx.world_size > 1:
        kwargs["device"] = ctx.device
    try:
        return load_encoder(spec.name, encoder=spec.encoder, **kwargs)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} (In this pipeline, name a local checkpoint with models.N.name=DIR.)") from exc


@dataclass
class EmbedTask(Generic[S]):
    """What to embed and how to write it, independent of the modality."""

    dataset_name: str
    items: list[S]
    key: Callable[[S], str]  # the stable id written to the layout's key column
    load: Callable[[S], Loaded]
    layout: Layout
    row_columns: RowColumns
    workers: int
    adapt: Callable[[Encoder], Encoder] = lambda encoder: encoder


def embed_items(task: EmbedTask[Any], spec: ModelSpec, output: ParquetOutput, job: EmbedJob, ctx: DistContext, *,
                encoder_factory: EncoderFactory, progress: Progress) -> EmbedSummary:
    """Embed the items of ``task`` not yet in ``output`` for this model; the model loads only if any are left."""
    import time

    model_name = spec.model_name
    summary = EmbedSummary(model_name, task.dataset_name, rows=len(task.items))
    positions: list[int] | None = None
    if ctx.is_main:
        done = output.existing_keys(model_name, task.dataset_name)
        positions = [i for i, item in enumerate(task.items) if task.key(item) not in done]
    positions = ctx.broadcast(positions)
    assert positions is not None
    todo = [task.items[i] for i in positions]
    summary.already_done = len(task.items) - len(todo)
    if not todo:
        logger.info("%s: all %d rows of %s are already in %s", model_name, len(task.items), task.dataset_name,
                    output.path)
        return summary
    if summary.already_done:
        logger.info("%s: resuming, %d of %d rows already in %s", model_name, summary.already_done, len(task.items),
                    output.path)
    encoder = main_process_first(ctx, lambda: task.adapt(encoder_factory(spec, ctx)), what=f"model {spec.name}",
                                 attempts=job.tasks.build_attempts, backoff=job.tasks.retry_backoff_seconds)
    sinks: list[ParquetSink] = []

    def make_sink() -> ParquetSink:
        sink = ParquetSink(output.part_writer(model_name), task.layout, task.row_columns,
                           constants={MODEL_COLUMN: model_name, DATASET_COLUMN: task.dataset_name},
                           dtype=job.output.dtype)
        sinks.append(sink)
        return sink

    t0 = time.monotonic()
    try:
        run_sharded(todo, task.load, encoder, make_sink, ctx, batch_size=job.tasks.batch_size, workers=task.workers,
                    progress=progress, description=f"{model_name} on {task.dataset_name}")
    finally:
        summary.seconds = time.monotonic() - t0
        for sink in sinks:
            summary.embedded += sink.written
            summary.failed += [(task.key(item.source), item.error or "") for item in sink.failed]
    _report(summary)
    return summary


def _report(summary: EmbedSummary) -> None:
    logger.info("%s on %s: %d embedded, %d already present, %d failed in %.1f s", summary.model_name,
                summary.dataset_name, summary.embedded, summary.already_done, len(summary.failed), summary.seconds)
    for key, reason in summary.failed[:MAX_FAILURES_LOGGED]:
        logger.warning("skipped %s: %s", key, reason)
    if len(summary.failed) > MAX_FAILURES_LOGGED:
        logger.warning("... and %d more skipped rows", len(summary.failed) - MAX_FAILURES_LOGGED)
    if summary.failed:
        logger.warning("skipped rows are not written; fix the source data and re-run the same command to add them")


def run_job(job: EmbedJob, build_task: Callable[[Mapping[str, Any]], EmbedTask[Any]], layout: Layout, *,
            ctx: DistContext | None = None, encoder_factory: EncoderFactory = load_model,
            progress: Progress | None = None) -> list[EmbedSummary]:
    """Build the dataset (main process first), embed it with every model, merge the output file."""
    ctx = ctx or make_context(job.tasks.distributed)
    job.logging.apply(ctx)
    if ctx.world_size > 1:
        logger.info("running on %d processes (this is process %d)", ctx.world_size, ctx.rank)
    output = ParquetOutput(job.output_path, layout, dtype=job.output.dtype, compression=job.output.compression,
                           rows_per_part=job.output.rows_per_part)
    if ctx.is_main:
        if job.output.overwrite:
            output.remove()
        job.output_path.parent.mkdir(parents=True, exist_ok=True)
    task = main_process_first(ctx, lambda: build_task(job.dataset), what="the dataset",
                              attempts=job.tasks.build_attempts, backoff=job.tasks.retry_backoff_seconds)
    progress = progress or LogProgress(job.logging.progress_every_seconds)
    summaries = [embed_items(task, spec, output, job, ctx, encoder_factory=encoder_factory, progress=progress)
                 for spec in job.models]
    if ctx.is_main:
        total = output.finalize()
        logger.info("wrote %s (%d rows)", output.path, total)
    ctx.barrier()
    return summaries


def gallery_columns(refs: list[ImageRef]) -> dict[str, list[Any]]:
    return {"id": [ref.id for ref in refs]}


class DatasetLoader:
    """The loop's loader for an image dataset: ``ImageRef`` -> the decoded RGB image (in a decode worker)."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __call__(self, ref: ImageRef) -> Loaded:
        return Loaded(self.dataset.image(ref.index))


def image_task(dataset: ImageDataset, workers: int) -> EmbedTask[ImageRef]:
    dataset.build()
    return EmbedTask(dataset_name=dataset.name, items=dataset.refs(), key=_ref_id, load=DatasetLoader(dataset),
                     layout=GALLERY, row_columns=gallery_columns, workers=workers)


def _ref_id(ref: ImageRef) -> str:
    return ref.id


def run_embed(job: EmbedJob, *, ctx: DistContext | None = None, encoder_factory: EncoderFactory = load_model,
              progress: Progress | None = None) -> list[EmbedSummary]:
    """Embed ``job.dataset`` with every model of ``job`` into ``job.output_path``."""
    workers = job.tasks.decode_workers()
    return run_job(job, lambda cfg: image_task(create_dataset(cfg), workers), GALLERY, ctx=ctx,
                   encoder_factory=encoder_factory, progress=progress)


# ---------------------------------------------------------------------------------------------------------------
# entry point


def compose_config(overrides: Sequence[str] = (), *, config_name: str = CONFIG_NAME) -> dict[str, Any]:
    """The resolved config the entry point would see for ``overrides`` (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None, job_name=config_name):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    return config_container(cfg)


def config_container(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return {str(k): v for k, v in container.items()}


def run_entry(cfg: Any, run: Callable[[Mapping[str, Any]], object]) -> None:
    """Shared by the Hydra entry points: run, and turn library errors into a log line and an exit status."""
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from img_search.data.images import configure_pixel_limit

    try:
        container = config_container(cfg)
        # Pillow's pixel guard is set once per process, before any image is opened: the largest limit any dataset
        # of the job asks for (each dataset may still apply a lower one per image)
        configure_pixel_limit(max(_pixel_limits(container), default=DEFAULT_MAX_IMAGE_PIXELS))
        run(container)
    except KeyboardInterrupt:
        logger.error("interrupted: every committed part is kept; re-run the same command to continue")
        sys.exit(EXIT_INTERRUPTED)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "?"
        logger.error("the config value %s is required: set it on the command line, e.g. %s=...", key, key)
        sys.exit(EXIT_CONFIG_ERROR)
    except (EmbedConfigError, UnknownNameError, OmegaConfBaseException) as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        sys.exit(EXIT_CONFIG_ERROR)
    except (ImgSearchError, ValueError) as exc:  # ValueError: e.g. device=cuda on a machine without CUDA
        logger.error("%s: %s", type(exc).__name__, exc)
        sys.exit(EXIT_RUNTIME_ERROR)


def _pixel_limits(container: Any) -> list[int]:
    """Every ``max_image_pixels`` set anywhere in the job's config (dataset configs carry their own)."""
    if isinstance(container, Mapping):
        found = [int(v) for k, v in container.items() if k == "max_image_pixels" and isinstance(v, int)]
        return found + [x for v in container.values() for x in _pixel_limits(v)]
    if isinstance(container, list | tuple):
        return [x for v in container for x in _pixel_limits(v)]
    return []


def _main(cfg: Any) -> None:
    run_entry(cfg, lambda container: run_embed(EmbedJob.from_config(container)))


def main() -> None:
    import hydra

    hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)(_main)()


if __name__ == "__main__":
    # run through the package module, not `__main__`, so logger names and error classes are the importable ones
    from img_search.pipeline.embed import main as _package_main

    _package_main()
