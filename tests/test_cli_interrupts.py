"""Ctrl-C / SIGTERM and `img-search index` have exactly one outcome: finished (summary, exit 0) or interrupted (one
`error: interrupted` line, exit 130), never both, neither, nor a traceback. Run as the program does (``main()``
without arguments), with the interruption injected at a chosen point rather than raced with a timer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXIT_INTERRUPTED = 130

# `img-search` with a patch applied first; main() without arguments: the program's own path (_PROGRAM)
_PROGRAM = "import os, signal, sys\nimport img_search.cli as cli\n{patch}\ncli.main()\n"

# Ctrl-C while a runtime's native extension initialises: it surfaces as ImportError raised from the KeyboardInterrupt
_IMPORT_INTERRUPTED = """
from img_search.embedding.hf import HFEncoder
real_open = HFEncoder.open_choice
def open_choice(self, choice, **kwargs):
    if choice.runtime != "torch":
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as ctrl_c:
            raise ImportError("initialization failed") from ctrl_c
    return real_open(self, choice, **kwargs)
HFEncoder.open_choice = open_choice
"""

# Ctrl-C arriving once the run has finished, as its summary is printed
_LATE_CTRL_C = """
real_print = cli._print_summary
def print_summary(summary):
    os.kill(os.getpid(), signal.SIGINT)
    real_print(summary)
cli._print_summary = print_summary
"""


# Ctrl-C from the terminal during embedding: it reaches the whole process group, decode workers included
_CTRL_C_WHILE_EMBEDDING = """
from img_search.embedding.hf import HFEncoder
real_encode = HFEncoder.encode_batch
def encode_batch(self, batch):
    os.killpg(os.getpgid(0), signal.SIGINT)
    return real_encode(self, batch)
HFEncoder.encode_batch = encode_batch
"""


def _index(patch: str, photo_dir: Path, tmp_path: Path, tiny_siglip: Path,
           *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IMG_SEARCH_INDEX_DIR=str(tmp_path / "idx"), IMG_SEARCH_MODEL=str(tiny_siglip),
               HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", _PROGRAM.format(patch=patch), "index", str(photo_dir), *extra],
                          capture_output=True, text=True, timeout=300, env=env, start_new_session=True)


def test_ctrl_c_inside_a_runtime_import_is_an_interruption_not_a_fallback(photo_dir: Path, tmp_path: Path,
                                                                           tiny_siglip: Path) -> None:
    proc = _index(_IMPORT_INTERRUPTED, photo_dir, tmp_path, tiny_siglip, "--precision", "auto", "--workers", "2")
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
    assert proc.stderr.startswith("error: interrupted") and proc.stderr.count("\n") == 1, proc.stderr
    assert "trying the next choice" not in proc.stderr and proc.stdout == ""


def test_ctrl_c_after_the_run_finished_leaves_it_finished(photo_dir: Path, tmp_path: Path, tiny_siglip: Path) -> None:
    proc = _index(_LATE_CTRL_C, photo_dir, tmp_path, tiny_siglip, "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    assert ": 12 embedded, " in proc.stdout  # the summary
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert "interrupted" not in proc.stderr, proc.stderr


def test_ctrl_c_to_the_process_group_while_embedding_prints_one_line(photo_dir: Path, tmp_path: Path,
                                                                     tiny_siglip: Path) -> None:
    """The decode workers get the Ctrl-C too: they ignore it (no 'Process Process-2: ... KeyboardInterrupt')."""
    proc = _index(_CTRL_C_WHILE_EMBEDDING, photo_dir, tmp_path, tiny_siglip, "--precision", "fp32", "--workers", "2",
                  "--batch-size", "2")
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
    assert proc.stderr.startswith("error: interrupted") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


_CTRL_C_OPENING_THE_COLLECTION = """
from img_search.search.collection import Collection
def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
Collection.open = interrupted
"""


def test_ctrl_c_in_a_command_that_embeds_nothing_says_only_interrupted(photo_dir: Path, tmp_path: Path,
                                                                       tiny_siglip: Path) -> None:
    """`duplicates` (like search, map, export, tag...) embeds nothing: its Ctrl-C line must not claim that 'every batch
    embedded so far is committed' nor tell to re-run to continue; index's line still does."""
    assert _index("", photo_dir, tmp_path, tiny_siglip, "--precision", "fp32").returncode == 0
    env = dict(os.environ, IMG_SEARCH_INDEX_DIR=str(tmp_path / "idx"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _PROGRAM.format(patch=_CTRL_C_OPENING_THE_COLLECTION), "duplicates"],
                          capture_output=True, text=True, timeout=300, env=env, start_new_session=True)
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
    assert proc.stderr == "error: interrupted\n" and proc.stdout == ""
    proc = _index(_CTRL_C_WHILE_EMBEDDING, photo_dir, tmp_path, tiny_siglip, "--precision", "fp32", "--recompute",
                  "--workers", "0")
    assert proc.returncode == EXIT_INTERRUPTED, proc.stderr
    assert "every batch embedded so far is committed" in proc.stderr, proc.stderr
