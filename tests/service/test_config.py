"""service/config.py: the seed's environment variables as aliases (IMG_SEARCH_* wins, a flag wins over both), and
the open_clip -> transformers checkpoint table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from img_search.errors import ConfigError
from img_search.service.config import OPEN_CLIP_CHECKPOINTS, SEED_ALIASES, load_service_settings, resolve_open_clip
from img_search.settings import DEFAULTS

SEED_VARS = [a.variable for a in SEED_ALIASES] + ["SIGLIP_PRETRAINED"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("IMG_SEARCH_") or name in SEED_VARS:
            monkeypatch.delenv(name)


def test_defaults_are_the_seeds(tmp_path: Path) -> None:
    svc = load_service_settings(tmp_path).service
    assert (svc.clip_collection, svc.clip_dim, svc.siglip_collection, svc.siglip_dim) == (
        "image_assets", 512, "image_assets_siglip", 768)
    assert svc.siglip_model == "google/siglip-base-patch16-224" == OPEN_CLIP_CHECKPOINTS[
        ("ViT-B-16-SigLIP", "webli")].hub_id
    assert svc.clip_model == OPEN_CLIP_CHECKPOINTS[("ViT-B-32", "openai")].hub_id
    assert (svc.use_siglip, svc.siglip_rollout_percentage, svc.api_key) == (False, 0.0, None)


def test_seed_variables_are_aliases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"USE_SIGLIP": "true", "SIGLIP_ROLLOUT_PERCENTAGE": "10", "SIGLIP_COLLECTION": "siglip_v2",
                        "SIGLIP_MODEL_NAME": "ViT-SO400M-14-SigLIP-384", "SIGLIP_PRETRAINED": "webli",
                        "GPU_BATCH_SIZE": "8", "DEVICE": "cpu"}.items():
        monkeypatch.setenv(name, value)
    s = load_service_settings(tmp_path)
    assert (s.service.use_siglip, s.service.siglip_rollout_percentage, s.service.siglip_collection) == (
        True, 10.0, "siglip_v2")
    # the table knows the model's size: SIGLIP_EMBEDDING_DIM need not be repeated
    assert (s.service.siglip_model, s.service.siglip_dim) == ("google/siglip-so400m-patch14-384", 1152)
    assert (s.batch_size, s.device) == (8, "cpu")
    monkeypatch.setenv("SIGLIP_EMBEDDING_DIM", "1000")
    assert load_service_settings(tmp_path).service.siglip_dim == 1000


def test_own_names_win_over_seed_names_and_flags_over_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text("batch_size = 2\n[service]\nsiglip_rollout_percentage = 1\n")
    assert load_service_settings(tmp_path).service.siglip_rollout_percentage == 1  # the file, nothing else set
    monkeypatch.setenv("SIGLIP_ROLLOUT_PERCENTAGE", "20")
    monkeypatch.setenv("GPU_BATCH_SIZE", "16")
    s = load_service_settings(tmp_path)
    assert (s.service.siglip_rollout_percentage, s.batch_size) == (20, 16)  # an alias is an env var: beats the file
    monkeypatch.setenv("IMG_SEARCH_SERVICE__SIGLIP_ROLLOUT_PERCENTAGE", "30")
    monkeypatch.setenv("IMG_SEARCH_BATCH_SIZE", "4")
    s = load_service_settings(tmp_path)
    assert (s.service.siglip_rollout_percentage, s.batch_size) == (30, 4)
    s = load_service_settings(tmp_path, batch_size=1, service={"siglip_rollout_percentage": 40, "port": 9001})
    assert (s.service.siglip_rollout_percentage, s.batch_size, s.service.port) == (40, 1, 9001)
    monkeypatch.setenv("IMG_SEARCH_SERVICE__SIGLIP_ROLLOUT_PERCENTAGE", "")  # empty counts as unset
    assert load_service_settings(tmp_path).service.siglip_rollout_percentage == 20


def test_bad_seed_values_name_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGLIP_ROLLOUT_PERCENTAGE", "150")
    with pytest.raises(ConfigError, match=r"service\.siglip_rollout_percentage.*SIGLIP_ROLLOUT_PERCENTAGE"):
        load_service_settings(tmp_path)
    monkeypatch.delenv("SIGLIP_ROLLOUT_PERCENTAGE")
    monkeypatch.setenv("SIGLIP_MODEL_NAME", "ViT-H-99-Imaginary")
    with pytest.raises(ConfigError, match=r"no transformers checkpoint.*ViT-B-16-SigLIP"):
        load_service_settings(tmp_path)
    monkeypatch.setenv("SIGLIP_MODEL_NAME", "ViT-B-16-SigLIP")
    monkeypatch.setenv("SIGLIP_PRETRAINED", "laion2b")
    with pytest.raises(ConfigError, match="'laion2b'"):
        load_service_settings(tmp_path)


def test_hub_ids_and_local_checkpoints_pass_through(tmp_path: Path) -> None:
    assert resolve_open_clip("google/siglip2-base-patch16-224", "webli") == ("google/siglip2-base-patch16-224", None)
    assert resolve_open_clip(str(tmp_path)) == (str(tmp_path), None)
    assert resolve_open_clip("ViT-L-14") == ("openai/clip-vit-large-patch14", 768)  # the tag defaults per model


def test_service_settings_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both 'x'"):
        load_service_settings(tmp_path, service={"clip_collection": "x", "siglip_collection": "x"})
    with pytest.raises(ConfigError, match="collection names"):
        load_service_settings(tmp_path, service={"siglip_collection": "../etc"})
    assert load_service_settings(tmp_path, service={"api_key": ""}).service.api_key is None
    assert DEFAULTS.service.max_upload_bytes == 20 * 1024 * 1024
