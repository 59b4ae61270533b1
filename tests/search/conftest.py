"""Fixtures of the evaluation-harness tests: the shards of ``search_eval_data`` built once per session, and a
runner that calls the Hydra entry point in-process (sys.argv patched) and restores the logging Hydra reconfigures."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from search_eval_data import EntryResult, EvalShards, build_eval_shards


@pytest.fixture(scope="session")
def eval_shards(tmp_path_factory: pytest.TempPathFactory) -> EvalShards:
    return build_eval_shards(tmp_path_factory.mktemp("eval_shards"))


@pytest.fixture()
def run_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., EntryResult]]:
    """Call `python -m img_search.search.evaluate ARGS` in-process; returns the exit code and captured streams."""
    from img_search.search import evaluate

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    def run(*args: str) -> EntryResult:
        capsys.readouterr()
        argv = ["evaluate", *args, f"hydra.run.dir={tmp_path / 'hydra_run'}"]
        monkeypatch.setattr(sys, "argv", argv)
        code = 0
        try:
            evaluate.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return EntryResult(code, captured.out, captured.err)

    yield run
    for handler in root.handlers[:]:
        if handler not in saved_handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in saved_handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved_level)
