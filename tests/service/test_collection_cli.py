"""``img-search collection create|check`` and ``scripts/create_siglip_collection.py`` (seed 002's Step 1).

In process through Typer's CliRunner (environment variables as a user sets them: the seed's ``SIGLIP_*`` and
``QDRANT_URL``), and the script in a subprocess. Embedded target with the session's tiny models; the Qdrant target
through qdrant-client's local mode (``IMG_SEARCH_SEARCH__PARAMS__QDRANT__PATH``); no Qdrant server runs here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Models, make_photos
from typer.testing import CliRunner

from img_search.catalog import Catalog
from img_search.cli import app
from img_search.search.store import read_current

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "create_siglip_collection.py"
CLEARED = ("SIGLIP_MODEL_NAME", "SIGLIP_PRETRAINED", "SIGLIP_EMBEDDING_DIM", "SIGLIP_COLLECTION", "USE_SIGLIP",
           "SIGLIP_ROLLOUT_PERCENTAGE", "QDRANT_URL", "REDIS_URL", "GPU_BATCH_SIZE", "DEVICE")
SEED_LABELS = ["Status:", "Points:", "Vector size:", "Distance:", "Quantization enabled:"]

Run = Callable[..., "Result"]
# qdrant-client checks a server's version in a thread of its own, which may warn after the test that started it
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def error_line(self) -> str:
        """The one error line (and there is exactly one)."""
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error: ")]
        assert len(errors) == 1, self.stderr
        return errors[0]

    def value(self, label: str) -> str:
        found = [ln.split(":", 1)[1].strip() for ln in self.stdout.splitlines() if ln.strip().startswith(label)]
        assert found, f"{label!r} not in:\n{self.stdout}"
        return found[0]


@pytest.fixture()
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models: Models) -> dict[str, str]:
    """The seed's variables naming the tiny models as its two collections (32-d), and a fresh index dir."""
    for name in list(os.environ):
        if name.startswith("IMG_SEARCH_") or name in CLEARED:
            monkeypatch.delenv(name)
    return {"IMG_SEARCH_INDEX_DIR": str(tmp_path / "index"), "SIGLIP_MODEL_NAME": str(models.siglip),
            "SIGLIP_EMBEDDING_DIM": "32", "IMG_SEARCH_SERVICE__CLIP_MODEL": str(models.clip),
            "IMG_SEARCH_SERVICE__CLIP_DIM": "32", "IMG_SEARCH_PRECISION": "fp32"}


@pytest.fixture()
def run(env: dict[str, str]) -> Run:
    runner = CliRunner()

    def invoke(*args: str, **extra: str) -> Result:
        res = runner.invoke(app, ["collection", *args], env={**env, **extra}, catch_exceptions=False)
        return Result(res.exit_code, res.stdout, res.stderr)

    return invoke


def test_create_matches_the_seed_and_is_idempotent(run: Run, env: dict[str, str], models: Models) -> None:
    index_dir = Path(env["IMG_SEARCH_INDEX_DIR"])
    dry = run("create", "--dry-run")
    assert dry.code == 0, dry.stderr
    assert dry.stdout.startswith("Creating SigLIP collection... (dry run")
    assert dry.value("Collection name") == "image_assets_siglip" and dry.value("Embedding dimension") == "32"
    assert dry.value("Local path") == str(index_dir)
    assert "would be created" in dry.stdout and not index_dir.exists()  # nothing written

    made = run("create")
    assert made.code == 0, made.stderr
    assert "\u2713 Collection 'image_assets_siglip' created successfully" in made.stdout
    lines = made.stdout.splitlines()
    details = lines[lines.index("Collection details:") + 1:]
    assert [ln.split(":")[0].strip() + ":" for ln in details[:5]] == SEED_LABELS  # the seed's lines, its order
    assert made.value("Status") == "green" and made.value("Points") == "0" and made.value("Vector size") == "32"
    assert made.value("Distance") == "COSINE" and made.value("Quantization enabled") == "False"
    assert made.value("Index").startswith("exact (below the ANN threshold of 20,000 points; qdrant_edge HNSW m 16")
    with Catalog.in_dir(index_dir, readonly=True) as catalog:
        row = catalog.get_model(str(models.siglip))
        assert row is not None and row.dim == 32 and row.family == "siglip" and row.logit_bias is not None
        assert catalog.embedding_counts().get(row.id, 0) == 0
    generation = read_current(index_dir / "vectors" / f"model-{row.id}")
    assert generation is not None and generation.count == 0 and generation.backend == "exact"

    again = run("create")
    assert again.code == 0 and "already exists (nothing changed)" in again.stdout
    assert "created successfully" not in again.stdout
    assert read_current(index_dir / "vectors" / f"model-{row.id}") == generation  # nothing rewritten
    as_json = json.loads(run("create", "--json").stdout)
    assert as_json["action"] == "exists" and as_json["details"]["points"] == 0 and as_json["dim"] == 32


def test_check_follows_the_rollout_source_until_complete(run: Run, env: dict[str, str], models: Models,
                                                          tmp_path: Path) -> None:
    index_dir = Path(env["IMG_SEARCH_INDEX_DIR"])
    photos = make_photos(tmp_path / "photos")
    models.index(photos, index_dir, "clip")
    assert run("create").code == 0
    empty = run("check")
    assert empty.code == 0, empty.stderr
    assert empty.stdout.startswith("Checking SigLIP collection...")
    assert empty.value("Points") == "0"
    assert empty.value("Complete").startswith("no (collection 'image_assets_siglip' is empty; searches the rollout "
                                              "sends to it go to 'image_assets'")
    clip = json.loads(run("check", "image_assets", "--json").stdout)
    assert clip["points"] == 12 and clip["role"] == "clip" and clip["source"] is None and clip["status"] == "green"

    models.index(photos, index_dir, "siglip")  # what the re-embedding does, through `index`
    full = json.loads(run("check", "--json").stdout)
    assert full["points"] == 12 and full["complete"] is True and full["source"] == {"name": "image_assets",
                                                                                   "points": 12}
    assert full["status"] == "green" and full["pending"] == 0 and full["index"]["kind"] == "exact"
    assert run("check").value("Complete") == "yes"


def test_check_reports_the_ann_index_in_use(run: Run, env: dict[str, str], models: Models, tmp_path: Path) -> None:
    index_dir = Path(env["IMG_SEARCH_INDEX_DIR"])
    models.index(make_photos(tmp_path / "photos"), index_dir, "siglip")
    # 12 points over a threshold of 5: the ANN backend, with parameters read from the settings, not assumed
    ann = {"IMG_SEARCH_SEARCH__ANN_THRESHOLD": "5", "IMG_SEARCH_SEARCH__PARAMS__QDRANT_EDGE__M": "24"}
    res = run("check", **ann)
    assert res.code == 0, res.stderr
    assert res.value("HNSW m") == "24" and res.value("HNSW ef_construct") == "100"
    assert res.value("Index") == "qdrant_edge (HNSW)" and res.value("Quantization enabled") == "True (int8)"
    # the saved index is the exact one `index` wrote below the default threshold: searches build the HNSW in memory
    assert res.value("Status") == "yellow" and "12 points not saved in it yet" in res.value("Saved index")
    hnswlib = json.loads(run("check", "--json", IMG_SEARCH_SEARCH__ANN_BACKEND="hnswlib", **ann).stdout)
    assert hnswlib["index"] == {**hnswlib["index"], "kind": "hnsw", "backend": "hnswlib", "m": 16, "ef_construct": 100}
    assert hnswlib["quantization_enabled"] is False


def test_dimension_that_differs_from_the_settings(run: Run, env: dict[str, str], models: Models,
                                                  tmp_path: Path) -> None:
    index_dir = Path(env["IMG_SEARCH_INDEX_DIR"])
    refused = run("create", SIGLIP_EMBEDDING_DIM="768")
    assert refused.code == 1
    assert "gives 32-dim vectors but the settings say 768" in refused.error_line()
    assert not (index_dir / "catalog.sqlite3").exists()
    models.index(make_photos(tmp_path / "photos"), index_dir, "siglip")
    check = run("check", SIGLIP_EMBEDDING_DIM="768")
    assert check.code == 1 and "the service does not serve this collection" in check.value("Problem")
    assert "does not serve" in check.error_line()
    exists = run("create", SIGLIP_EMBEDDING_DIM="768")
    assert exists.code == 1 and "already exists with 32-d vectors, not the 768" in exists.error_line()


@pytest.mark.parametrize(("args", "extra", "code", "says"), [
    (("create", "nope"), {}, 2, "unknown collection 'nope'; valid: image_assets (CLIP"),
    (("check", "model-7"), {}, 2, "unknown collection 'model-7'"),
    (("check",), {}, 1, "collection 'image_assets_siglip'"),
    (("check", "image_assets"), {}, 1, "create it with `img-search collection create image_assets`"),
    (("create",), {"SIGLIP_EMBEDDING_DIM": "abc"}, 2, "SIGLIP_EMBEDDING_DIM"),
    (("create",), {"SIGLIP_MODEL_NAME": "ViT-Q-99"}, 2, "no transformers checkpoint is known for the open_clip"),
    (("check",), {"QDRANT_URL": "http://127.0.0.1:6333", "IMG_SEARCH_SEARCH__PARAMS__QDRANT__PATH": "/tmp/x"}, 2,
     "both url (QDRANT_URL) and path"),
])
def test_bad_input_is_one_line(run: Run, args: tuple[str, ...], extra: dict[str, str], code: int,
                               says: str) -> None:
    res = run(*args, **extra)
    assert res.code == code and says in res.error_line() and res.stdout == ""


def test_a_model_that_cannot_be_loaded_points_at_the_setting_that_names_it(run: Run, tmp_path: Path) -> None:
    """`collection create` has no --model and ignores IMG_SEARCH_MODEL: its error for a Hub id that is not cached
    must say where its model is set (service.siglip_model / SIGLIP_MODEL_NAME), not 'pass --model DIR (or
    IMG_SEARCH_MODEL=DIR)'."""
    res = run("create", SIGLIP_MODEL_NAME="google/siglip-base-patch16-224", SIGLIP_EMBEDDING_DIM="768",
              HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-home"), IMG_SEARCH_MODEL=str(tmp_path / "x"))
    line = res.error_line()
    assert res.code == 1 and "could not load model 'google/siglip-base-patch16-224'" in line, res.stderr
    assert "--model" not in line and "IMG_SEARCH_MODEL" not in line, line
    assert "IMG_SEARCH_SERVICE__SIGLIP_MODEL=DIR" in line and "SIGLIP_MODEL_NAME=DIR" in line, line
    assert not (tmp_path / "index").exists() or not any((tmp_path / "index").iterdir())


def test_qdrant_local_mode(run: Run, tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    where = {"IMG_SEARCH_SEARCH__PARAMS__QDRANT__PATH": str(tmp_path / "qdrant"), "SIGLIP_EMBEDDING_DIM": "768"}
    dry = run("create", "--dry-run", **where)
    assert dry.code == 0 and "would be created" in dry.stdout and not (tmp_path / "qdrant").exists()
    made = run("create", **where)
    assert made.code == 0, made.stderr
    assert made.value("Qdrant local path (qdrant-client's local mode)") == str(tmp_path / "qdrant")
    assert "created successfully" in made.stdout and made.value("Vector size") == "768"
    assert made.value("Distance") == "COSINE" and made.value("Status") == "green" and made.value("Points") == "0"
    assert made.value("Index") == "exact (qdrant-client local mode)"  # local mode keeps no HNSW / quantization
    assert run("create", **where).stdout.count("already exists") == 1
    conflict = run("create", **{**where, "SIGLIP_EMBEDDING_DIM": "512"})
    assert conflict.code == 1 and "already exists with 768-d vectors, not the 512" in conflict.error_line()
    # a CLIP collection with 3 points: the SigLIP one is reported incomplete against it
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    client.create_collection("image_assets",
                             vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.upsert("image_assets", points=models.Batch(ids=[1, 2, 3], vectors=[[1.0, 0, 0, 0]] * 3))
    client.close()
    report = json.loads(run("check", "--json", **where).stdout)
    assert report["target"] == "qdrant" and report["complete"] is False and report["source"]["points"] == 3
    assert report["reason"] == "collection 'image_assets_siglip' is empty"
    missing = run("check", **{**where, "IMG_SEARCH_SEARCH__PARAMS__QDRANT__PATH": str(tmp_path / "none")})
    assert missing.code == 1 and "does not exist" in missing.error_line() and not (tmp_path / "none").exists()


def test_qdrant_url_that_does_not_answer(run: Run) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = run("check", QDRANT_URL=f"http://127.0.0.1:{port}")
    assert res.code == 1 and f"Qdrant at http://127.0.0.1:{port} did not answer" in res.error_line()


def test_script_is_the_cli(env: dict[str, str], run: Run, tmp_path: Path) -> None:
    full = {**os.environ, **env, "IMG_SEARCH_SEARCH__PARAMS__QDRANT__PATH": str(tmp_path / "q"),
            "SIGLIP_EMBEDDING_DIM": "768"}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=full,
                              timeout=300)

    both = script("--dry-run", "--check")
    assert both.returncode == 2 and both.stderr.count("\n") == 1
    assert both.stderr.startswith("error: argument --check: not allowed with argument --dry-run")
    assert script("--check").returncode == 1
    made = script()
    assert made.returncode == 0 and "\u2713 Collection 'image_assets_siglip' created successfully" in made.stdout
    checked = script("--check")
    assert checked.returncode == 0
    same = run("check", IMG_SEARCH_SEARCH__PARAMS__QDRANT__PATH=str(tmp_path / "q"), SIGLIP_EMBEDDING_DIM="768")
    assert checked.stdout == same.stdout
