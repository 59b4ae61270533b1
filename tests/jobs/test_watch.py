"""The folder watcher: new, changed, moved and deleted images indexed through index jobs; the inotify limits
(ENOSPC on a sub-folder or on the root, EMFILE for the instance) injected where watchdog calls the kernel, each
logged as a WARNING and answered by periodic rescans that still index what changes."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import make_jpeg
from jobs_support import Models, job_settings, make_photos

from img_search.catalog import Catalog
from img_search.jobs.queue import JobQueue, open_queue, submit_index
from img_search.jobs.tasks import Runtime
from img_search.jobs.watch import Watcher
from img_search.settings import Settings

TIMEOUT_S = 30.0  # generous: the latency itself is measured by bench/watch_latency.py


@pytest.fixture()
def watched(tmp_path: Path, models: Models) -> Iterator[Callable[..., Watcher]]:
    """``start(**service) -> Watcher`` over a folder of 4 photos indexed with the tiny SigLIP; an in-process
    queue runs the index jobs."""
    made: list[tuple[Watcher, JobQueue]] = []
    photos = make_photos(tmp_path / "photos", n=4)
    index_dir = tmp_path / "index"
    models.index(photos, index_dir, "siglip")

    def start(**service: float) -> Watcher:
        settings = job_settings(index_dir, models, **{"watch_debounce_s": 0.3, "watch_rescan_s": 1.0, **service})
        queue = open_queue(settings, Runtime(settings, encoders=models.lookup, decode_workers=0))
        watcher = Watcher(settings, [str(photos)], lambda folder: submit_index(queue, settings, folder)).start()
        made.append((watcher, queue))
        return watcher

    yield start
    for watcher, queue in made:
        watcher.stop()
        queue.close()


def _row(settings: Settings, path: Path) -> tuple[str, bytes | None] | None:
    with Catalog.in_dir(settings.index_dir, readonly=True) as cat:
        row = cat.image(str(path))
    return (row.status, row.content_hash) if row is not None else None


def _wait_for(check: Callable[[], bool], what: str) -> float:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < TIMEOUT_S, f"not seen within {TIMEOUT_S}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_new_changed_moved_and_deleted_images_are_indexed(watched: Callable[..., Watcher]) -> None:
    watcher = watched()
    settings, photos = watcher.settings, Path(watcher.roots[0].path)
    assert watcher.status() == [{"folder": str(photos), "mode": "events", "reason": None}]

    new = make_jpeg(photos / "a" / "new.jpg", seed=100)
    _wait_for(lambda: (_row(settings, new) or ("", None))[0] == "ok", "a new file")

    before = _row(settings, new)
    make_jpeg(new, seed=101)  # rewritten in place
    _wait_for(lambda: _row(settings, new) != before, "a changed file")

    deep = make_jpeg(photos / "c" / "d" / "deep.jpg", seed=102)  # in folders created after the watch started
    _wait_for(lambda: _row(settings, deep) is not None, "a file in a new sub-folder")

    moved = photos / "b" / "moved.jpg"
    os.rename(deep, moved)
    _wait_for(lambda: _row(settings, moved) is not None and (_row(settings, deep) or ("",))[0] == "deleted",
              "a moved file")

    os.remove(new)
    _wait_for(lambda: (_row(settings, new) or ("",))[0] == "deleted", "a deleted file")

    # the index directory's own writes, and files that are not images, submit nothing
    calls: list[str] = []
    watcher.submit = calls.append
    (photos / "notes.txt").write_text("not a photo")
    time.sleep(1.0)
    assert calls == []


def _fail_with(monkeypatch: pytest.MonkeyPatch, name: str, code: int, when: Callable[[bytes], bool]) -> list[bytes]:
    """Make watchdog's inotify call ``name`` fail with ``code`` (as the kernel does: -1 and errno) for the paths
    ``when`` selects; returns the paths refused."""
    from watchdog.observers import inotify_c

    real = getattr(inotify_c, name)
    refused: list[bytes] = []

    def fake(*args: object) -> int:
        path = args[1] if len(args) > 1 else b""
        assert isinstance(path, bytes | str)
        path = os.fsencode(path)
        if when(path):
            refused.append(path)
            ctypes.set_errno(code)
            return -1
        return int(real(*args))

    monkeypatch.setattr(inotify_c, name, fake)
    return refused


def test_watch_limit_on_sub_folders_falls_back_to_rescans(watched: Callable[..., Watcher],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # the kernel refuses every watch below the root: watchdog itself skips such folders without a word
    refused = _fail_with(monkeypatch, "inotify_add_watch", errno.ENOSPC, lambda p: p.rstrip(b"/").endswith(b"/a"))
    caplog.set_level(logging.WARNING, logger="img_search.jobs.watch")
    watcher = watched()
    settings, photos = watcher.settings, Path(watcher.roots[0].path)
    assert refused, "the injected failure was never hit"
    _wait_for(lambda: any("OS limit on watched folders" in r.getMessage() for r in caplog.records), "the warning")
    warning = next(r for r in caplog.records if "OS limit on watched folders" in r.getMessage())
    assert warning.levelno == logging.WARNING and "ENOSPC" in warning.getMessage()
    assert "fs.inotify.max_user_watches" in warning.getMessage() and "rescanning" in warning.getMessage()
    assert watcher.status()[0]["mode"] == "events+rescan"

    unwatched = make_jpeg(photos / "a" / "unwatched.jpg", seed=200)  # no event can come from photos/a
    _wait_for(lambda: _row(settings, unwatched) is not None, "a file in the folder that could not be watched")
    watched_too = make_jpeg(photos / "b" / "still-watched.jpg", seed=201)  # events still work elsewhere
    _wait_for(lambda: _row(settings, watched_too) is not None, "a file in a watched folder")


def test_watch_limit_on_the_root_falls_back_to_rescans(watched: Callable[..., Watcher],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    _fail_with(monkeypatch, "inotify_add_watch", errno.ENOSPC, lambda p: True)
    caplog.set_level(logging.WARNING, logger="img_search.jobs.watch")
    watcher = watched()
    assert watcher.status()[0]["mode"] == "rescan" and "ENOSPC" in watcher.status()[0]["reason"]
    assert any(r.levelno == logging.WARNING and "falling back to rescanning" in r.getMessage()
               for r in caplog.records)
    new = make_jpeg(Path(watcher.roots[0].path) / "a" / "later.jpg", seed=300)
    _wait_for(lambda: _row(watcher.settings, new) is not None, "a file under a root that could not be watched")


def test_instance_limit_falls_back_to_rescans(watched: Callable[..., Watcher], monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from watchdog.observers import inotify_c

    def no_instance() -> int:
        ctypes.set_errno(errno.EMFILE)
        return -1

    monkeypatch.setattr(inotify_c, "inotify_init", no_instance)
    caplog.set_level(logging.WARNING, logger="img_search.jobs.watch")
    watcher = watched()
    status = watcher.status()[0]
    assert status["mode"] == "rescan" and "EMFILE" in status["reason"]
    assert "fs.inotify.max_user_instances" in status["reason"]
    assert any(r.levelno == logging.WARNING and "EMFILE" in r.getMessage() for r in caplog.records)
    new = make_jpeg(Path(watcher.roots[0].path) / "b" / "later.jpg", seed=400)
    _wait_for(lambda: _row(watcher.settings, new) is not None, "a file while no inotify instance can be had")


def test_a_folder_that_is_not_there_cannot_be_watched(models: Models, tmp_path: Path) -> None:
    from img_search.errors import InvalidInputError, NotFoundError

    settings = job_settings(tmp_path / "index", models)
    with pytest.raises(NotFoundError, match="does not exist"):
        Watcher(settings, [str(tmp_path / "nope")], print)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        Watcher(settings, [str(tmp_path / "file.jpg")], print)
