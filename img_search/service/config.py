"""The service's settings: ``settings.load_settings`` plus the seed's environment variables as aliases.

Seed 002 configured its service with ``USE_SIGLIP``, ``SIGLIP_ROLLOUT_PERCENTAGE``, ``SIGLIP_COLLECTION``,
``SIGLIP_MODEL_NAME``, ``SIGLIP_PRETRAINED``, ``SIGLIP_EMBEDDING_DIM``, ``GPU_BATCH_SIZE``, ``DEVICE``, (its RQ
jobs) ``REDIS_URL`` and (its Qdrant) ``QDRANT_URL``. Each is
accepted as an alias of one of our settings (``SEED_ALIASES``); the setting's own ``IMG_SEARCH_*`` variable wins
when both are set, and a flag (a keyword of ``load_service_settings``) wins over both. Like any environment
variable, an alias beats ``config.toml``. An empty variable counts as unset.

The seed named models the open_clip way (``ViT-B-16-SigLIP`` + ``webli``); img-search runs them through
``transformers``, so ``OPEN_CLIP_CHECKPOINTS`` maps those names to the equivalent Hugging Face checkpoints (the
same published weights: open_clip loads the ``timm/`` copies of Google's and OpenAI's releases). A Hub id or a
local directory given as ``SIGLIP_MODEL_NAME`` is used as it is. The table is reproduced in docs/SERVICE.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from img_search.errors import ConfigError
from img_search.settings import ENV_PREFIX, Settings, load_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A ``transformers`` checkpoint for an open_clip (model name, pretrained tag) pair, and its vector size."""

    hub_id: str
    dim: int


# (open_clip model name, pretrained tag) -> checkpoint. Dimensions from the checkpoints' configs (SigLIP: the
# vision hidden size; CLIP: projection_dim).
OPEN_CLIP_CHECKPOINTS: dict[tuple[str, str], Checkpoint] = {
    ("ViT-B-16-SigLIP", "webli"): Checkpoint("google/siglip-base-patch16-224", 768),
    ("ViT-B-16-SigLIP-256", "webli"): Checkpoint("google/siglip-base-patch16-256", 768),
    ("ViT-B-16-SigLIP-384", "webli"): Checkpoint("google/siglip-base-patch16-384", 768),
    ("ViT-B-16-SigLIP-512", "webli"): Checkpoint("google/siglip-base-patch16-512", 768),
    ("ViT-B-16-SigLIP-i18n-256", "webli"): Checkpoint("google/siglip-base-patch16-256-multilingual", 768),
    ("ViT-L-16-SigLIP-256", "webli"): Checkpoint("google/siglip-large-patch16-256", 1024),
    ("ViT-L-16-SigLIP-384", "webli"): Checkpoint("google/siglip-large-patch16-384", 1024),
    ("ViT-SO400M-14-SigLIP", "webli"): Checkpoint("google/siglip-so400m-patch14-224", 1152),
    ("ViT-SO400M-14-SigLIP-384", "webli"): Checkpoint("google/siglip-so400m-patch14-384", 1152),
    ("ViT-B-32", "openai"): Checkpoint("openai/clip-vit-base-patch32", 512),
    ("ViT-B-16", "openai"): Checkpoint("openai/clip-vit-base-patch16", 512),
    ("ViT-L-14", "openai"): Checkpoint("openai/clip-vit-large-patch14", 768),
    ("ViT-L-14-336", "openai"): Checkpoint("openai/clip-vit-large-patch14-336", 768),
}
# the tag open_clip publishes each of these architectures under, used when only the model name is given
_DEFAULT_TAG = {name: tag for name, tag in OPEN_CLIP_CHECKPOINTS}


def resolve_open_clip(model_name: str, pretrained: str | None = None) -> tuple[str, int | None]:
    """``(checkpoint, dim or None)`` for a seed model name: a Hub id or local directory as it is (dim unknown), an
    open_clip name through ``OPEN_CLIP_CHECKPOINTS``. Raises ``ConfigError`` for an open_clip name (or tag) that
    has no ``transformers`` checkpoint here, listing the known ones."""
    name = model_name.strip()
    if "/" in name or os.path.isdir(os.path.expanduser(name)):
        if pretrained:
            logger.info("SIGLIP_PRETRAINED=%s ignored: %s names a checkpoint itself", pretrained, name)
        return name, None
    tag = (pretrained or "").strip() or _DEFAULT_TAG.get(name, "")
    found = OPEN_CLIP_CHECKPOINTS.get((name, tag))
    if found is None:
        known = ", ".join(f"{n} + {t}" for n, t in OPEN_CLIP_CHECKPOINTS)
        raise ConfigError(f"no transformers checkpoint is known for the open_clip model {name!r} + {tag!r}; "
                          f"known: {known}; or give a Hugging Face id or a local checkpoint directory")
    return found.hub_id, found.dim


@dataclass(frozen=True)
class SeedAlias:
    """A seed environment variable and the setting it stands for (a path into ``Settings``)."""

    variable: str
    setting: tuple[str, ...]

    @property
    def own_variable(self) -> str:
        """The setting's own environment variable (``IMG_SEARCH_SERVICE__USE_SIGLIP``), which wins."""
        return ENV_PREFIX + "__".join(self.setting).upper()


SEED_ALIASES: tuple[SeedAlias, ...] = (
    SeedAlias("USE_SIGLIP", ("service", "use_siglip")),
    SeedAlias("SIGLIP_ROLLOUT_PERCENTAGE", ("service", "siglip_rollout_percentage")),
    SeedAlias("SIGLIP_COLLECTION", ("service", "siglip_collection")),
    SeedAlias("SIGLIP_MODEL_NAME", ("service", "siglip_model")),  # with SIGLIP_PRETRAINED, through the table
    SeedAlias("SIGLIP_EMBEDDING_DIM", ("service", "siglip_dim")),
    SeedAlias("GPU_BATCH_SIZE", ("batch_size",)),
    SeedAlias("DEVICE", ("device",)),
    SeedAlias("REDIS_URL", ("service", "redis_url")),  # the seed's RQ set-up: jobs go to Redis when set
    # the seed's Qdrant: `collection create|check` work on it when set (service/collection_setup.py); also where the
    # `qdrant` search backend connects
    SeedAlias("QDRANT_URL", ("search", "params", "qdrant", "url")),
)
_PRETRAINED = "SIGLIP_PRETRAINED"


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _has(tree: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(tree, Mapping) or tree.get(key) is None:
            return False
        tree = tree[key]
    return True


def seed_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The settings the seed's variables in ``environ`` stand for, as a nested dict for ``load_settings``, and the
    names of the variables used. A variable whose ``IMG_SEARCH_*`` counterpart is set is ignored (logged)."""
    values: dict[str, Any] = {}
    used: list[str] = []
    for alias in SEED_ALIASES:
        raw = environ.get(alias.variable, "").strip()
        if not raw:
            continue
        if environ.get(alias.own_variable, "").strip():
            logger.info("%s ignored: %s is set and wins", alias.variable, alias.own_variable)
            continue
        value: Any = raw
        if alias.variable == "SIGLIP_MODEL_NAME":
            value, dim = resolve_open_clip(raw, environ.get(_PRETRAINED))
            dim_alias = next(a for a in SEED_ALIASES if a.variable == "SIGLIP_EMBEDDING_DIM")
            if dim is not None and not any(environ.get(v, "").strip()
                                           for v in (dim_alias.variable, dim_alias.own_variable)):
                _put(values, dim_alias.setting, dim)  # the table knows the size of the named model
        _put(values, alias.setting, value)
        used.append(alias.variable)
    if environ.get(_PRETRAINED, "").strip() and "SIGLIP_MODEL_NAME" not in used:
        logger.warning("%s is set without SIGLIP_MODEL_NAME; ignored", _PRETRAINED)
    return values, used


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_service_settings(index_dir: str | os.PathLike[str] | None = None, *,
                          environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    """Settings for the service: ``load_settings(index_dir, **flags)`` with the seed's variables from ``environ``
    (default ``os.environ``) as aliases. Precedence: a flag > ``IMG_SEARCH_*`` > a seed variable > config.toml >
    default. ``flags`` follow ``load_settings`` (``None`` means not given; nested ones as dicts,
    ``service={"port": 9000}``). Raises ``ConfigError`` naming the setting (and the seed variables in use)."""
    env = os.environ if environ is None else environ
    seeded, used = seed_overrides(env)
    overrides = _merge(seeded, flags)
    for alias in SEED_ALIASES:
        if alias.variable in used and _has(flags, alias.setting):
            logger.info("%s ignored: the flag for %s wins", alias.variable, ".".join(alias.setting))
    try:
        return load_settings(index_dir, **overrides)
    except ConfigError as exc:
        if not used:
            raise
        names = ", ".join(f"{a.variable} -> {'.'.join(a.setting)}" for a in SEED_ALIASES if a.variable in used)
        raise ConfigError(f"{exc} (seed variables in use: {names})") from None
