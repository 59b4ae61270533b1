"""Shared fixtures: tiny random checkpoints built offline once per session, and generated images.

Every model is written with ``save_pretrained`` and loaded back through the users' path
(``from_pretrained(local_dir)``) with the Hub switched off, so no test can download anything.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_jpeg

# the runtime cache (exported graphs, parity verdicts) of this test session: shared by every test and subprocess, so
# each tiny model is exported once, and never the user's own ~/.cache
_CACHE = tempfile.mkdtemp(prefix="img-search-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A command run in-process (CliRunner, ``main(argv)``) sets the root handlers, the ``img_search`` logger's level
    (-q: errors only) and the warnings capture for the rest of its process, as a real command may; a later test's
    own command must not inherit them (one ran after ``index -q`` and lost its warnings)."""
    root, ours = logging.getLogger(), logging.getLogger("img_search")
    saved = root.handlers[:], root.level, ours.level
    yield
    root.handlers[:], ours_level = saved[0], saved[2]
    root.setLevel(saved[1])
    ours.setLevel(ours_level)
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from img_search.embedding.tiny import TinySpec, build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {fam: build_tiny_model(root / f"tiny-{fam}", TinySpec(family=fam)) for fam in ("siglip", "siglip2", "clip")}


@pytest.fixture(scope="session")
def tiny_siglip(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["siglip"]


@pytest.fixture(scope="session")
def siglip_encoder(tiny_siglip: Path):  # type: ignore[no-untyped-def]
    from img_search.embedding import load_encoder

    return load_encoder(str(tiny_siglip), device="cpu")


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    """A folder of 12 distinct small JPEGs in two sub-folders."""
    folder = tmp_path / "photos"
    for i in range(12):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        make_jpeg(sub / f"img{i:02d}.jpg", seed=i)
    return folder


@pytest.fixture()
def read_only_mount(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``mount(folder) -> Path``: a read-only bind mount of ``folder`` (root only; skipped where mount is refused).

    As root ``chmod a-w`` changes nothing, so read-only media are simulated the way they behave: EROFS on write.
    """
    import subprocess

    mounted: list[Path] = []

    def mount(folder: Path) -> Path:
        target = tmp_path / f"ro-{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "--bind", str(folder), str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
        mounted.append(target)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)

