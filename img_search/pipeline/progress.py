"""Progress reporting is injected: the CLI passes a Rich bar on a terminal and plain lines elsewhere
(``console.make_progress``); the library default logs a line now and then."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


def format_duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; ``7384`` -> ``2h03m`` (seconds rounded)."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class IntervalProgress:
    """``description: done/total images (pct), rate images/s, ETA`` handed to ``emit`` at most every ``every``
    seconds (``clock`` seconds, monotonic), and a closing ``done/total images in <duration>`` at ``stop`` for a
    phase that emitted any line (a phase shorter than ``every`` emits nothing). Implements ``Progress``."""

    def __init__(self, emit: Callable[[str], None], every: float = LOG_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.emit, self.every, self._clock = emit, every, clock
        self.total = self.done = self._shown = 0
        self.t0 = self.last = 0.0
        self.description = ""

    def start(self, total: int, description: str) -> None:
        self.total, self.done, self._shown, self.description = total, 0, 0, description
        self.t0 = self.last = self._clock()

    def advance(self, n: int) -> None:
        self.done += n
        now = self._clock()
        if now - self.last >= self.every:
            self.last = now
            self.emit(self._line(now))

    def stop(self) -> None:
        if self._shown and self.done != self._shown:
            elapsed = self._clock() - self.t0
            self.emit(f"{self.description}: {self.done}/{self.total} images in {format_duration(elapsed)}")

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self.t0, 1e-9)
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "unknown"
        self._shown = self.done
        return f"{self.description}: {self.done}/{self.total} images{pct}, {rate:.1f} images/s, ETA {eta}"


class LogProgress(IntervalProgress):
    """``IntervalProgress`` through this module's logger at INFO (what library callers, jobs and workers get)."""

    def __init__(self, every: float = LOG_EVERY_SECONDS) -> None:
        super().__init__(logger.info, every)
