"""``--embedding_type`` names -> checkpoints: a registry, so a new type is one ``EMBEDDING_TYPES.add`` line."""

from __future__ import annotations

import re
from dataclasses import dataclass

from img_search.registry import Registry


@dataclass(frozen=True)
class EmbeddingType:
    """One embedding type: its name (the tables' prefix), the default checkpoint, and the ``embedding.ENCODERS`` name
    that loads it (``--model`` replaces the checkpoint, never the encoder family)."""

    name: str
    checkpoint: str
    encoder: str


EMBEDDING_TYPES: Registry[EmbeddingType] = Registry("embedding type")
# Crossfilter's own SIGLIP2 loads google/siglip-so400m-patch14-384, a SigLIP (1) checkpoint despite the name; ours is
# a SigLIP 2 checkpoint (https://huggingface.co/google/siglip2-base-patch16-224, 768-d), as the name says.
for _t in (
    EmbeddingType("SIGLIP2", "google/siglip2-base-patch16-224", "siglip2"),
    EmbeddingType("SIGLIP2_SO400M", "google/siglip2-so400m-patch14-384", "siglip2"),
    EmbeddingType("SIGLIP", "google/siglip-base-patch16-224", "siglip"),
    EmbeddingType("CLIP", "openai/clip-vit-base-patch32", "clip"),
):
    EMBEDDING_TYPES.add(_t.name, _t)

DEFAULT_EMBEDDING_TYPE = "SIGLIP2"
_IDENTIFIER = re.compile(r"^[A-Z][A-Z0-9_]*$")


def get_embedding_type(name: str) -> EmbeddingType:
    """The registered type called ``name`` (case-insensitive); ``UnknownNameError`` lists the valid ones."""
    return EMBEDDING_TYPES.get(name.strip().upper())


def is_table_prefix(name: str) -> bool:
    """Whether ``name`` is safe to splice into a table name (upper-case letters, digits, underscores)."""
    return bool(_IDENTIFIER.match(name))
