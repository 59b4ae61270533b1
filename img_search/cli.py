"""The `img-search` command line: parse, load the settings, call the library, print. Nothing below imports this.

Options that are settings (``--model``, ``--batch-size``, ``--backend``, ...) default to ``None`` here and are handed
to ``settings.load_settings``, which applies the documented precedence (flag > ``IMG_SEARCH_*`` > ``config.toml`` >
default) and validates; the defaults shown in ``--help`` are read from ``settings.DEFAULTS``, never repeated.

Human-readable output by default, one hit per line, every file name printed safely (``display_path``); with
``--json`` stdout carries only JSON and every log line, progress bar and banner goes to stderr. Errors print one
line, ``error: ...``, on stderr and exit with ``errors.exit_code``: 2 for a usage error (a bad option value, an
``InvalidInputError``), 1 for any other library error, 130 when interrupted (after committing what was embedded).
Heavy imports (torch, transformers) happen only when a command needs a model.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shlex
import signal
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from img_search import __version__
from img_search.console import CallbackProgress, make_progress, set_library_verbosity
from img_search.errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ImageDecodeError,
    ImgSearchError,
    InvalidInputError,
    NotFoundError,
    exit_code,
)
from img_search.settings import DEFAULT_MODEL, DEFAULTS, DEVICES_HELP, DTYPES, PRECISIONS, Settings, load_settings
from img_search.wording import count as _count

logger = logging.getLogger("img_search")

# Typer >= 0.20 vendors its own click; its usage errors derive from the UsageError that BadParameter derives from
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

app = typer.Typer(
    name="img-search",
    help="Semantic image search with SigLIP-family embeddings: index a folder, search it by text or by image.",
    no_args_is_help=True,
    add_completion=False,
    # markdown, not Typer's default "rich": Rich markup takes every [...] for a tag and drops it, which ate the help's
    # "[env IMG_SEARCH_...; default: ...]" notes and 'img-search[ocr]'; markdown keeps them and the option panels
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hugging Face id or local checkpoint directory [env IMG_SEARCH_MODEL]. "
                                       f"`index` defaults to {DEFAULT_MODEL}; `search`/`similar` to the model the "
                                       "catalog holds most images of.", show_default=False),
]
IndexDirOpt = Annotated[
    Path | None,
    typer.Option("--index-dir", help="Where the catalog lives [env IMG_SEARCH_INDEX_DIR; default: "
                                     "$XDG_DATA_HOME/img-search, i.e. ~/.local/share/img-search].",
                 show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (logs and progress go to stderr).")]
VerboseOpt = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging on stderr (-vv: debug).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr: no progress (a bar on a "
                                                              "terminal, else a line every 10 s), no warnings.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help=f"{DEVICES_HELP} [default: {DEFAULTS.device}].",
                                               show_default=False)]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help=f"Deprecated: use --precision ({' | '.join(DTYPES)}).", show_default=False,
                 hidden=True),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option("--precision", help=f"{' | '.join(PRECISIONS)}: how the model computes, per tower (auto: the "
                                     "fastest this CPU supports whose parity check passes; docs/PERFORMANCE.md) "
                                     f"[default: {DEFAULTS.precision}].", show_default=False),
]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, help="How many hits to show (at most what exists).")]
ThresholdOpt = Annotated[
    float | None,
    typer.Option("--threshold", "-t",
                 help="Drop hits below this calibrated probability (or below this cosine where the model has no "
                      "calibrated probability: CLIP, and image -> image); 0 to 1.", show_default=False),
]
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", help="Vector index for this search: exact, faiss, hnswlib, usearch, scann, qdrant, "
                                   "qdrant_edge [default: exact below the ANN threshold, else config.toml's "
                                   "search.ann_backend].", show_default=False),
]
AnnThresholdOpt = Annotated[
    int | None,
    typer.Option("--ann-threshold", min=0, help="Use the ANN backend from this many vectors on "
                                                f"[default: {DEFAULTS.search.ann_threshold}].", show_default=False),
]
ServerOpt = Annotated[
    str | None,
    typer.Option("--server", help="Ask this running `img-search serve` (e.g. http://127.0.0.1:8000) instead of "
                                  "loading the model here [env IMG_SEARCH_SERVER].", show_default=False),
]
MaxPixelsOpt = Annotated[
    int | None,
    typer.Option("--max-image-pixels", min=1, help="Refuse images with more pixels than this "
                                                   f"[default: {DEFAULTS.max_image_pixels:,}, Pillow's "
                                                   "decompression-bomb bound].", show_default=False),
]

# filters, ranking and query options of `search` / `similar` (search.filters, search.hybrid, search.searcher)
AfterOpt = Annotated[str | None, typer.Option("--after", help="Only photos taken on or after this date (YYYY-MM-DD, "
                                              "local time on the photo; no capture date: the file's mtime).",
                                              show_default=False, rich_help_panel="Filters")]
BeforeOpt = Annotated[str | None, typer.Option("--before", help="Only photos taken before this date (YYYY-MM-DD).",
                                               show_default=False, rich_help_panel="Filters")]
NearOpt = Annotated[str | None, typer.Option("--near", help="Only photos within RADIUS of LAT,LON: decimal degrees "
                                             "and a unit, e.g. 48.85,2.35,10km (km, m or mi).", show_default=False,
                                             rich_help_panel="Filters")]
CameraOpt = Annotated[list[str] | None, typer.Option("--camera", help="Only photos from a camera whose make/model "
                                                     "contains this (repeatable: any of them).", show_default=False,
                                                     rich_help_panel="Filters")]
FolderOpt = Annotated[list[Path] | None, typer.Option("--folder", help="Only images below this folder (repeatable).",
                                                      show_default=False, rich_help_panel="Filters")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Only images with this tag (repeatable: any of them).",
                                                  show_default=False, rich_help_panel="Filters")]
HasTextOpt = Annotated[bool | None, typer.Option("--has-text/--no-text", help="Only images with (without) text read "
                                                 "from them (`index --ocr`).", show_default=False,
                                                 rich_help_panel="Filters")]
MinSizeOpt = Annotated[str | None, typer.Option("--min-size", help="Only images at least WIDTHxHEIGHT pixels (or N: "
                                                "both sides at least N).", show_default=False,
                                                rich_help_panel="Filters")]
SortOpt = Annotated[str, typer.Option("--sort", help="score (best first) or date (newest first).",
                                      rich_help_panel="Ranking")]
HybridOpt = Annotated[str, typer.Option("--hybrid", help="auto | off | rrf | weighted: blend in the text index (file "
                                        "names, tags, descriptions, keywords, OCR). auto: rrf when the collection "
                                        "holds text of its own, else off.", rich_help_panel="Ranking")]
WeightOpt = Annotated[float, typer.Option("--weight", help="--hybrid weighted: the embedding's share W of "
                                          "W * embedding + (1 - W) * text, 0..1.", rich_help_panel="Ranking")]
ExpandOpt = Annotated[bool, typer.Option("--expand", help="Also search related terms (puppy, canine, ... for dog; "
                                         "synonyms file: docs/SEARCH.md).", rich_help_panel="Ranking")]
ExpandMergeOpt = Annotated[str, typer.Option("--expand-merge", help="max (best calibrated score per image) or "
                                             "ensemble (mean of the text embeddings).", rich_help_panel="Ranking")]
TemperatureOpt = Annotated[float | None, typer.Option("--temperature", help="Score with the seed's sigmoid(T * cos) "
                                                      "instead of the model's learned calibration, for this search.",
                                                      show_default=False, rich_help_panel="Ranking")]


def _search_options(*, after: str | None = None, before: str | None = None, near: str | None = None,
                    camera: list[str] | None = None, folder: list[Path] | None = None, tag: list[str] | None = None,
                    has_text: bool | None = None, min_size: str | None = None, sort: str = "score",
                    hybrid: str = "auto", weight: float = 0.6, expand: bool = False, expand_merge: str = "max",
                    temperature: float | None = None) -> Any:
    """The ``SearchOptions`` of the command line (InvalidInputError on a bad value)."""
    from img_search.search.filters import build_filter
    from img_search.search.searcher import SearchOptions

    flt = build_filter(after=after, before=before, near=near, cameras=camera or (),
                       folders=[str(f) for f in folder or ()], tags=tag or (), has_text=has_text, min_size=min_size)
    return SearchOptions(filter=flt or None, hybrid=hybrid, weight=weight, expand=expand, expand_merge=expand_merge,
                         temperature=temperature, sort=sort)


# ---------------------------------------------------------------------------------------------------------- plumbing
def _setup_logging(verbose: int, quiet: bool = False, *, info: bool = False) -> None:
    """stderr gets img-search's warnings (-v or ``info``: info, -vv: debug), other libraries' warnings and Python
    warnings, and transformers' / huggingface_hub's only with -v (``console.set_library_verbosity``); with
    ``quiet`` (-q) errors only."""
    level = logging.ERROR if quiet else logging.WARNING if max(verbose, int(info)) <= 0 else \
        logging.INFO if max(verbose, int(info)) == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose > 1 else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn through the handler above: -q hides them too
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_library_verbosity(verbose, quiet)


def _fail(message: str, code: int = 1) -> NoReturn:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    typer.echo(f"error: {first}", err=True)
    raise typer.Exit(code)


# what an interrupted `index` keeps; other commands embed nothing and say only "interrupted"
INDEX_INTERRUPTED = "interrupted: every batch embedded so far is committed; re-run the same command to continue"


@contextmanager
def _edge(interrupted: str = "interrupted") -> Iterator[None]:
    """Translate the library's typed errors (and Ctrl-C / SIGTERM) into one line on stderr and an exit code;
    ``interrupted``: the line after ``error: `` for a Ctrl-C (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        _outcome_decided()
        _fail(interrupted, EXIT_INTERRUPTED)
    except ImgSearchError as exc:
        _fail(str(exc), exit_code(exc))


def _settings(index_dir: Path | None, **flags: Any) -> Settings:
    """The command's settings (flag > IMG_SEARCH_* > config.toml > default); Pillow's pixel guard set from them."""
    from img_search.data.images import configure_pixel_limit

    settings = load_settings(index_dir, **flags)
    configure_pixel_limit(settings.max_image_pixels)  # once per process, before any image is opened
    return settings


# set by main() when it runs as the `img-search` program (not called in-process by a test or another program)
_PROGRAM = False


def _outcome_decided() -> None:
    """The run has finished, or its interruption is being reported: as the `img-search` program, ignore further
    Ctrl-C / SIGTERM, so a late one neither turns a finished run (summary printed) into exit 130 nor adds a
    traceback from the interpreter's teardown ('Exception ignored in: ... KeyboardInterrupt'). Not in-process (a
    test or another program keeps its own handlers)."""
    if _PROGRAM:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _finish(searcher: Any | None) -> None:
    """A search process is done once its hits are printed: release what it opened and, as the `img-search` program,
    leave without Python's interpreter teardown (measured 0.5-0.7 s of a ~1.5 s cold search: unloading ONNX Runtime,
    numpy and the module graph; docs/PERFORMANCE.md)."""
    if searcher is not None:
        searcher.close()
    if _PROGRAM:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


def _print_json(payload: Any) -> None:
    # ensure_ascii keeps non-UTF-8 file names (surrogate-escaped) representable: they appear as \udcXX
    sys.stdout.write(json.dumps(payload, ensure_ascii=True, indent=2) + "\n")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r",
              "\x1b": "\\E", "\\": "\\\\", "'": "\\'"}


def display_path(path: str) -> str:
    """``path`` as one safe line of text: unchanged when every character is printable, else quoted as bash's
    ``$'...'`` (what GNU ls prints), so it can be pasted back into a shell and names the same file.

    Control characters (newline, escape, ...) become C escapes, bytes that are not UTF-8 (surrogate-escaped by
    ``os.fsdecode``) become ``\\xNN``, and invisible or direction-changing characters (Unicode categories Cf, Zl,
    Zp, Co, Cs, Cn) become ``\\uXXXX``, so no name can forge extra lines, colours or reordered text in a terminal.
    """
    if path.isprintable() and not any(unicodedata.category(ch) == "Cf" for ch in path):
        return path
    out = []
    for ch in path:
        code = ord(ch)
        if ch in _C_ESCAPES:
            out.append(_C_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a raw byte of a non-UTF-8 name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable() or unicodedata.category(ch) == "Cf":
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


# ----------------------------------------------------------------------------------------------------------- index
@app.command()
def index(
    folders: Annotated[list[Path], typer.Argument(help="Folders to index (recursively).", show_default=False)],
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, show_default=False,
                                                   help=f"Images per model forward [default: "
                                                        f"{DEFAULTS.batch_size}].")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, show_default=False,
                                                help="Decode processes [default: one per core, 1-4; 0: decode in "
                                                     "the main process].")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    precision: PrecisionOpt = None,
    recompute: Annotated[bool, typer.Option("--recompute", help="Re-embed every file, changed or not. Resumable: "
                                            "after an interruption, `index` of the folders (with or without "
                                            "--recompute) re-embeds only the files it had left, keeping the vectors "
                                            "it committed; a --recompute decoding another way starts over.")] = False,
    max_image_pixels: MaxPixelsOpt = None,
    include_hidden: Annotated[bool | None, typer.Option("--include-hidden/--skip-hidden", show_default=False,
                                                        help="Also index dot-files/folders [default: skip].")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", show_default=False,
                                                      help="Skip paths matching this glob, relative to the indexed "
                                                           "folder (`**` allowed; repeatable; adds to config.toml's "
                                                           "`exclude`).")] = None,
    default_excludes: Annotated[bool | None, typer.Option("--default-excludes/--no-default-excludes",
                                                          show_default=False,
                                                          help="Skip the thumbnail, cache and trash folders of NAS "
                                                               "boxes and photo tools (docs/FORMATS.md) [default: "
                                                               "on].")] = None,
    ocr: Annotated[bool | None, typer.Option("--ocr/--no-ocr", show_default=False,
                                             help="Also read the text in each picture (signs, screenshots, "
                                                  "receipts), searchable as text; needs `pip install "
                                                  "'img-search[ocr]'` [env IMG_SEARCH_OCR; default: off].")]
    = None,
    full_decode: Annotated[bool | None, typer.Option("--full-decode/--reduced-decode", show_default=False,
                                                     help="Decode JPEGs in full rather than at a reduced libjpeg "
                                                          "scale (never below the model's input size; vectors differ "
                                                          "slightly). A collection keeps the mode it holds; switch "
                                                          "with --recompute [env IMG_SEARCH_FULL_DECODE; default: "
                                                          "reduced].")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Embed every image under FOLDERS, incrementally (unchanged files are skipped)."""
    from img_search.pipeline.runner import IndexOptions, default_workers, index_folders
    from img_search.search.searcher import encoder_factory

    _setup_logging(verbose, quiet)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with _edge(INDEX_INTERRUPTED):
        settings = _settings(index_dir, model=model, batch_size=batch_size, workers=workers, device=device,
                             dtype=dtype, precision=precision, max_image_pixels=max_image_pixels,
                             include_hidden=include_hidden, default_excludes=default_excludes, ocr=ocr,
                             full_decode=full_decode)
        model_name = settings.model or DEFAULT_MODEL
        options = IndexOptions(
            model=model_name, batch_size=settings.batch_size,
            workers=default_workers() if settings.workers is None else settings.workers, recompute=recompute,
            include_hidden=settings.include_hidden, max_image_pixels=settings.max_image_pixels,
            excludes=(*settings.exclude, *(exclude or ())), default_excludes=settings.default_excludes,
            ocr=settings.ocr, full_decode=settings.full_decode,
        )
        progress = make_progress(quiet)
        summary = index_folders([str(f) for f in folders], settings.index_dir, options,
                                encoder_factory=encoder_factory(model_name, settings), progress=progress,
                                search=settings.search)
        _outcome_decided()  # finished (committed, run recorded): one outcome, whatever arrives now
    if as_json:
        _print_json({**summary.to_dict(), **_file_counts(summary)})
    else:
        _print_summary(summary)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _file_counts(summary: Any) -> dict[str, int]:
    """Every image file the run found, and why the skipped ones were: the summary's ``scanned`` counts only files
    of a format img-search decodes, while ``failed`` also holds the files of unsupported formats (camera RAW, ...)
    and those it could not stat, and ``failed_before`` the unchanged files of either kind that failed earlier.
    ``image_files`` = embedded + reused + unchanged + skipped; ``skipped`` = unsupported format + unreadable this
    run + failed before (not retried). Added to ``index --json`` beside the summary's own keys."""
    from img_search.data.formats import unsupported_formats
    from img_search.data.images import HEIF_AVAILABLE

    unsupported = unsupported_formats(HEIF_AVAILABLE)
    fmt = sum(1 for f in summary.failed if os.path.splitext(f.path)[1].lower() in unsupported)
    skipped = len(summary.failed) + summary.failed_before
    return {"image_files": summary.embedded + summary.reused + summary.unchanged + skipped, "skipped": skipped,
            "skipped_unsupported_format": fmt, "skipped_unreadable": len(summary.failed) - fmt}


def _print_summary(summary: Any) -> None:
    counts = _file_counts(summary)
    why = [f"{n} {what}" for n, what in ((counts["skipped_unsupported_format"], "unsupported format"),
                                         (counts["skipped_unreadable"], "unreadable"),
                                         (summary.failed_before, "failed before, not retried")) if n]
    parts = [
        f"{_count(counts['image_files'], 'image file')} under {_count(len(summary.roots), 'folder')}: "
        f"{summary.embedded} embedded",
        f"{summary.reused} reused (moved/copied)",
        f"{summary.unchanged} unchanged",
        f"{counts['skipped']} skipped" + (f" ({', '.join(why)})" if why else ""),
    ]
    # deleted files are not among those found: a separate clause
    _out(", ".join(parts) + f"; {summary.deleted} marked deleted (no longer found); in {summary.seconds:.1f}s")
    if summary.embedded:
        # the loop's rate alone reads as the run's: say what it covers, and the whole run's beside it
        _out(f"embedding: {summary.images_per_second:.1f} images/s over {summary.embed_seconds:.2f}s once the model "
             f"was loaded (whole run: {summary.run_images_per_second:.1f} images/s over {summary.seconds:.1f}s) with "
             f"{display_path(summary.model)} ({summary.precision or 'fp32 on torch'})")
    if summary.metadata_read:
        _out(f"photo metadata: read from the headers of {_count(summary.metadata_read, 'file')} not embedded this "
             "run")
    if summary.ocr is not None:
        o = summary.ocr
        left = f", {_count(o.skipped, 'file')} left for the next run" if o.skipped else ""
        _out(f"text in pictures: {o.read} read ({o.with_text} with text, {o.failed} unreadable){left}"
             if o.read or o.skipped else "text in pictures: up to date")
    if summary.failed:
        _out("skipped files (recorded in the catalog; fix or remove them, then re-run):")
        for failure in summary.failed[:50]:
            _out(f"  {display_path(failure.path)}: {failure.reason}")
        if len(summary.failed) > 50:
            _out(f"  ... and {len(summary.failed) - 50} more (see `img-search info`)")
    if summary.failed_before:
        _out(f"{_count(summary.failed_before, 'file')} that failed earlier "
             f"{'is' if summary.failed_before == 1 else 'are'} unchanged and not retried "
             "(`img-search info` lists them)")


# ---------------------------------------------------------------------------------------------------------- search
def _search_settings(index_dir: Path | None, model: str | None, device: str | None, dtype: str | None,
                     precision: str | None, backend: str | None, ann_threshold: int | None,
                     max_image_pixels: int | None = None, server: str | None = None) -> Settings:
    search: dict[str, Any] = {}
    if backend is not None:
        # naming a backend means "use it": exact stays exact, an ANN backend applies at any size
        search = {"ann_backend": backend, "ann_threshold": 0}
    if ann_threshold is not None:
        search["ann_threshold"] = ann_threshold
    settings = _settings(index_dir, model=model, device=device, dtype=dtype, precision=precision,
                         max_image_pixels=max_image_pixels, search=search or None, server=server)
    if settings.server and (backend is not None or ann_threshold is not None):
        raise InvalidInputError("--backend and --ann-threshold choose this process's search index; a server "
                                "(--server / IMG_SEARCH_SERVER) searches with its own: drop one or the other")
    return settings


def _run_query(settings: Settings, *, remote: Callable[[Any, str], list[dict[str, Any]]],
               local: Callable[[Any], list[Any]]) -> tuple[list[Any], Any | None]:
    """Run one query on the server the settings name (``remote(client_module, url)`` -> JSON rows) or in this
    process (``local(searcher)`` -> hits): (hits, the local searcher or None, for ``_finish``)."""
    if settings.server:
        from img_search.service import client

        return client.to_hits(remote(client, settings.server)), None
    from img_search.search.searcher import open_searcher

    searcher = open_searcher(settings)
    return local(searcher), searcher


def _server_scope(index_dir: Path | None, model: str | None) -> dict[str, Any]:
    """What the command asked for by flag, for the client to check against what the server serves."""
    return {"index_dir": index_dir, "model": model}


def _print_hits(hits: list[Any], as_json: bool, what: str) -> None:
    if as_json:
        _print_json([h.to_dict() for h in hits])
        return
    if not hits:
        _out(f"no images matched {what}")
        return
    # plain aligned columns, one hit per line, never folded: paths stay whole when piped or copied
    fused = any(h.matched != "embedding" for h in hits)
    dated = any(h.date_source for h in hits)
    head = f"{'#':>3}  {'probability':>11}  {'cosine':>8}"
    head += f"  {'score':>7}  {'match':<9}" if fused else ""
    head += f"  {'date':<19}  {'':<8}" if dated else ""
    _out(f"{head}  path")
    for rank, hit in enumerate(hits, 1):
        prob = "-" if hit.probability is None else f"{hit.probability:.4f}"
        cos = "-" if hit.cosine is None else f"{hit.cosine:+.4f}"
        line = f"{rank:>3}  {prob:>11}  {cos:>8}"
        if fused:
            line += f"  {hit.score if hit.score is not None else 0.0:>7.4f}  {hit.matched:<9}"
        if dated:
            line += f"  {hit.date or '-':<19}  {hit.date_source or '':<8}"
        _out(f"{line}  {display_path(hit.path)}")


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.", show_default=False)],
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    limit: LimitOpt = 10,
    threshold: ThresholdOpt = None,
    backend: BackendOpt = None,
    ann_threshold: AnnThresholdOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    precision: PrecisionOpt = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    near: NearOpt = None,
    camera: CameraOpt = None,
    folder: FolderOpt = None,
    tag: TagOpt = None,
    has_text: HasTextOpt = None,
    min_size: MinSizeOpt = None,
    sort: SortOpt = "score",
    hybrid: HybridOpt = "auto",
    weight: WeightOpt = 0.6,
    expand: ExpandOpt = False,
    expand_merge: ExpandMergeOpt = "max",
    temperature: TemperatureOpt = None,
) -> None:
    """Text -> image: the indexed images that best match QUERY.

    QUERY is words, NOT-terms and example images: "beach -people", "dog +~/x.jpg -~/blurry.jpg" (docs/SEARCH.md).
    """
    _setup_logging(verbose, quiet)
    with _edge():
        settings = _search_settings(index_dir, model, device, dtype, precision, backend, ann_threshold,
                                    server=server)
        options = _search_options(after=after, before=before, near=near, camera=camera, folder=folder, tag=tag,
                                  has_text=has_text, min_size=min_size, sort=sort, hybrid=hybrid, weight=weight,
                                  expand=expand, expand_merge=expand_merge, temperature=temperature)
        hits, searcher = _run_query(
            settings,
            remote=lambda client, url: client.search_text(url, query, limit=limit, threshold=threshold,
                                                          options=options, **_server_scope(index_dir, model)),
            local=lambda s: s.search_text(query, limit=limit, threshold=threshold, options=options))
    _print_hits(hits, as_json, display_path(repr(query)))
    _finish(searcher)


@app.command()
def similar(
    image: Annotated[Path, typer.Argument(help="An image file (indexed or not).", show_default=False)],
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    limit: LimitOpt = 10,
    threshold: ThresholdOpt = None,
    backend: BackendOpt = None,
    ann_threshold: AnnThresholdOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    precision: PrecisionOpt = None,
    max_image_pixels: MaxPixelsOpt = None,
    server: ServerOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    near: NearOpt = None,
    camera: CameraOpt = None,
    folder: FolderOpt = None,
    tag: TagOpt = None,
    has_text: HasTextOpt = None,
    min_size: MinSizeOpt = None,
    sort: SortOpt = "score",
) -> None:
    """Image -> image: the indexed images most similar to IMAGE (cosine; the file itself is left out)."""
    _setup_logging(verbose, quiet)
    with _edge():
        settings = _search_settings(index_dir, model, device, dtype, precision, backend, ann_threshold,
                                    max_image_pixels, server=server)
        options = _search_options(after=after, before=before, near=near, camera=camera, folder=folder, tag=tag,
                                  has_text=has_text, min_size=min_size, sort=sort)
        try:
            hits, searcher = _run_query(
                settings,
                remote=lambda client, url: client.search_image(url, str(image), limit=limit, threshold=threshold,
                                                               options=options, **_server_scope(index_dir, model)),
                local=lambda s: s.search_image(str(image), limit=limit, threshold=threshold, options=options))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{display_path(str(image))}: {exc}") from None
    _print_hits(hits, as_json, display_path(str(image)))
    _finish(searcher)


@app.command("debug-scores")
def debug_scores(
    image: Annotated[Path, typer.Argument(help="An image file (indexed or not).", show_default=False)],
    query: Annotated[list[str] | None, typer.Option("--query", "-q", help="A query text; repeat for several.",
                                                    show_default=False)] = None,
    temperature: Annotated[list[float] | None, typer.Option(
        "--temperature", help="A fixed temperature T to show sigmoid(T * cos) for; repeat for several "
                              "[default: 10 15 20 25 30, the seed's].", show_default=False)] = None,
    bins: Annotated[int, typer.Option("--bins", min=1, max=200, help="Histogram bins of the score distribution.")]
    = 10,
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    max_image_pixels: MaxPixelsOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Every score of IMAGE for each --query: raw cosine, the model's learned probability, the seed's
    sigmoid(T * cos) per temperature, IMAGE's rank in the collection, and the collection's score histogram."""
    _setup_logging(verbose)
    with _edge():
        from img_search.search.calibration import SEED_TEMPERATURES
        from img_search.search.debug import debug_scores as run_debug
        from img_search.search.debug import format_report
        from img_search.search.searcher import open_searcher

        if not query:
            raise InvalidInputError("give at least one --query TEXT")
        settings = _search_settings(index_dir, model, device, None, precision, None, None, max_image_pixels)
        searcher = open_searcher(settings)
        try:
            report = run_debug(searcher, str(image), query, temperature or SEED_TEMPERATURES, bins=bins)
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{display_path(str(image))}: {exc}") from None
    if as_json:
        _print_json(report.to_dict())
    else:
        _out(format_report(report, display_path))
    _finish(searcher)


# ------------------------------------------------------------------------------------------------------------ info
@app.command()
def info(
    index_dir: IndexDirOpt = None,
    failures: Annotated[int, typer.Option("--failures", min=0, help="How many skipped files to list.")] = 20,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """What is indexed: folders, models, counts, skipped files and size on disk."""
    from img_search.info import catalog_info

    _setup_logging(verbose, quiet)
    with _edge():
        settings = _settings(index_dir)
        data = catalog_info(settings.index_dir, failures=failures)
    if as_json:
        _print_json(data)
        return
    _out(f"index directory: {display_path(data['index_dir'])} ({_human_bytes(data['size_on_disk_bytes'])} on disk, "
         f"schema v{data['schema_version']}{', read-only' if data.get('read_only') else ''})")
    _out("images: " + ", ".join(f"{n} {s}" for s, n in sorted(data["images"].items())) if data["images"]
         else "images: none")
    for m in data["models"]:
        calib = "no calibrated probability" if m["logit_bias"] is None else \
            f"calibration sigmoid(exp({m['logit_scale']:.4f})*cos {m['logit_bias']:+.4f})"
        _out(f"model {display_path(m['name'])} ({m['family']}, {m['dim']} dims): {_count(m['images'], 'image')}; "
             f"{calib}")
        if m["precisions"]:
            _out("  vectors: " + ", ".join(f"{c['images']} {c['precision']} on {c['runtime']}"
                                         for c in m["precisions"]))
        if m.get("decode"):
            _out("  decoded: " + ", ".join(f"{n} {mode}" for mode, n in m["decode"].items()))
        for check in m["parity_checks"]:
            verdict = "passed" if check["passed"] else "FAILED (never mixed into the collection)"
            _out(f"  parity {check['tower']} {check['precision']} on {check['runtime']}: min cosine to fp32 "
                 f"{check['min_cosine']:.5f} (threshold {check['threshold']}) {verdict}")
        saved = m["search_index"]
        if saved:
            _out(f"  search index: {saved['backend']}, {_count(saved['vectors'], 'vector')}, "
                 f"{_human_bytes(saved['size_on_disk_bytes'])}")
        if m.get("recompute"):
            _out(_recompute_line(m["recompute"], data["index_dir"], m["name"]))
    for root in data["folders"]:
        _out(f"folder {display_path(root['path'])} (last indexed {root['last_indexed']})")
    if data["last_run"]:
        run = data["last_run"]
        if run["status"] == "running":
            _out(f"last run: running since {run['started']}")
        elif run["status"] == "interrupted" and run["finished"] is None:
            _out(f"last run: interrupted (started {run['started']}; its process is gone, the next `index` resumes)")
        else:
            _out(f"last run: {run['status']} at {run['finished']}")
    if data["failures"]:
        _out(f"skipped files ({data['images'].get('error', 0)} in all):")
        for f in data["failures"]:
            _out(f"  {display_path(f['path'])}: {f['reason']}")


def _recompute_line(rc: dict[str, Any], index_dir: str, model: str) -> str:
    """The line of `info` on a model's unfinished ``index --recompute``, with the command that finishes it (each
    argument quoted for a shell; a name with control characters as bash's ``$'...'``, never raw)."""
    from img_search.info import finish_command

    def quote(word: str) -> str:
        shown = display_path(word)
        return shlex.quote(word) if shown == word else shown

    what = "--recompute under way" if rc["running"] else "unfinished --recompute"
    head = (f"  {what} (decoding as {rc['decode']}, started {rc['started']}): {rc['done']} of {rc['files']} files "
            f"re-embedded, {rc['left']} left")
    if rc["running"]:
        return head + " (an `index` is running)"
    command = finish_command(index_dir, model, [f["path"] for f in rc["folders"]], quote=quote)
    return head + f"; `{command}` finishes it"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ----------------------------------------------------------------------------------------------------------- serve
@app.command()
def serve(
    index_dir: IndexDirOpt = None,
    host: Annotated[str | None, typer.Option("--host", help=f"Address to listen on [default: "
                                                            f"{DEFAULTS.service.host}].", show_default=False)] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help=f"Port [default: "
                                                                              f"{DEFAULTS.service.port}].",
                                             show_default=False)] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    precision: PrecisionOpt = None,
    watch: Annotated[list[Path] | None, typer.Option("--watch", show_default=False,
                                                     help="Index new and changed images under this folder as they "
                                                          "appear (repeatable).")] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Serve the index over HTTP (docs/SERVICE.md): search, similar, thumbnails, health, admin rollout and jobs."""
    from img_search import service
    from img_search.data.images import configure_pixel_limit
    from img_search.service.config import load_service_settings
    from img_search.service.listen import check_listen_address

    _setup_logging(verbose, quiet, info=True)
    with _edge():
        nested = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        settings = load_service_settings(index_dir, device=device, dtype=dtype, precision=precision,
                                         service=nested or None)
        configure_pixel_limit(settings.max_image_pixels)
        folders = [str(f) for f in watch or ()]
        for folder in folders:
            if not os.path.isdir(folder):
                raise NotFoundError(f"--watch {display_path(folder)}: no such folder")
        # a port in use or a host that is not this machine's fails now, not after the models are loaded
        check_listen_address(settings.service.host, settings.service.port)
        service.run(settings, log_level="debug" if verbose > 1 else "info", watch=folders)


@app.command()
def worker(
    index_dir: IndexDirOpt = None,
    workers: Annotated[int, typer.Option("--workers", "-n", min=1, help="Worker processes.")] = 1,
    burst: Annotated[bool, typer.Option("--burst", help="Stop when the queue is empty.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run RQ workers for re-embedding and index jobs (needs REDIS_URL / service.redis_url; docs/SERVICE.md)."""
    from img_search.data.images import configure_pixel_limit
    from img_search.jobs.worker import run_workers
    from img_search.service.config import load_service_settings

    _setup_logging(verbose, quiet, info=True)
    with _edge():
        settings = load_service_settings(index_dir)
        configure_pixel_limit(settings.max_image_pixels)
        code = run_workers(settings, workers, burst=burst)
    raise typer.Exit(code)


# -------------------------------------------------------------------------------------------- tags and descriptions
UNKNOWN_SHOWN = 10  # unknown paths listed by import-metadata without --json


def _report_unknown(unknown: list[Any], limit: int | None) -> None:
    shown = unknown if limit is None else unknown[:limit]
    for u in shown:
        where = f" ({u.where})" if u.where else ""
        typer.echo(f"  {display_path(u.path)}{where}: {u.reason}", err=True)
    if len(unknown) > len(shown):
        typer.echo(f"  ... and {len(unknown) - len(shown)} more (--json lists all)", err=True)


@app.command()
def tag(
    paths: Annotated[list[Path], typer.Argument(help="Indexed image files.", show_default=False)],
    add: Annotated[list[str] | None, typer.Option("--add", "-a", help="Add this tag (repeatable).",
                                                  show_default=False)] = None,
    remove: Annotated[list[str] | None, typer.Option("--remove", "-r", help="Remove this tag (repeatable; any "
                                                     "case).", show_default=False)] = None,
    description: Annotated[str | None, typer.Option("--description", "-d", help="Set your description of the "
                                                    "images (replaces the previous one).", show_default=False)] = None,
    clear_description: Annotated[bool, typer.Option("--clear-description", help="Remove your description.")]
    = False,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Add or remove your tags and set your description of indexed images (searchable as text). Paths the catalog
    does not know are listed and the command exits 1; the known ones are updated all the same."""
    from img_search.annotate import tag_images
    from img_search.settings import resolve_index_dir

    _setup_logging(verbose, quiet)
    with _edge():
        result = tag_images(resolve_index_dir(index_dir), [str(p) for p in paths], add=add or (),
                            remove=remove or (), description=description, clear_description=clear_description)
    if as_json:
        _print_json(result.to_dict())
    else:
        # the tags as stored (white space normalised; a removed tag in the spelling the images had), and only
        # what changed: an image that already was as asked is counted apart
        changes = [*(f"+{display_path(t)}" for t in result.added_tags),
                   *(f"-{display_path(t)}" for t in result.removed_tags)]
        if result.descriptions_set:
            changes.append("description set")
        if result.descriptions_cleared:
            changes.append("description cleared")
        line = f"{_count(len(result.updated), 'image')} updated" + (f": {', '.join(changes)}" if changes else "")
        if result.unchanged:
            line += f"; {len(result.unchanged)} unchanged (already as asked)"
        _out(line)
    if result.unknown:
        typer.echo(f"{_count(len(result.unknown), 'path')} not in the catalog, left unchanged:", err=True)
        _report_unknown(result.unknown, None)
        raise typer.Exit(1)


@app.command("import-metadata")
def import_metadata_cmd(
    file: Annotated[Path, typer.Argument(help="A .csv (columns path, tags, description) or .json file "
                                              "(docs/FORMATS.md).", show_default=False)],
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Add tags and descriptions from a CSV or JSON file keyed by image path (relative paths: from the file's
    folder). Counts what changed; unknown paths are listed (count and the first few; --json: all) and the command
    exits 1."""
    from img_search.annotate import import_metadata
    from img_search.settings import resolve_index_dir

    _setup_logging(verbose, quiet)
    with _edge():
        result = import_metadata(resolve_index_dir(index_dir), file)
    if as_json:
        _print_json(result.to_dict())
    else:
        _out(f"{display_path(str(file))}: {_count(result.entries, 'entry', 'entries')}, "
             f"{_count(len(result.updated), 'image')} updated "
             f"({_count(result.tags_added, 'tag')} added, {_count(result.descriptions_set, 'description')} set), "
             f"{len(result.unchanged)} unchanged (already as the file says), {len(result.unknown)} not in the catalog")
    if result.ignored_fields:
        typer.echo(f"ignored (not path, tags or description): {', '.join(result.ignored_fields)}", err=True)
    if result.unknown:
        typer.echo(f"{_count(len(result.unknown), 'path')} not in the catalog, left out:", err=True)
        _report_unknown(result.unknown, None if as_json else UNKNOWN_SHOWN)
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------------ collection
collection_app = typer.Typer(help="The seed's collections (docs/SERVICE.md): create one before re-embedding into "
                                  "it, check its points and index.", no_args_is_help=True)
app.add_typer(collection_app, name="collection")
CollectionArg = Annotated[
    str | None,
    typer.Argument(help="Collection name [default: service.siglip_collection, env SIGLIP_COLLECTION, i.e. "
                        f"{DEFAULTS.service.siglip_collection}; also {DEFAULTS.service.clip_collection}].",
                   show_default=False),
]


@collection_app.command("create")
def collection_create(
    name: CollectionArg = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be created; write nothing.")] = False,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Create a model's collection (the SigLIP one by default): in the index directory, or on the Qdrant that
    QDRANT_URL names. Nothing changes when it exists."""
    from img_search.service.collection_setup import create_collection
    from img_search.service.config import load_service_settings

    _setup_logging(verbose, quiet)
    with _edge():
        result = create_collection(load_service_settings(index_dir), name, dry_run=dry_run)
    if as_json:
        _print_json(result.to_dict())
    else:
        for line in result.lines():
            _out(line)


@collection_app.command("check")
def collection_check(
    name: CollectionArg = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Show a collection: status, points, vector size, distance, quantization, the index in use and whether it is
    complete. Exit 1 when it does not exist or the service cannot serve it."""
    from img_search.service.collection_setup import check_collection, check_lines
    from img_search.service.config import load_service_settings

    _setup_logging(verbose, quiet)
    with _edge():
        report = check_collection(load_service_settings(index_dir), name)
    if as_json:
        _print_json(report.to_dict())
    else:
        for line in check_lines(report):
            _out(line)
    if report.problem:
        _fail(f"collection {report.name!r}: {report.problem}")


# ---------------------------------------------------------------------------------------------------------- export
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
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Write the indexed vectors to a file, one row per image and model (id = the image's path)."""
    from img_search.export import export_catalog

    _setup_logging(verbose, quiet)
    with _edge():
        settings = _settings(index_dir)
        summary = export_catalog(settings.index_dir, output, fmt=fmt, model=model, dataset_name=dataset_name)
    if as_json:
        _print_json(summary.to_dict())
        return
    models = ", ".join(f"{display_path(m['name'])} ({m['rows']} x {m['dim']})" for m in summary.models)
    _out(f"wrote {_count(summary.rows, 'vector')} to {display_path(str(output))}: {models}")


# --------------------------------------------------------------------------------------------------------- explore
@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def crossfilter(ctx: typer.Context) -> None:
    """Compute a crossfilter embedding database from `<uuid>.jpg` images (seed 004's options: --embedding_type,
    --input_dir, --output_embeddings_db, --batch_size, ...; `img-search crossfilter --help`; docs/EXPLORE.md)."""
    from img_search.crossfilter.compute_embeddings_cli import main as crossfilter_main

    raise typer.Exit(crossfilter_main(list(ctx.args), prog="img-search crossfilter"))


@app.command("map")
def map_cmd(
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    refit: Annotated[bool, typer.Option("--refit", help="Fit UMAP again on every image instead of placing the new "
                                                        "ones with the stored model.")] = False,
    growth_factor: Annotated[float | None, typer.Option("--growth-factor", min=1.0, show_default=False,
                                                        help="Refit once the collection has grown past this many "
                                                             "times the images the map was fitted on [default: "
                                                             f"{DEFAULTS.explore.map_growth_factor:g}].")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the map into this PNG file (PNG only: a name "
                                             "ending in .png, or without a suffix, written as given).",
                                             show_default=False)] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained interactive HTML page "
                                                  "(hover: thumbnail and path).", show_default=False)] = None,
    thumbnails: Annotated[int, typer.Option("--thumbnails", min=0, help="At most this many thumbnails embedded in "
                                            "the HTML page.")] = 2000,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Lay the collection out on a sphere with UMAP (latitude / longitude), incrementally; export PNG / HTML. Needs
    at least 8 images."""
    from img_search.explore.umap_map import check_mappable, update_map
    from img_search.search.collection import Collection

    _setup_logging(verbose, quiet)
    with _edge():
        # bad output paths and a missing plotting library fail now, not after a fit of minutes
        from img_search.files import check_output_file
        from img_search.optional import require

        if png is not None:
            from img_search.explore.export import check_png_path

            check_png_path(png, "--png")
            require("matplotlib", extra="explore", needed_for="--png")
        if html_out is not None:
            check_output_file(html_out, "--html")
        settings = _settings(index_dir, model=model)
        collection = Collection.open(settings.index_dir, settings.model, settings.search)
        try:
            check_mappable(collection, shown=display_path)  # before anything is written
            layout = update_map(settings.index_dir, collection, refit=refit,
                                growth_factor=growth_factor or settings.explore.map_growth_factor,
                                snap_cosine=settings.explore.duplicate_threshold)
            written: dict[str, str] = {}
            if png is not None or html_out is not None:
                from img_search.explore.export import export_html, export_png

                rows = collection.catalog().images_by_id(layout.image_ids.tolist())
                paths = {i: r.path for i, r in rows.items()}
                if png is not None:
                    written["png"] = str(export_png(layout, png, paths=paths))
                if html_out is not None:
                    written["html"] = str(export_html(layout, html_out, paths, max_thumbnails=thumbnails))
        finally:
            collection.close()
    if as_json:
        _print_json({**layout.to_dict(), "model": collection.model.name, "files": written})
        return
    _out(f"map of {_count(len(layout), 'image')} ({display_path(collection.model.name)}): fitted on {layout.n_fitted}, "
         f"{layout.n_transformed} placed since by transform ({layout.n_snapped} on a near-copy)")
    for kind, where in written.items():
        _out(f"{kind}: {display_path(where)}")


@app.command()
def duplicates(
    model: ModelOpt = None,
    index_dir: IndexDirOpt = None,
    threshold: Annotated[float | None, typer.Option("--threshold", "-t", show_default=False,
                                                    help="Cosine at or above which two images are near-duplicates "
                                                         f"[default: {DEFAULTS.explore.duplicate_threshold:g}].")]
    = None,
    k: Annotated[int | None, typer.Option("--k", min=1, show_default=False,
                                          help="Neighbours searched per image [default: "
                                               f"{DEFAULTS.explore.duplicate_neighbours}].")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, show_default=False,
                                              help="Show only the largest N groups.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Groups of near-identical images (copies, re-encodes, resizes), largest first."""
    from img_search.explore.duplicates import find_duplicates
    from img_search.search.collection import Collection

    _setup_logging(verbose, quiet)
    with _edge():
        settings = _settings(index_dir, model=model)
        t = settings.explore.duplicate_threshold if threshold is None else threshold
        collection = Collection.open(settings.index_dir, settings.model, settings.search)
        progress = make_progress(quiet)
        on_progress = None if progress is None else CallbackProgress(progress, "near-duplicates")
        try:
            groups = find_duplicates(collection, t, k or settings.explore.duplicate_neighbours,
                                     on_progress=on_progress)
        finally:
            if on_progress is not None:
                on_progress.close()
            collection.close()
    shown = groups if limit is None else groups[:limit]
    if as_json:
        _print_json({"threshold": t, "groups": len(groups), "images": sum(g.size for g in groups),
                     "shown": [g.to_dict() for g in shown]})
        return
    if not groups:
        _out(f"no near-duplicates at cosine >= {t:g}")
        return
    _out(f"{_count(len(groups), 'group')} of near-duplicates ({_count(sum(g.size for g in groups), 'image')}) at "
         f"cosine >= {t:g}")
    for rank, g in enumerate(shown, 1):
        _out(f"#{rank}  {g.size} images, cosine {g.min_cosine:.4f}-{g.max_cosine:.4f}")
        for path in g.paths:
            _out(f"    {display_path(path)}")
    if len(shown) < len(groups):
        _out(f"... and {_count(len(groups) - len(shown), 'more group')} (--limit, or --json)")


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


SUGGESTED_OPTIONS = 3  # at most this many options offered for a mistyped one
SUGGEST_CUTOFF = 0.7  # difflib similarity of the names without dashes: --limt ~ --limit 0.91, --th ~ --tag 0.40


def _long_options(command: Any, ctx: Any) -> list[str]:
    """The long option names a user can see in ``command --help`` (hidden ones, e.g. --dtype, left out)."""
    names: list[str] = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False) or not getattr(param, "opts", None):
            continue
        names.extend(n for n in (*param.opts, *getattr(param, "secondary_opts", ())) if n.startswith("--"))
    return names


def _commands_with_option(option: str, ctx: Any) -> list[str]:
    """``img-search <command>`` of every command that has ``option`` (a long name), sub-commands included."""
    found: list[str] = []
    root = ctx.find_root()
    stack = [(root.command, root.info_name or "img-search")]
    while stack:
        group, path = stack.pop(0)
        for name, command in getattr(group, "commands", {}).items():
            if getattr(command, "commands", None):
                stack.append((command, f"{path} {name}"))
            elif option in _long_options(command, ctx):
                found.append(f"`{path} {name}`")
    return found


def _no_such_option(exc: Any, ctx: Any) -> str:
    """click's "No such option" with a suggestion that helps. click appends "(Possible options: ...)": its difflib
    matches sorted alphabetically (the closest may come last), compared with their leading dashes (--th "matches"
    --tag and --help), hidden options included, in words that read like the list of valid options. Here: visible
    options only, those that what was typed abbreviates or extends first, then the close ones best first, "did you
    mean";
    else the commands the option belongs to, when it is another command's."""
    typed: str = exc.option_name
    message = f"No such option: {display_path(typed)}"
    stem = typed.lstrip("-")
    suggestions: list[str] = []
    if typed.startswith("--") and stem:
        options = {name[2:]: name for name in _long_options(ctx.command, ctx)}
        # --th -> --threshold (an abbreviation), --json-out -> --json (an option with something appended)
        starting = sorted(options[o] for o in options
                          if (len(stem) >= 2 and o.startswith(stem)) or (len(o) >= 3 and stem.startswith(o)))
        close = [options[o] for o in difflib.get_close_matches(stem, list(options), SUGGESTED_OPTIONS, SUGGEST_CUTOFF)]
        suggestions = list(dict.fromkeys([*starting, *close]))[:SUGGESTED_OPTIONS]
    if suggestions:
        return f"{message}; did you mean {' or '.join(suggestions)}?"
    owners = _commands_with_option(typed, ctx) if typed.startswith("--") else []
    if owners:
        return f"{message}; it is an option of {', '.join(owners[:SUGGESTED_OPTIONS])}"
    return message


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Usage errors (unknown option, a value click cannot parse or out of its range) print one line
    with a pointer to ``--help`` and exit 2, instead of click's multi-line box."""
    # a name that is not valid UTF-8 must never crash the output stream
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    global _PROGRAM
    _PROGRAM = argv is None
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="img-search", standalone_mode=False)
    except _UsageError as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `img-search` or `img-search collection` alone: Typer has printed the help already (rich format)
            sys.exit(EXIT_USAGE)
        where = "img-search --help"
        if ctx is not None and ctx.parent is not None:
            where = f"{ctx.command_path} --help"  # img-search collection create --help
        if type(exc).__name__ == "NoSuchOption" and ctx is not None:
            message = _no_such_option(exc, ctx)
        else:
            message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
        typer.echo(f"error: {message} (see `{where}`)", err=True)
        sys.exit(EXIT_USAGE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _outcome_decided()
        typer.echo("error: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
