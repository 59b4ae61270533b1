"""Decode workers leave Ctrl-C to the parent: they ignore SIGINT (the parent stops them), so an interrupted `index`
prints its one line, not a ``Process Process-2: ... KeyboardInterrupt`` traceback from each worker."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from img_search.pipeline.reader import _die_with_parent, _sigint_held


def _report(queue: multiprocessing.queues.Queue[bool], parent: int) -> None:
    _die_with_parent(parent, 0)
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    queue.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN and not blocked)


def test_a_decode_worker_ignores_sigint() -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_report, args=(queue, os.getpid()))
    with _sigint_held():  # as read_batches forks them: Ctrl-C held back until the worker ignores it
        proc.start()
    try:
        assert queue.get(timeout=60) is True
    finally:
        proc.join(60)
    assert proc.exitcode == 0
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN  # the parent keeps its handler


def test_a_ctrl_c_while_workers_are_forked_is_delivered_afterwards_not_lost() -> None:
    # Python's own Ctrl-C handler for the test: an earlier test in this process (an RQ worker) may have left its own
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), _sigint_held():
            os.kill(os.getpid(), signal.SIGINT)
            assert signal.SIGINT in signal.sigpending()
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGINT, previous)
