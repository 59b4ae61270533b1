"""Hostile files and names (hostile_corpus.py): `img-search index` completes, every file is embedded or recorded
with its reason, nothing else enters the catalog, a re-run changes nothing, and search returns exactly the
embedded files under their exact names.

Run as users run it (a fresh `img-search index` process, decode workers on). As root, the process runs without
CAP_DAC_OVERRIDE (``setpriv``) so that a mode-000 file is unreadable as it is for anyone else; where that cannot be
done, the file is expected to be embedded instead.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import cli
from hostile_corpus import Corpus, build
from reliability_support import can_read, catalog_state, integrity, no_dac_override_prefix


@dataclass(frozen=True)
class Run:
    corpus: Corpus
    idx: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory, tiny_siglip: Path) -> Run:
    root = tmp_path_factory.mktemp("hostile")
    prefix = no_dac_override_prefix()
    probe = root / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    corpus = build(root / "corpus", unreadable_is_readable=can_read(probe, prefix))
    idx = root / "idx"
    args = ("index", str(corpus.root), "--model", str(tiny_siglip), "--index-dir", str(idx), "--workers", "1",
            "--batch-size", "4", "--json", "--quiet")
    first = cli(*args, prefix=prefix)
    second = cli(*args, prefix=prefix)
    return Run(corpus, idx, first, second)


def test_every_hostile_file_is_embedded_or_skipped_with_its_reason(corpus_run: Run) -> None:
    corpus, idx, first = corpus_run.corpus, corpus_run.idx, corpus_run.first
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    reasons = {f["path"]: f["reason"] for f in summary["failed"]}
    assert sorted(reasons) == sorted(corpus.failed)
    wrong = {os.path.basename(p): r for p, r in reasons.items() if not r.startswith(corpus.failed[p])}
    assert wrong == {}
    # files with the same bytes are encoded once: the copies reuse that vector
    assert summary["embedded"] + summary["reused"] == len(corpus.ok) and summary["interrupted"] is False

    state = catalog_state(idx, summary["model"])
    assert integrity(idx / "catalog.sqlite3") == "ok"
    assert sorted(p for p, s in state.statuses.items() if s == "ok") == sorted(corpus.ok)
    assert {p: s for p, s in state.statuses.items() if s != "ok"} == dict.fromkeys(corpus.failed, "error")
    assert state.errors == reasons  # the catalog keeps each reason for `info`
    assert not set(state.statuses) & corpus.ignored
    vectors = np.stack(list(state.vectors.values()))
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_a_rerun_over_the_hostile_folder_changes_nothing(corpus_run: Run) -> None:
    corpus, second = corpus_run.corpus, corpus_run.second
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert summary["failed"] == [] and summary["embedded"] == 0
    assert summary["unchanged"] == len(corpus.ok)
    assert summary["failed_before"] == len(corpus.failed)


def test_search_returns_exactly_the_embedded_files_by_their_names(corpus_run: Run) -> None:
    corpus, idx = corpus_run.corpus, corpus_run.idx
    done = cli("search", "a photo", "--index-dir", str(idx), "--limit", "1000", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    hits = json.loads(done.stdout)
    assert sorted(h["path"] for h in hits) == sorted(corpus.ok)
    assert all(os.path.lexists(os.fsencode(h["path"])) for h in hits)  # names round-trip to the bytes on disk
    human = cli("search", "a photo", "--index-dir", str(idx), "--limit", "1000")
    lines = human.stdout.splitlines()
    assert human.returncode == 0 and len(lines) == 1 + len(corpus.ok)
    assert "\x1b" not in human.stdout and "\r" not in human.stdout
