"""Seed 004's command line: compute a crossfilter embedding database from a folder of ``<uuid>.jpg`` images.

    python -m img_search.crossfilter.compute_embeddings_cli --embedding_type SIGLIP2 --input_dir DIR \\
        --output_embeddings_db FILE.db --batch_size 10 \\
        [--recompute_existing_embeddings | --no-recompute_existing_embeddings] \\
        [--reproject_umap_embeddings | --no-reproject_umap_embeddings]

Same options, spellings and defaults as the seed (batch size 10, no recompute, reproject), plus ``--model`` (a
checkpoint replacing the type's default), ``--workers``, ``--json``, ``--quiet`` and ``-v``. Also ``img-search
crossfilter ...``. Exit codes as ``img-search``: 0 done, 2 bad usage or input, 1 other errors, 130 interrupted (every
committed batch is kept; a re-run continues). docs/EXPLORE.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from img_search.console import set_library_verbosity
from img_search.crossfilter.compute import DEFAULT_BATCH_SIZE, CrossfilterSummary, compute_embeddings
from img_search.crossfilter.types import DEFAULT_EMBEDDING_TYPE, EMBEDDING_TYPES
from img_search.errors import EXIT_INTERRUPTED, ImgSearchError, exit_code

logger = logging.getLogger("img_search")
PROG = "python -m img_search.crossfilter.compute_embeddings_cli"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    types = ", ".join(f"{n} ({EMBEDDING_TYPES.get(n).checkpoint})" for n in EMBEDDING_TYPES)
    p = argparse.ArgumentParser(prog=prog, description="Compute embeddings for <uuid>.jpg images and store them in "
                                "a crossfilter SQLite database (docs/EXPLORE.md).")
    p.add_argument("--embedding_type", default=DEFAULT_EMBEDDING_TYPE,
                   help=f"Type of embedding to compute: {types} [default: {DEFAULT_EMBEDDING_TYPE}].")
    p.add_argument("--input_dir", type=Path, required=True, help="Folder of images named <uuid>.jpg (any depth).")
    p.add_argument("--output_embeddings_db", type=Path, required=True, help="SQLite database to create or update.")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"Images per model forward [default: {DEFAULT_BATCH_SIZE}].")
    p.add_argument("--recompute_existing_embeddings", action=argparse.BooleanOptionalAction, default=False,
                   help="Recompute embeddings already in the database [default: no].")
    p.add_argument("--reproject_umap_embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="Fit UMAP on all stored embeddings and store the model and the projections [default: yes].")
    p.add_argument("--model", default=None, help="Checkpoint (Hub id or local directory) to use instead of the "
                   "embedding type's default; loaded with the type's model family.")
    p.add_argument("--workers", type=int, default=None, help="Decode processes [default: one per core, 1-4; 0: "
                   "decode in the main process].")
    p.add_argument("--json", action="store_true", help="Print the run's summary as JSON on stdout.")
    p.add_argument("--quiet", "-q", action="store_true", help="Only errors on stderr.")
    p.add_argument("--verbose", "-v", action="count", default=0, help="More logging on stderr.")
    return p


def _print_summary(s: CrossfilterSummary) -> None:
    out = sys.stdout.write
    out(f"{s.jpeg_files} .jpg files: {s.valid} named by UUID, {s.invalid_names} skipped (not a UUID name)"
        + (f", {s.duplicate_uuids} skipped (UUID seen twice)" if s.duplicate_uuids else "") + "\n")
    out(f"{s.embedded} embedded with {s.model} ({s.embedding_type}), {s.already_present} already in the database, "
        f"{len(s.failed)} failed; {s.stored} stored in {s.database}\n")
    out(f"UMAP: {s.umap}\n")
    for f in s.failed[:20]:
        out(f"  failed {f['path']}: {f['reason']}\n")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None, *, prog: str = PROG) -> int:
    """Run the command; returns the exit code (``SystemExit`` 2 from argparse on a usage error)."""
    args = build_parser(prog).parse_args(argv)
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose <= 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger.setLevel(level)
    set_library_verbosity(args.verbose, args.quiet)  # transformers' own notes: errors only unless -v
    from img_search.pipeline.runner import default_workers

    if threading.current_thread() is threading.main_thread():  # SIGTERM commits what was embedded, like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = compute_embeddings(
            args.input_dir, args.output_embeddings_db, embedding_type=args.embedding_type, model=args.model,
            batch_size=args.batch_size, recompute=args.recompute_existing_embeddings,
            reproject=args.reproject_umap_embeddings,
            workers=default_workers() if args.workers is None else args.workers)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted: every batch embedded so far is committed; re-run to continue\n")
        return EXIT_INTERRUPTED
    except ImgSearchError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.stderr.write(f"error: {first}\n")
        return exit_code(exc)
    if args.json:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    else:
        _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
