"""Decode workers leave Ctrl-C to the parent: they ignore SIGINT (the parent stops them), so an interrupted `index`
prints its one line, not a ``Process Process-2: ... KeyboardInterrupt`` traceback from each worker."""

from __future__ import annotations

import multiprocessing
import os
import signal

from img_search.pipeline.reader import _die_with_parent


def _report(queue: multiprocessing.queues.Queue[bool], parent: int) -> None:
    _die_with_parent(parent, 0)
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_a_decode_worker_ignores_sigint() -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_report, args=(queue, os.getpid()))
    proc.start()
    try:
        assert queue.get(timeout=60) is True
    finally:
        proc.join(60)
    assert proc.exitcode == 0
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # the parent keeps its handler
