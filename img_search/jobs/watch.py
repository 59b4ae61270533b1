"""``img-search serve --watch FOLDER``: index jobs for the folders where image files appear, change or go.

A ``Watcher`` watches each root recursively with watchdog (inotify on Linux). Events on image files (and on
folders, which may hold some) mark their folder as changed; once no event came for a folder for
``service.watch_debounce_s`` (and at most ``MAX_DELAY_FACTOR`` times that after its first event, so a long copy
still gets indexed as it goes), one index job is submitted for it (``jobs.queue.submit_index``: incremental, so
only new and changed files are embedded, and files gone are marked deleted). Events under the index directory are
ignored (its own writes would otherwise trigger index runs forever).

**When the OS cannot watch.** inotify has per-user limits: ``fs.inotify.max_user_watches`` (one watch per folder:
``inotify_add_watch`` fails with ENOSPC) and ``fs.inotify.max_user_instances`` (``inotify_init`` fails with
EMFILE). watchdog raises the error for a root folder but *silently skips* a sub-folder it cannot watch (watchdog
7: ``InotifyWatchGroup._add_callback``), at start-up or when the folder is created later, which would leave new
photos in it unseen. So the watcher gives watchdog its own inotify instance (``_ReportingInotifyFD``) that reports
every ENOSPC / EMFILE before watchdog swallows it; then, and whenever a root's emitter thread has stopped, it logs a
WARNING that names the limit and falls back to rescanning that root every ``service.watch_rescan_s`` (an index job
of the whole root), while events keep coming from the folders that are watched. It never stops watching silently.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from img_search.settings import Settings

logger = logging.getLogger(__name__)

MAX_DELAY_FACTOR = 3  # a folder with a steady stream of events is indexed at least every 3 x the debounce
TICK_S = 0.2  # how often the watcher thread looks at pending folders and emitters
LIMIT_ERRNOS = {errno.ENOSPC: "fs.inotify.max_user_watches", errno.EMFILE: "fs.inotify.max_user_instances"}

Submit = Callable[[str], Any]  # folder (canonical) -> submits an index job of it


def _limit_value(sysctl: str) -> str:
    try:
        return Path("/proc/sys", *sysctl.split(".")).read_text().strip()
    except OSError:
        return "?"


def _is_watched_file(path: str) -> bool:
    from img_search.data.formats import IMAGE_EXTENSIONS, unsupported_formats

    ext = os.path.splitext(path)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext in unsupported_formats(True)


@dataclass
class _Root:
    path: str
    watch: Any = None  # watchdog's ObservedWatch, None when the root could not be watched at all
    rescan: bool = False  # fallback: rescan the whole root every watch_rescan_s
    reason: str = ""
    last_rescan: float = field(default_factory=time.monotonic)


class Watcher:
    """Watches ``folders`` and submits index jobs through ``submit(folder)`` (see the module docstring).

    ``start()`` / ``stop()`` (or a ``with`` block); the work runs on a daemon thread. ``debounce_s`` and
    ``rescan_s`` default to ``service.watch_debounce_s`` / ``service.watch_rescan_s``. ``status()`` says, per
    root, whether it is watched by events or rescanned, and why.
    """

    def __init__(self, settings: Settings, folders: Sequence[str], submit: Submit, *,
                 debounce_s: float | None = None, rescan_s: float | None = None) -> None:
        from img_search.data.paths import canonical_folder
        from img_search.errors import InvalidInputError, NotFoundError

        roots = []
        for folder in folders:
            path = canonical_folder(folder)
            if not os.path.isdir(path):
                if not os.path.exists(path):
                    raise NotFoundError(f"cannot watch {folder!r}: it does not exist")
                raise InvalidInputError(f"cannot watch {folder!r}: it is not a folder")
            roots.append(path)
        self.settings = settings
        self.submit = submit
        self.debounce_s = settings.service.watch_debounce_s if debounce_s is None else debounce_s
        self.rescan_s = settings.service.watch_rescan_s if rescan_s is None else rescan_s
        self.roots = [_Root(p) for p in dict.fromkeys(roots)]
        self._index_dir = os.path.realpath(settings.index_dir)
        self._pending: dict[str, tuple[float, float]] = {}  # folder -> (first event, last event), monotonic
        self._limit_errors: list[tuple[OSError, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._inotify: Any = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> Watcher:
        """Start watching (and submit nothing yet: the roots are assumed indexed, or indexed by the caller)."""
        self._observer = self._make_observer()
        # started before scheduling: each root's emitter then starts inside schedule(), so a root that cannot be
        # watched raises there, alone (started afterwards, the first failing emitter would stop them all)
        self._observer.start()
        handler = self._handler()
        for root in self.roots:
            try:
                root.watch = self._observer.schedule(handler, root.path, recursive=True)
            except OSError as exc:
                self._fall_back(root, exc)
        self._check_limits()
        self._thread = threading.Thread(target=self._run, name="img-search-watch", daemon=True)
        self._thread.start()
        watched = [r.path for r in self.roots if not r.rescan]
        logger.info("watching %s for new and changed images (debounce %.1fs)", ", ".join(watched) or "nothing",
                    self.debounce_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=10)
            except Exception as exc:  # stopping must not fail the service's shutdown
                logger.debug("stopping the observer: %s", exc)
            self._observer = None
        if self._inotify is not None:
            self._inotify.stop()
            self._inotify = None

    def __enter__(self) -> Watcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> list[dict[str, Any]]:
        """Per root: ``{"folder", "mode": "events" | "events+rescan" | "rescan", "reason"}``."""
        out = []
        for root in self.roots:
            mode = "events" if not root.rescan else ("events+rescan" if root.watch is not None else "rescan")
            out.append({"folder": root.path, "mode": mode, "reason": root.reason or None})
        return out

    # ------------------------------------------------------------------ observer
    def _make_observer(self) -> Any:
        if not sys.platform.startswith("linux"):
            from watchdog.observers import Observer

            return Observer()
        from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver

        try:
            self._inotify = _reporting_inotify_class()(self._on_limit)
            self._inotify.start()
        except OSError as exc:
            self._inotify = None
            return _NoObserver(exc)
        from watchdog.observers.inotify import InotifyEmitter

        return BaseObserver(InotifyEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self._inotify)

    def _handler(self) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                watcher._on_event(event)

        return Handler()

    def _on_limit(self, exc: OSError, path: str) -> None:
        with self._lock:
            self._limit_errors.append((exc, path))

    def _on_event(self, event: Any) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type not in ("created", "deleted", "moved"):
            return  # a folder's "modified" comes with an event of the file that changed in it
        paths = [os.fsdecode(event.src_path)] + ([os.fsdecode(event.dest_path)] if event.dest_path else [])
        now = time.monotonic()
        for path in paths:
            if not path or path == self._index_dir or path.startswith(self._index_dir + os.sep):
                continue
            if not event.is_directory and not _is_watched_file(path):
                continue
            folder = self._existing_folder(os.path.dirname(path))
            if folder is None:
                continue
            with self._lock:
                first, _ = self._pending.get(folder, (now, now))
                self._pending[folder] = (first, now)

    def _existing_folder(self, folder: str) -> str | None:
        """``folder``, or its closest existing parent, inside one of the roots (None outside them)."""
        root = next((r.path for r in self.roots if folder == r.path or folder.startswith(r.path.rstrip("/") + "/")),
                    None)
        if root is None:
            return None
        while folder != root and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        return folder

    # ------------------------------------------------------------------ the watcher's thread
    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self._check_limits()
                self._check_emitters()
                self._flush(time.monotonic())
                self._rescans(time.monotonic())
            except Exception as exc:  # the watcher must outlive one bad submit (a queue briefly unreachable)
                logger.warning("watcher: %s", exc, exc_info=True)

    def _flush(self, now: float) -> None:
        with self._lock:
            ready = [f for f, (first, last) in self._pending.items()
                     if now - last >= self.debounce_s or now - first >= MAX_DELAY_FACTOR * max(self.debounce_s, 1)]
            for folder in ready:
                del self._pending[folder]
        for folder in _outermost(ready):
            logger.info("changes under %s: submitting an index job", folder)
            self.submit(folder)

    def _rescans(self, now: float) -> None:
        for root in self.roots:
            if root.rescan and now - root.last_rescan >= self.rescan_s:
                root.last_rescan = now
                logger.debug("rescanning %s (%s)", root.path, root.reason)
                self.submit(root.path)

    def _check_limits(self) -> None:
        with self._lock:
            errors, self._limit_errors = self._limit_errors, []
        for exc, path in errors:
            folder = os.fsdecode(path)
            root = next((r for r in self.roots if folder == r.path or folder.startswith(r.path.rstrip("/") + "/")),
                        None)
            if root is not None:
                self._fall_back(root, exc, folder)

    def _check_emitters(self) -> None:
        observer = self._observer
        if observer is None or isinstance(observer, _NoObserver):
            return
        alive = {e.watch: e.is_alive() for e in list(getattr(observer, "emitters", ()))}
        for root in self.roots:
            if root.watch is not None and not root.rescan and not alive.get(root.watch, False):
                self._fall_back(root, None, root.path, why="its watcher thread stopped (folder removed or "
                                                            "replaced?)")

    def _fall_back(self, root: _Root, exc: OSError | None, folder: str | None = None, *, why: str = "") -> None:
        if exc is not None:
            sysctl = LIMIT_ERRNOS.get(exc.errno or 0)
            if sysctl is not None:
                why = (f"the OS limit on watched folders is reached ({errno.errorcode.get(exc.errno or 0, '?')}: "
                       f"{exc.strerror or exc}; {sysctl} = {_limit_value(sysctl)}; raise it with "
                       f"`sysctl {sysctl}=...`)")
            else:
                why = f"cannot watch it: {exc}"
        if root.rescan:
            logger.debug("also not watched: %s (%s)", folder, why)
            return
        root.rescan, root.reason = True, why
        root.last_rescan = time.monotonic()
        where = f" (at {folder})" if folder and folder != root.path else ""
        logger.warning("watching %s%s: %s; falling back to rescanning it every %gs", root.path, where, why,
                       self.rescan_s)


def _outermost(folders: Sequence[str]) -> list[str]:
    """The folders that are not inside another one of the list (indexing a folder covers the ones inside it)."""
    out: list[str] = []
    for folder in sorted(set(folders), key=len):
        if not any(folder == o or folder.startswith(o.rstrip("/") + "/") for o in out):
            out.append(folder)
    return out


class _NoObserver:
    """Stands in for an observer when not even an inotify instance can be had (EMFILE): every schedule fails."""

    def __init__(self, exc: OSError) -> None:
        self.exc = exc
        self.emitters: tuple[Any, ...] = ()

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        raise self.exc

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


def _reporting_inotify_class() -> type[Any]:
    from watchdog.observers.inotify_c import InotifyFD

    class ReportingInotifyFD(InotifyFD):
        """watchdog's inotify instance, reporting every watch-limit error to ``on_limit`` before it is raised
        (watchdog swallows it for sub-folders)."""

        def __init__(self, on_limit: Callable[[OSError, str], None]) -> None:
            self._on_limit = on_limit
            super().__init__()

        def add_callback(self, path: bytes, mask: Any, callback: Any, id_: Any) -> Any:
            try:
                return super().add_callback(path, mask, callback, id_)
            except OSError as exc:
                if exc.errno in LIMIT_ERRNOS:
                    self._on_limit(exc, os.fsdecode(path))
                raise

    return ReportingInotifyFD


def watch(settings: Settings, folders: Sequence[str], *, queue: Any = None,
          stop: threading.Event | None = None) -> None:
    """Watch ``folders`` and submit index jobs of what changes to ``queue`` (default ``open_queue(settings)``)
    until ``stop`` is set or the process is interrupted. The folders are indexed once first (an index job each),
    so what changed while nothing watched is caught up. Raises ``NotFoundError`` / ``InvalidInputError`` for a
    folder that cannot be watched at all."""
    from img_search.jobs.queue import open_queue, submit_index

    own = queue is None
    q = queue if queue is not None else open_queue(settings)
    watcher = Watcher(settings, folders, lambda folder: submit_index(q, settings, folder))
    try:
        with watcher:
            for root in watcher.roots:
                submit_index(q, settings, root.path)
            (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        logger.info("watcher stopped")
    finally:
        if own:
            q.close()
