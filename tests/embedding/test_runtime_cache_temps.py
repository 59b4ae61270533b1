"""Temporary entries of the runtime cache left by killed writers (issue 12): the next export or JSON write removes
them, and never one whose writer is alive."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from img_search.embedding.onnx_export import FORMAT_VERSION, RuntimeCache


def _checkpoint(tmp_path: Path) -> Path:
    """A folder RuntimeCache accepts as a checkpoint (config.json is all it fingerprints); nothing is exported."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    return model


def _temps(cache: RuntimeCache) -> list[str]:
    return sorted(p.name for folder in (cache.dir, cache.dir / "parity") if folder.is_dir()
                  for p in folder.iterdir() if p.name.endswith(".tmp"))


def _run(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


KILLED_MID_EXPORT = """
    import os, signal, sys
    from pathlib import Path
    from img_search.embedding.onnx_export import RuntimeCache

    def build(tmp: Path) -> None:  # half a graph, then the process is SIGKILLed (no finally runs)
        (tmp / "model.onnx").write_bytes(b"half a graph")
        os.kill(os.getpid(), signal.SIGKILL)

    RuntimeCache(sys.argv[1], sys.argv[2]).publish("image-onnx-fp32", build)
"""

WRITING = """
    import sys, time
    from pathlib import Path
    from img_search.embedding.onnx_export import RuntimeCache

    def build(tmp: Path) -> None:  # an export still running in another process
        (tmp / "model.onnx").write_bytes(b"in progress")
        print("building", flush=True)
        time.sleep(120)

    RuntimeCache(sys.argv[1], sys.argv[2]).publish("text-onnx-fp32", build)
"""


def test_the_next_export_removes_the_temporaries_of_killed_writers_only(tmp_path: Path) -> None:
    model, root = _checkpoint(tmp_path), tmp_path / "cache"
    cache = RuntimeCache(str(model), root)
    killed = _run(KILLED_MID_EXPORT, str(model), str(root))
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stderr.read() if killed.stderr else ""
    left = _temps(cache)
    assert len(left) == 1 and left[0].startswith(".image-onnx-fp32.")  # what a SIGKILL mid-export leaves
    assert not cache.has_graph("image", "onnx-fp32")
    # temporaries as the code before this fix left them (no lock): a graph folder and a parity JSON file
    (cache.dir / ".text-onnx-int8.k3j4h5.tmp").mkdir()
    (cache.dir / ".text-onnx-int8.k3j4h5.tmp" / "model.onnx").write_bytes(b"old half graph")
    (cache.dir / "parity").mkdir()
    (cache.dir / "parity" / ".text-int8-onnxruntime.json.x8y9.tmp").write_text("{")
    alive = _run(WRITING, str(model), str(root))
    try:
        assert alive.stdout is not None and alive.stdout.readline().strip() == "building"
        live = [n for n in _temps(cache) if n.startswith(".text-onnx-fp32.")]
        assert len(live) == 1

        cache.publish("image-onnx-fp32", lambda tmp: (tmp / "model.onnx").write_bytes(b"complete graph"))

        assert cache.graph_path("image", "onnx-fp32").read_bytes() == b"complete graph"
        assert _temps(cache) == live  # the killed writers' temporaries are gone, the live writer's is kept
        assert (cache.dir / live[0] / "model.onnx").read_bytes() == b"in progress"
        (cache.dir / ".tokenizer.zz11.tmp").mkdir()  # another killed writer; a JSON write cleans up as well
        cache.write_manifest({"model": "x"})
        assert _temps(cache) == live and cache.manifest() == {"model": "x", "format": FORMAT_VERSION}
    finally:
        alive.kill()
        alive.wait(timeout=30)
    assert cache.remove_stale_temps() == live  # once its writer is gone, its temporary goes too
    assert _temps(cache) == []
    assert not cache.has_graph("text", "onnx-fp32")


def test_a_temporary_removed_before_it_was_locked_is_replaced(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A cleaner in another process may remove a writer's new temporary between its creation and its lock: the
    writer notices (the path is no longer its entry) and takes a new one instead of building into a removed one."""
    import tempfile

    from img_search.embedding import onnx_export

    cache = RuntimeCache(str(_checkpoint(tmp_path)), tmp_path / "cache")
    real_mkdtemp, real_mkstemp, calls = tempfile.mkdtemp, tempfile.mkstemp, []

    def mkdtemp_then_cleaned(**kw):  # type: ignore[no-untyped-def]
        path = real_mkdtemp(**kw)
        calls.append(path)
        if len(calls) == 1:
            assert cache.remove_stale_temps() == [Path(path).name]  # not locked yet: looks like a dead writer's
        return path

    def mkstemp_then_cleaned(**kw):  # type: ignore[no-untyped-def]
        fd, path = real_mkstemp(**kw)
        calls.append(path)
        if len(calls) == 3:
            assert cache.remove_stale_temps() == [Path(path).name]
        return fd, path

    monkeypatch.setattr(onnx_export.tempfile, "mkdtemp", mkdtemp_then_cleaned)
    monkeypatch.setattr(onnx_export.tempfile, "mkstemp", mkstemp_then_cleaned)
    cache.publish("text-onnx-fp32", lambda tmp: (tmp / "model.onnx").write_bytes(b"graph"))
    assert len(calls) == 2 and cache.graph_path("text", "onnx-fp32").read_bytes() == b"graph"
    cache.write_manifest({"model": "y"})
    assert len(calls) == 4 and cache.manifest() == {"model": "y", "format": FORMAT_VERSION}
    assert _temps(cache) == []
