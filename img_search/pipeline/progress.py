"""Progress reporting is injected: the CLI passes a Rich bar; the library default logs a line now and then."""

from __future__ import annotations

import logging
import time
from typing import Protocol

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0


class Progress(Protocol):
    def start(self, total: int, description: str) -> None: ...

    def advance(self, n: int) -> None: ...

    def stop(self) -> None: ...


class LogProgress:
    """Logs done/total, images/s and ETA at most every ``LOG_EVERY_SECONDS``."""

    def __init__(self, every: float = LOG_EVERY_SECONDS) -> None:
        self.every = every
        self.total = 0
        self.done = 0
        self.t0 = self.last = 0.0
        self.description = ""

    def start(self, total: int, description: str) -> None:
        self.total, self.done, self.description = total, 0, description
        self.t0 = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            logger.info("%s: %d/%d images, %.1f images/s, ETA %.0fs", self.description, self.done, self.total, rate,
                        eta)

    def stop(self) -> None:
        pass
