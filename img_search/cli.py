"""The `img-search` command line: parse, call the library, print. Nothing below imports this module.

Human-readable output by default; with ``--json`` stdout carries only JSON and every log line,
progress bar and banner goes to stderr. Library errors (``ImgSearchError``) become a one-line
message and exit code 1; usage errors exit 2; an interrupted run exits 130 after committing what it
had embedded. Heavy imports (torch, transformers) happen only when a command needs a model.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from img_search import __version__
from img_search.embedding import DEFAULT_MODEL
from img_search.errors import ImgSearchError

logger = logging.getLogger("img_search")

ENV_MODEL = "IMG_SEARCH_MODEL"
ENV_INDEX_DIR = "IMG_SEARCH_INDEX_DIR"


def default_index_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "img-search"


app = typer.Typer(
    name="img-search",
    help="Semantic image search with SigLIP-family embeddings: index a folder, search it by text or by image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", envvar=ENV_MODEL, show_envvar=True,
                 help="Hugging Face id or local checkpoint directory. `index` defaults to "
                      f"{DEFAULT_MODEL}; `search`/`similar` to the model the catalog was indexed with."),
]
IndexDirOpt = Annotated[
    Path | None,
    typer.Option("--index-dir", envvar=ENV_INDEX_DIR, show_envvar=True,
                 help="Where the catalog lives [default: $XDG_DATA_HOME/img-search, "
                      "i.e. ~/.local/share/img-search]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (logs and progress go to stderr).")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging on stderr (-vv: debug).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (fp16 on GPU, fp32 on CPU) | float32 | float16 | bfloat16")
]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, help="How many hits to show.")]
ThresholdOpt = Annotated[
    float | None,
    typer.Option("--threshold", "-t",
                 help="Drop hits below this calibrated probability (or below this cosine where the model has no "
                      "calibrated probability: CLIP, and image -> image)."),
]
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", help="Vector index for this search: exact, faiss, hnswlib, usearch, scann, qdrant, "
                                   "qdrant_edge [default: exact below --ann-threshold vectors, else config.toml's]."),
]
AnnThresholdOpt = Annotated[
    int | None,
    typer.Option("--ann-threshold", min=0, help="Use the ANN backend from this many vectors on [default: 20000, "
                                                "or config.toml's search.ann_threshold]."),
]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option("--max-image-pixels", min=1,
                 help="Skip images with more pixels than this [default: 178,956,970, Pillow's decompression-bomb "
                      "bound]."),
]


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose > 1 else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger.setLevel(level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose < 2:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _index_dir(index_dir: Path | None) -> Path:
    return Path(os.path.expanduser(str(index_dir))) if index_dir else default_index_dir()


def _print_json(payload: Any) -> None:
    # ensure_ascii keeps non-UTF-8 file names (surrogate-escaped) representable: they appear as \udcXX
    sys.stdout.write(json.dumps(payload, ensure_ascii=True, indent=2) + "\n")


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _stdout_console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _safe(text: str) -> str:
    """Printable form of a path that may hold surrogate escapes (non-UTF-8 names)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _encoder_factory(model: str, device: str, dtype: str) -> Any:
    def factory() -> Any:
        from img_search.embedding import load_encoder

        return load_encoder(model, device=device, dtype=dtype)

    return factory


@app.command()
def index(
    folders: Annotated[list[Path], typer.Argument(help="Folders to index (recursively).", show_default=False)],
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model forward.")] = 32,
    workers: Annotated[int | None, typer.Option("--workers", min=0,
                                                help="Decode processes [default: half the cores, 1-4].")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    recompute: Annotated[bool, typer.Option("--recompute", help="Re-embed every file, changed or not.")] = False,
    max_image_pixels: MaxPixelsOpt = None,
    include_hidden: Annotated[bool, typer.Option("--include-hidden", help="Also index dot-files/folders.")] = False,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Embed every image under FOLDERS, incrementally (unchanged files are skipped)."""
    from img_search.pipeline.runner import IndexOptions, default_workers, index_folders

    _setup_logging(verbose)
    model_name = model or DEFAULT_MODEL
    options = IndexOptions(
        model=model_name, batch_size=batch_size, workers=default_workers() if workers is None else workers,
        recompute=recompute, include_hidden=include_hidden,
        **({} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}),
    )
    progress = None if quiet else _make_progress()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = index_folders([str(f) for f in folders], _index_dir(index_dir), options,
                                encoder_factory=_encoder_factory(model_name, device, dtype), progress=progress)
    except KeyboardInterrupt:
        _fail("interrupted: every batch embedded so far is committed; re-run the same command to continue", 130)
    except ImgSearchError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(summary.to_dict())
    else:
        _print_summary(summary)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _make_progress() -> Any:
    if not sys.stderr.isatty():
        return None  # the library logs a progress line every few seconds instead
    from img_search.pipeline.rich_progress import RichProgress

    return RichProgress(_stderr_console())


def _print_summary(summary: Any) -> None:
    console = _stdout_console()
    parts = [
        f"{summary.scanned} image files under {len(summary.roots)} folder(s)",
        f"{summary.embedded} embedded",
        f"{summary.reused} reused (moved/copied)",
        f"{summary.unchanged} unchanged",
        f"{summary.deleted} marked deleted",
        f"{len(summary.failed)} skipped",
    ]
    console.print(", ".join(parts) + f" in {summary.seconds:.1f}s", markup=False)
    if summary.embedded:
        console.print(f"throughput: {summary.images_per_second:.1f} images/s with {summary.model}", markup=False)
    if summary.failed:
        console.print("skipped files (recorded in the catalog; fix or remove them, then re-run):", markup=False)
        for failure in summary.failed[:50]:
            console.print(f"  {_safe(failure.path)}: {failure.reason}", markup=False)
        if len(summary.failed) > 50:
            console.print(f"  ... and {len(summary.failed) - 50} more (see `img-search info`)", markup=False)
    if summary.failed_before:
        console.print(f"{summary.failed_before} files that failed earlier are unchanged and were not retried "
                      "(`img-search info` lists them)", markup=False)


def _open_searcher(index_dir: Path | None, model: str | None, device: str, dtype: str,
                   backend: str | None = None, ann_threshold: int | None = None) -> Any:
    from img_search.catalog import Catalog
    from img_search.search.collection import Collection, Searcher, resolve_model
    from img_search.search.store import SearchConfig

    directory = _index_dir(index_dir)
    catalog = Catalog.in_dir(directory, readonly=True)
    row = resolve_model(catalog, model)
    config = SearchConfig.load(directory).with_overrides(backend=backend, threshold=ann_threshold)
    collection = Collection(catalog, row, config=config)
    return Searcher(collection, _encoder_factory(row.name, device, dtype))


def _print_hits(hits: list[Any], as_json: bool, what: str) -> None:
    if as_json:
        _print_json([h.to_dict() for h in hits])
        return
    console = _stdout_console()
    if not hits:
        console.print(f"no images matched {what}", markup=False)
        return
    # plain aligned columns, never folded: paths stay whole when piped or copied
    console.print(f"{'#':>3}  {'probability':>11}  {'cosine':>8}  path", markup=False)
    for rank, hit in enumerate(hits, 1):
        prob = "-" if hit.probability is None else f"{hit.probability:.4f}"
        console.print(f"{rank:>3}  {prob:>11}  {hit.cosine:>+8.4f}  {_safe(hit.path)}", markup=False)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.", show_default=False)],
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    limit: LimitOpt = 10,
    threshold: ThresholdOpt = None,
    backend: BackendOpt = None,
    ann_threshold: AnnThresholdOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Text -> image: the indexed images that best match QUERY."""
    _setup_logging(verbose)
    try:
        searcher = _open_searcher(index_dir, model, device, dtype, backend, ann_threshold)
        hits = searcher.search_text(query, limit=limit, threshold=threshold)
    except (ImgSearchError, ValueError) as exc:
        _fail(str(exc))
    _print_hits(hits, as_json, repr(query))


@app.command()
def similar(
    image: Annotated[Path, typer.Argument(help="An image file (indexed or not).", show_default=False)],
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    limit: LimitOpt = 10,
    threshold: ThresholdOpt = None,
    backend: BackendOpt = None,
    ann_threshold: AnnThresholdOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    max_image_pixels: MaxPixelsOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Image -> image: the indexed images most similar to IMAGE (cosine; the file itself is left out)."""
    _setup_logging(verbose)
    try:
        searcher = _open_searcher(index_dir, model, device, dtype, backend, ann_threshold)
        hits = searcher.search_image(str(image), limit=limit, threshold=threshold, max_image_pixels=max_image_pixels)
    except (ImgSearchError, ValueError) as exc:
        _fail(f"{_safe(str(image))}: {exc}" if "image" in type(exc).__name__.lower() else str(exc))
    _print_hits(hits, as_json, _safe(str(image)))


@app.command()
def info(
    index_dir: IndexDirOpt = None,
    failures: Annotated[int, typer.Option("--failures", min=0, help="How many skipped files to list.")] = 20,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """What is indexed: folders, models, counts, skipped files and size on disk."""
    from img_search.catalog.info import catalog_info

    _setup_logging(verbose)
    try:
        data = catalog_info(_index_dir(index_dir), failures=failures)
    except ImgSearchError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(data)
        return
    console = _stdout_console()
    console.print(f"index directory: {data['index_dir']} ({_human_bytes(data['size_on_disk_bytes'])} on disk, "
                  f"schema v{data['schema_version']})", markup=False)
    console.print("images: " + ", ".join(f"{n} {s}" for s, n in sorted(data["images"].items())) if data["images"]
                  else "images: none", markup=False)
    for m in data["models"]:
        calib = "no calibrated probability" if m["logit_bias"] is None else \
            f"calibration sigmoid(exp({m['logit_scale']:.4f})*cos {m['logit_bias']:+.4f})"
        console.print(f"model {m['name']} ({m['family']}, {m['dim']} dims): {m['images']} images; {calib}",
                      markup=False)
        saved = m["search_index"]
        if saved:
            console.print(f"  search index: {saved['backend']}, {saved['vectors']} vectors, "
                          f"{_human_bytes(saved['size_on_disk_bytes'])}", markup=False)
    for root in data["folders"]:
        console.print(f"folder {_safe(root['path'])} (last indexed {root['last_indexed']})", markup=False)
    if data["last_run"]:
        run = data["last_run"]
        console.print(f"last run: {run['status']} at {run['finished']}", markup=False)
    if data["failures"]:
        console.print(f"skipped files ({data['images'].get('error', 0)} in all):", markup=False)
        for f in data["failures"]:
            console.print(f"  {_safe(f['path'])}: {f['reason']}", markup=False)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="Output format: parquet (id, model_name, dataset_name, "
                                                      "embedding; the evaluation harness's gallery layout).")]
    = "parquet",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Export only this model's vectors "
                                                                    "[default: every model in the catalog].")] = None,
    dataset_name: Annotated[str | None, typer.Option("--dataset-name", help="The dataset_name column "
                                                     "[default: the index directory's name].")] = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Write the indexed vectors to a file, one row per image and model (id = the image's path)."""
    from img_search.export import export_catalog

    _setup_logging(verbose)
    try:
        summary = export_catalog(_index_dir(index_dir), output, fmt=fmt, model=model, dataset_name=dataset_name)
    except ImgSearchError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(summary.to_dict())
        return
    models = ", ".join(f"{m['name']} ({m['rows']} x {m['dim']})" for m in summary.models)
    _stdout_console().print(f"wrote {summary.rows} vectors to {_safe(str(output))}: {models}", markup=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"img-search {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")]
    = False,
) -> None:
    """img-search: index a folder, then search it by text (`search`) or by image (`similar`)."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
