"""The service's job queue: opened on first use (so a service whose Redis is down still serves searches, and the
job routes answer 503 until it is back), with a runtime that reuses the encoders the collections hold, and the
folder watcher of ``serve --watch``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from img_search.embedding.base import Encoder
from img_search.service.collections import CollectionRegistry
from img_search.settings import Settings

if TYPE_CHECKING:
    from img_search.jobs.queue import JobQueue
    from img_search.jobs.watch import Watcher

logger = logging.getLogger(__name__)


class ServiceJobs:
    """The queue of one service process (``jobs.queue.open_queue``), and its watcher when folders are watched."""

    def __init__(self, settings: Settings, registry: CollectionRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._queue: JobQueue | None = None
        self._lock = threading.Lock()
        self.watcher: Watcher | None = None

    def _encoder(self, model: str) -> Encoder | None:
        """A collection's encoder for ``model`` when one is served (no second copy of a loaded model)."""
        served = next((s for s in self.registry.served() if s.model.name == model and s.searcher is not None), None)
        return served.searcher.encoder if served is not None and served.searcher is not None else None

    def queue(self) -> JobQueue:
        """The queue, opened now if need be. Raises ``UnavailableError`` when Redis cannot be reached."""
        from img_search.jobs.queue import open_queue
        from img_search.jobs.tasks import Runtime

        with self._lock:
            if self._queue is None:
                # decode_workers=0: the in-process worker decodes in its own thread; forking decode processes
                # from a threaded server could copy a lock some other thread holds
                self._queue = open_queue(self.settings, Runtime(self.settings, encoders=self._encoder,
                                                                decode_workers=0))
                logger.info("job queue: %s", self._queue.backend)
            return self._queue

    def watch(self, folders: Sequence[str]) -> None:
        """Start watching ``folders``: one index job each now (what changed while nothing watched), then one per
        changed folder (``jobs.watch.Watcher``)."""
        from img_search.jobs.queue import submit_index
        from img_search.jobs.watch import Watcher

        def submit(folder: str) -> None:
            submit_index(self.queue(), self.settings, folder)

        self.watcher = Watcher(self.settings, folders, submit).start()
        for root in self.watcher.roots:
            submit(root.path)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        with self._lock:
            if self._queue is not None:
                self._queue.close()
                self._queue = None
