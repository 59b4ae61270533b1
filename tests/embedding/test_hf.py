"""Encoders: parity with calling transformers directly, text padding, calibration, clear load errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import pattern
from transformers import AutoModel, AutoProcessor

from img_search.embedding import ENCODERS, load_encoder
from img_search.errors import ModelNotFoundError, UnknownNameError
from img_search.search.calibration import Calibration

TEXTS = ["a dog on the beach", "A Red Car", "two cats in the snow at night near the river", "x"]


def _direct(model_dir: Path, images: list, texts: list[str], family: str) -> tuple[np.ndarray, np.ndarray]:
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    max_len = model.config.text_config.max_position_embeddings
    with torch.no_grad():
        pix = processor.image_processor(images=images, return_tensors="pt")
        img = model.get_image_features(**pix).pooler_output
        if family == "siglip2":
            texts = [t.lower() for t in texts]
        tok = processor.tokenizer(texts, padding="max_length", max_length=max_len, truncation=True,
                                  return_tensors="pt")
        inputs = {"input_ids": tok["input_ids"]}
        if family == "clip":
            inputs["attention_mask"] = tok["attention_mask"]
        txt = model.get_text_features(**inputs).pooler_output
    img = torch.nn.functional.normalize(img, dim=-1).numpy()
    txt = torch.nn.functional.normalize(txt, dim=-1).numpy()
    return img, txt


@pytest.mark.parametrize("family", ["siglip", "siglip2", "clip"])
def test_encoder_matches_transformers(tiny_models: dict[str, Path], family: str) -> None:
    images = [pattern(i, size=(40 + 7 * i, 30 + 5 * i)) for i in range(5)]
    enc = load_encoder(str(tiny_models[family]), device="cpu")
    assert enc.info.family == family
    ref_img, ref_txt = _direct(tiny_models[family], images, TEXTS, family)
    np.testing.assert_allclose(enc.encode_images(images), ref_img, atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(TEXTS), ref_txt, atol=1e-5)
    norms = np.linalg.norm(enc.encode_images(images), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.parametrize("family", ["siglip", "siglip2", "clip"])
def test_text_vector_does_not_depend_on_its_batch(tiny_models: dict[str, Path], family: str) -> None:
    enc = load_encoder(str(tiny_models[family]), device="cpu")
    alone = enc.encode_texts(["a dog"])
    with_long = enc.encode_texts(["a dog", "a very long caption about a striped horse under a tree at sunset"])
    np.testing.assert_allclose(alone[0], with_long[0], atol=1e-6)


def test_siglip_text_is_padded_to_max_length(siglip_encoder) -> None:  # type: ignore[no-untyped-def]
    tok = siglip_encoder.tokenize(["a dog", "a cat"])
    assert set(tok) == {"input_ids"}  # SigLIP was trained without an attention mask over pad tokens
    assert tok["input_ids"].shape == (2, siglip_encoder.text_max_length)


def test_siglip2_lowercases(tiny_models: dict[str, Path]) -> None:
    enc = load_encoder(str(tiny_models["siglip2"]), device="cpu")
    np.testing.assert_allclose(enc.encode_texts(["A RED CAR"]), enc.encode_texts(["a red car"]), atol=1e-6)


def test_calibration_equals_siglip_sigmoid(tiny_siglip: Path) -> None:
    images = [pattern(i) for i in range(4)]
    enc = load_encoder(str(tiny_siglip), device="cpu")
    # give the model non-trivial learned values so the check is not vacuous
    with torch.no_grad():
        enc.model.logit_scale.fill_(1.7)
        enc.model.logit_bias.fill_(-2.5)
    model, processor = enc.model, enc.processor
    with torch.no_grad():
        pix = processor.image_processor(images=images, return_tensors="pt")
        tok = processor.tokenizer(TEXTS, padding="max_length", max_length=enc.text_max_length, truncation=True,
                                  return_tensors="pt")
        expected = torch.sigmoid(model(input_ids=tok["input_ids"], pixel_values=pix["pixel_values"]).logits_per_text)
    cos = enc.encode_texts(TEXTS) @ enc.encode_images(images).T
    calib = Calibration(float(model.logit_scale.detach()), float(model.logit_bias.detach()))
    np.testing.assert_allclose(calib.probability(cos), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(calib.probability(calib.cosine_for(0.3)), 0.3, atol=1e-9)


def test_clip_has_no_calibrated_probability(tiny_models: dict[str, Path]) -> None:
    enc = load_encoder(str(tiny_models["clip"]), device="cpu")
    assert enc.info.logit_bias is None
    assert Calibration.maybe(enc.info.logit_scale, enc.info.logit_bias) is None


def test_offline_hub_id_gives_actionable_error() -> None:
    with pytest.raises(ModelNotFoundError) as err:
        load_encoder("google/siglip-base-patch16-224")
    msg = str(err.value)
    assert "google/siglip-base-patch16-224" in msg and "--model DIR" in msg and "HF_HUB_OFFLINE" in msg


def test_missing_and_incomplete_directories(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_encoder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a loadable checkpoint"):
        load_encoder(str(tmp_path / "empty"))


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="valid names: auto, clip, jina_v4, siglip, siglip2"):
        ENCODERS.get("sigclip")
