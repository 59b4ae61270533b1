"""What the command lines show on stderr while they work: progress, as a Rich bar on a terminal and as plain lines
elsewhere (a log file, a pipe, a CI job, `nohup`), where a redrawn bar is noise and the library's ``LogProgress``
logs at INFO, below what the command line shows without -v; and how much the libraries they load may print.

``make_progress(quiet)`` picks one: a ``pipeline.progress.Progress`` for the long-running commands (``index``,
whose embedding, metadata and OCR back-fill phases all report through it, and ``duplicates``), None with -q.
``set_library_verbosity(verbose, quiet)``: transformers and huggingface_hub print through handlers of their own
("[transformers] Model config: ..."), which the command line's logging level does not reach.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from img_search.pipeline.progress import IntervalProgress

# seconds between two plain progress lines (not a TTY): often enough to show a run is alive, rare enough for a log
PROGRESS_EVERY_SECONDS = 10.0


class LineProgress(IntervalProgress):
    """``pipeline.progress.IntervalProgress`` as plain lines on stderr (looked up at each write: the stream may be
    swapped), at most every ``every`` seconds (default ``PROGRESS_EVERY_SECONDS``)."""

    def __init__(self, every: float | None = None, stream: Callable[[], TextIO] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream or (lambda: sys.stderr)
        super().__init__(self._write, PROGRESS_EVERY_SECONDS if every is None else every, clock)

    def _write(self, line: str) -> None:
        stream = self._stream()
        stream.write(line + "\n")
        stream.flush()


def make_progress(quiet: bool) -> Any:
    """The progress display of a long-running command: None with ``quiet`` (-q), a Rich bar when stderr is a
    terminal, else ``LineProgress``."""
    if quiet:
        return None
    if not sys.stderr.isatty():
        return LineProgress()
    from rich.console import Console

    from img_search.pipeline.rich_progress import RichProgress

    return RichProgress(Console(stderr=True))


class CallbackProgress:
    """A ``Progress`` driven by a library's ``on_progress(done, total)`` callback (``explore.find_duplicates``)."""

    def __init__(self, progress: Any, description: str) -> None:
        self.progress = progress
        self.description = description
        self._done: int | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._done is None:
            self.progress.start(total, self.description)
            self._done = 0
        self.progress.advance(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._done is not None:
            self.progress.stop()


# the libraries that log through a handler of their own, and the variable each reads its level from when it first
# configures its logging (at import; a spawned decode worker inherits the variable)
LIBRARY_VERBOSITY = {"transformers": "TRANSFORMERS_VERBOSITY", "huggingface_hub": "HF_HUB_VERBOSITY"}
_LEVELS = {"detail": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def set_library_verbosity(verbose: int, quiet: bool = False) -> None:
    """Errors only from transformers and huggingface_hub by default and with ``quiet`` (their config and loading
    notes are noise to a user who can do nothing about them), warnings too with -v; with -vv, what their own
    variables ask when set. Applied to the variables before the libraries are imported and to their loggers when
    they already are (another command run in this process)."""
    level = "error" if quiet or verbose < 1 else "warning"
    for module, variable in LIBRARY_VERBOSITY.items():
        if verbose >= 2 and not quiet:
            os.environ.setdefault(variable, level)
        else:
            os.environ[variable] = level
        if module in sys.modules:
            logging.getLogger(module).setLevel(_LEVELS.get(os.environ[variable], logging.WARNING))
