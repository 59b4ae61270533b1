"""Encoders and their registry: a name -> loader map; ``load_encoder`` picks the family from the checkpoint.

Kept import-light: torch and transformers load only when an encoder is actually built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from img_search.embedding.base import Encoder, ModelInfo
from img_search.embedding.onnx_export import default_cache_dir, prepare_runtime
from img_search.embedding.parity import PARITY_MIN_COSINE, ParityResult, check_parity
from img_search.embedding.precision import PRECISIONS, TowerChoice, cpu_features, resolve_precision
from img_search.embedding.text_light import load_text_encoder
from img_search.registry import Registry
from img_search.settings import DEFAULT_MODEL

EncoderFactory = Callable[..., Encoder]
ENCODERS: Registry[EncoderFactory] = Registry("encoder")


def _hf_factory(family: str | None) -> EncoderFactory:
    def factory(model: str, **kwargs: Any) -> Encoder:
        from img_search.embedding.hf import load_hf_encoder

        return load_hf_encoder(model, family=family, **kwargs)

    return factory


ENCODERS.add("auto", _hf_factory(None))
for _family in ("siglip", "siglip2", "clip"):
    ENCODERS.add(_family, _hf_factory(_family))


def _jina_v4_factory(model: str, **kwargs: Any) -> Encoder:
    from img_search.embedding.jina_v4 import load_jina_v4

    return load_jina_v4(model, **kwargs)


# Jina v4 runs its own code from the Hub (trust_remote_code); it is never auto-detected, only named
ENCODERS.add("jina_v4", _jina_v4_factory)


def load_encoder(model: str = DEFAULT_MODEL, *, encoder: str = "auto", **kwargs: Any) -> Encoder:
    """Load ``model`` (Hub id or local dir) with the named encoder ("auto" detects the family).

    ``kwargs`` go to the family's loader; for SigLIP / SigLIP 2 / CLIP (``hf.load_hf_encoder``): ``device``,
    ``precision`` / ``image_precision`` / ``text_precision`` (auto | fp32 | bf16 | fp16 | int8), ``runtime``,
    ``cache_dir``, ``allow_export`` (and the deprecated ``dtype``)."""
    return ENCODERS.get(encoder)(model, **kwargs)


def encoder_choices(encoder: Encoder) -> dict[str, TowerChoice]:
    """What each tower of ``encoder`` runs with (precision, runtime); float32 torch for encoders without
    precisions (Jina v4). Builds the towers (exporting graphs where the encoder allows it)."""
    choices = getattr(encoder, "choices", None)
    if choices is None:
        return {tower: TowerChoice(tower, "fp32", "torch") for tower in ("image", "text")}
    return dict(choices)


__all__ = ["DEFAULT_MODEL", "ENCODERS", "PARITY_MIN_COSINE", "PRECISIONS", "Encoder", "ModelInfo", "ParityResult",
           "TowerChoice", "check_parity", "cpu_features", "default_cache_dir", "encoder_choices", "load_encoder",
           "load_text_encoder", "prepare_runtime", "resolve_precision"]
