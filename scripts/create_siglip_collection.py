"""Seed 002's script: create the SigLIP collection, preview it (``--dry-run``) or verify it (``--check``).

    python scripts/create_siglip_collection.py [--dry-run | --check] [--index-dir DIR] [--json] [-v]

The same as ``img-search collection create [--dry-run]`` / ``img-search collection check`` for the collection
``service.siglip_collection`` (``SIGLIP_COLLECTION``; default ``image_assets_siglip``): same output, same exit codes
(0 done, 1 failed, 2 invalid input). Embedded in the index directory by default; on the Qdrant that ``QDRANT_URL``
names when it is set. docs/SERVICE.md, "Collections: create and check".
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from img_search.errors import EXIT_USAGE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as the img-search CLI prints usage errors (argparse would print its usage block first)."""
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(EXIT_USAGE)


def main(argv: list[str] | None = None) -> None:
    from img_search.cli import main as cli_main

    parser = _Parser(prog="create_siglip_collection.py", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="say what would be created; write nothing")
    mode.add_argument("--check", action="store_true", help="show the collection: status, points, index, completeness")
    parser.add_argument("--index-dir", help="the index directory [env IMG_SEARCH_INDEX_DIR]")
    parser.add_argument("--json", action="store_true", help="print only JSON on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    args = parser.parse_args(argv)
    command = ["collection", "check" if args.check else "create"]
    if args.dry_run:
        command.append("--dry-run")
    if args.index_dir is not None:
        command += ["--index-dir", args.index_dir]
    if args.json:
        command.append("--json")
    command += ["-v"] * args.verbose
    cli_main(command)


if __name__ == "__main__":
    main()
