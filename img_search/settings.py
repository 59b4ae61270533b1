"""The one settings object of img-search (pydantic-settings): every knob, each default defined once, here.

Precedence, highest first (documented in README "Settings"):

1. a command-line flag (or a keyword given to ``load_settings`` by the service);
2. an ``IMG_SEARCH_*`` environment variable (``IMG_SEARCH_BATCH_SIZE=16``; nested tables with ``__``:
   ``IMG_SEARCH_SEARCH__ANN_BACKEND=hnswlib``; lists and tables as JSON: ``IMG_SEARCH_EXCLUDE='["**/tmp"]'``);
3. ``config.toml`` in the index directory (top-level keys, ``[search]``, ``[search.params.<backend>]``);
4. the defaults below.

The index directory itself comes only from the flag, ``IMG_SEARCH_INDEX_DIR`` or the default
(``$XDG_DATA_HOME/img-search``): it is where ``config.toml`` is looked for. Settings are frozen once loaded and
serialisable (``model_dump``) for worker processes. Invalid values raise ``ConfigError`` (an
``InvalidInputError``) naming the setting, where it came from and what is valid.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from img_search.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_PREFIX = "IMG_SEARCH_"
CONFIG_FILENAME = "config.toml"

DEFAULT_MODEL = "google/siglip-base-patch16-224"
DEFAULT_BATCH_SIZE = 32
# Pillow raises DecompressionBombError above 2 x its MAX_IMAGE_PIXELS (89,478,485): ~179 MP. We keep that bound as
# the default (a 100 MP medium-format photo still indexes) and hand it to Pillow once at start-up.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
# bench/ann_backends.py (docs/PERFORMANCE.md, "Recommendation"): exact search over a memory-mapped matrix answers a
# query over 20k base-size vectors in a few ms; above that the ANN backend wins.
DEFAULT_ANN_THRESHOLD = 20_000
DEVICES_HELP = "auto | cpu | cuda | cuda:N | mps"
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")  # the deprecated --dtype's values
# what the encoder can compute in (embedding.precision resolves ``auto`` per tower)
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
DTYPE_ALIASES: dict[str, str] = {  # the deprecated --dtype value -> its precision
    "auto": "auto", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def default_index_dir() -> Path:
    """``$XDG_DATA_HOME/img-search`` (``~/.local/share/img-search``): the XDG base-directory spec's data home."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "img-search"


class SearchSettings(BaseModel):
    """``[search]``: which vector index answers a collection's queries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: qdrant_edge, falling back to hnswlib where qdrant-edge-py is not installed (search/store.py)
    ann_backend: str | None = None
    ann_threshold: int = Field(DEFAULT_ANN_THRESHOLD, ge=0)
    # backend name -> constructor parameters, merged over the defaults of search/store.py
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("ann_backend", "params")
    @classmethod
    def _known_backends(cls, value: Any) -> Any:
        from img_search.index import BACKENDS

        names = [] if value is None else [value] if isinstance(value, str) else list(value)
        unknown = [n for n in names if n not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown index backend {unknown[0]!r}; valid: {', '.join(sorted(BACKENDS))}")
        if isinstance(value, dict):
            for name, params in value.items():
                _check_backend_params(name, params)
        return value


# set by the collection, never by [search.params.<backend>]
_RESERVED_PARAMS = ("dim", "metric")


def _check_backend_params(backend: str, params: Any) -> None:
    """Refuse a ``[search.params.<backend>]`` key the backend's constructor does not take (``ValueError`` naming it and
    the valid ones), so a typo fails when the settings load, not on the first search or index past
    ``ann_threshold``. The backend's module (and library) is imported only when the table names parameters; a
    backend that is not installed is not checked here (using it says what to install). Values are checked when the
    index is built (``search.store``)."""
    import inspect

    from img_search.index import BackendUnavailableError, resolve_backend

    if not isinstance(params, dict) or not params:
        return
    reserved = [k for k in params if k in _RESERVED_PARAMS]
    if reserved:
        raise ValueError(f"{backend}.{reserved[0]}: set by the collection, not a parameter to configure")
    try:
        cls = resolve_backend(backend)
    except BackendUnavailableError:
        return
    accepted = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    valid = sorted(n for n, p in accepted.items()
                   if n not in ("self", *_RESERVED_PARAMS) and p.kind is not inspect.Parameter.VAR_POSITIONAL)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise ValueError(f"{backend}.{unknown[0]}: not a parameter of the {backend} index; valid: {', '.join(valid)}")


class ExploreSettings(BaseModel):
    """``[explore]``: the map and near-duplicates (img_search/explore/, docs/EXPLORE.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # `map` refits UMAP from scratch once the collection holds more than this many times the images it was fitted
    # on; below that, new images are placed with the fitted model's transform
    map_growth_factor: float = Field(2.0, ge=1.0)
    # cosine at or above which two images are near-duplicates (explore/duplicates.py says why 0.95)
    duplicate_threshold: float = Field(0.95, ge=-1.0, le=1.0)
    # neighbours searched per image by `duplicates`
    duplicate_neighbours: int = Field(10, ge=1, le=1000)


class ServiceSettings(BaseModel):
    """``[service]``: the HTTP service (issue 10); defined here so it shares precedence and validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    COLLECTION_NAME: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Jobs (img_search/jobs, docs/SERVICE.md "Jobs"): RQ over Redis when redis_url is set (also from the seed's
    # REDIS_URL, service/config.py), else one in-process worker thread. queue_name names the RQ queue and prefixes
    # every key the project keeps in Redis.
    redis_url: str | None = None
    queue_name: str = "img-search"
    # POST /api/v1/admin/index indexes only folders inside these (canonical paths; empty: the route refuses all)
    allowed_roots: tuple[str, ...] = ()
    reembed_batch_size: int = Field(100, ge=1, le=10_000)  # images per re-embedding job (seed 002: 100)
    job_timeout_s: int = Field(3600, ge=10)  # RQ's limit on one job (a batch, or one index run of a folder)
    # A running job renews a lease in Redis every job_lease_s / 3; a job whose lease lapsed (its worker was killed)
    # is enqueued again by the sweeper, which runs every sweep_interval_s in each worker and on status requests.
    job_lease_s: float = Field(30.0, gt=0)
    sweep_interval_s: float = Field(10.0, gt=0)
    job_max_attempts: int = Field(3, ge=1)  # a batch failing this often is reported failed, not retried
    # serve --watch: a changed folder is indexed once no event came for watch_debounce_s; where the OS cannot watch
    # (inotify limits) the folder is rescanned every watch_rescan_s instead
    watch_debounce_s: float = Field(2.0, ge=0)
    watch_rescan_s: float = Field(60.0, gt=0)
    # the admin routes (/api/v1/admin/*) need this key in the X-API-Key header; unset: they answer 404 (disabled)
    api_key: SecretStr | None = None
    # One collection per model (seed 002): the CLIP collection in service and the SigLIP one replacing it. Names,
    # models and dimensions are the seed's; its open_clip names map to these checkpoints (service/config.py).
    clip_collection: str = "image_assets"
    clip_model: str = "openai/clip-vit-base-patch32"  # open_clip ViT-B-32 + openai
    clip_dim: int = Field(512, ge=1)
    siglip_collection: str = "image_assets_siglip"
    siglip_model: str = DEFAULT_MODEL  # open_clip ViT-B-16-SigLIP + webli
    siglip_dim: int = Field(768, ge=1)
    # the share of searches routed to SigLIP at start-up (the admin route changes it at run time);
    # use_siglip is the seed's "full SigLIP mode": the same as 100
    use_siglip: bool = False
    siglip_rollout_percentage: float = Field(0.0, ge=0.0, le=100.0)
    # largest accepted POST /api/v1/search/image request body (the file plus its multipart framing): 20 MiB
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    thumbnail_size: int = Field(256, ge=16, le=4096)  # longest side of a thumbnail, pixels
    # load every collection's model at start-up (a first text query then answers at full speed)
    preload_models: bool = True

    @field_validator("clip_collection", "siglip_collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        if not cls.COLLECTION_NAME.match(value):
            raise ValueError(f"collection names are 1-64 letters, digits, '_', '-' or '.' (got {value!r})")
        return value

    @field_validator("clip_model", "siglip_model")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the model name is empty")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix:// (got {value!r})")
        return value

    @field_validator("queue_name")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not cls.COLLECTION_NAME.match(value):
            raise ValueError(f"queue names are 1-64 letters, digits, '_', '-' or '.' (got {value!r})")
        return value

    @field_validator("allowed_roots")
    @classmethod
    def _allowed_roots(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        roots = tuple(os.path.expanduser(str(v)) for v in value)
        relative = [r for r in roots if not os.path.isabs(r)]
        if relative:
            raise ValueError(f"allowed_roots must be absolute paths (got {relative[0]!r})")
        return roots

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None or not value.get_secret_value() else value

    @model_validator(mode="after")
    def _distinct(self) -> ServiceSettings:
        if self.clip_collection == self.siglip_collection:
            raise ValueError(f"clip_collection and siglip_collection are both {self.clip_collection!r}")
        return self


class Settings(BaseSettings):
    """Every setting of img-search; build it with ``load_settings``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_ignore_empty=True, extra="forbid", frozen=True,
        validate_default=True,
    )
    toml_file: ClassVar[Path | None] = None  # set on a per-call subclass by load_settings

    index_dir: Path = Field(default_factory=default_index_dir)
    # None: `index` uses DEFAULT_MODEL; `search`/`similar` the model the catalog holds most images of
    model: str | None = None
    device: str = "auto"
    # per tower, how the model computes: auto | fp32 | bf16 | fp16 | int8 (embedding/precision.py; `auto` is the
    # fastest the CPU supports whose parity check passes)
    precision: str = "auto"
    # deprecated spelling of precision (auto | float32 | float16 | bfloat16); used only when precision is not set
    dtype: str | None = None
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    # None: one per core, 1 to 4 (pipeline/runner.default_workers)
    workers: int | None = Field(None, ge=0)
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    # `index` decodes JPEGs in full instead of at a reduced libjpeg scale (data/images.py "decode modes"; a
    # collection keeps the mode its vectors were computed with: switching needs --recompute)
    full_decode: bool = False
    include_hidden: bool = False
    # globs matched against the path relative to the indexed folder (`**` allowed), on top of the default list
    exclude: tuple[str, ...] = ()
    default_excludes: bool = True
    # `index` also reads the text in each picture (data/ocr.py; the `ocr` extra: pip install 'img-search[ocr]')
    ocr: bool = False
    # URL of a running `img-search serve`; when set, `search` / `similar` ask it instead of loading a model
    server: str | None = None
    search: SearchSettings = Field(default_factory=SearchSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    explore: ExploreSettings = Field(default_factory=ExploreSettings)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError(f"unknown device {value!r}; valid: {DEVICES_HELP}")
        return value

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; valid: {', '.join(DTYPES)} (deprecated: use precision)")
        return value

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        if value not in PRECISIONS:
            raise ValueError(f"unknown precision {value!r}; valid: {', '.join(PRECISIONS)}")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the model name is empty")
        return value

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        """An ``http://`` or ``https://`` URL with a host (``http://127.0.0.1:8000``); blank means unset."""
        if value is None or not value.strip():
            return None
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number or out of range
        except ValueError as exc:
            raise ValueError(f"not a valid server URL ({exc}); expected e.g. http://127.0.0.1:8000") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("the server URL needs http:// or https:// and a host, e.g. http://127.0.0.1:8000")
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_file))
        return tuple(sources)


DEFAULTS = Settings.model_construct()  # the defaults, for help texts (no environment, no file)


def resolve_index_dir(index_dir: str | os.PathLike[str] | None = None) -> Path:
    """The index directory: the given one, else ``IMG_SEARCH_INDEX_DIR``, else ``default_index_dir()``.

    It need not exist yet (``index`` creates it), but raises ``ConfigError`` when it, or the nearest of its parents
    that exists, is a file rather than a directory.
    """
    chosen = index_dir if index_dir is not None else os.environ.get(ENV_PREFIX + "INDEX_DIR") or None
    if chosen is None:
        return _not_a_file(default_index_dir())
    text = os.fspath(chosen)
    if not str(text).strip():
        raise ConfigError("the index directory is empty: pass --index-dir PATH or unset IMG_SEARCH_INDEX_DIR")
    return _not_a_file(Path(os.path.expanduser(text)))


def _not_a_file(directory: Path) -> Path:
    """``directory``, or ``ConfigError`` if it (or its nearest existing parent) exists and is not a directory."""
    for path in (directory, *directory.parents):
        try:
            if path.is_dir():
                return directory
            if not os.path.lexists(path):
                continue
        except OSError:  # unreadable or too long: left to the command that opens it, which names the cause
            return directory
        what = "the index directory" if path == directory else f"the index directory {directory}: its parent"
        kind = "a file" if path.is_file() else "a broken symlink" if path.is_symlink() else "a special file"
        raise ConfigError(f"{what} {path} is {kind}, not a directory: give a directory as --index-dir "
                          f"(or {ENV_PREFIX}INDEX_DIR)")
    return directory


def _describe(errors: list[Any], toml: Path) -> str:
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown setting"
        value = err.get("input")
        quiet = isinstance(value, dict) or err.get("type") == "extra_forbidden" or "(got " in msg  # said already
        shown = "" if quiet else f" (got {value!r})"
        parts.append(f"{where}: {msg}{shown}")
    return f"invalid settings (flags, {ENV_PREFIX}* variables or {toml}): " + "; ".join(parts)


def _describe_unparsable(exc: SettingsError, toml: Path) -> str:
    """One line for pydantic-settings' ``SettingsError``: an ``IMG_SEARCH_*`` list or table that is not JSON.

    pydantic-settings names only the top-level field (``error parsing value for field "search" from source
    "EnvSettingsSource"``); the variables set for it are looked up in the environment to name them.
    """
    found = re.search(r'field "([^"]+)"', str(exc))
    field = found.group(1) if found else "settings"
    prefix = (ENV_PREFIX + field).upper()
    names = sorted(k for k in os.environ if k.upper() == prefix or k.upper().startswith(prefix + "__"))
    cause = exc.__cause__ or exc.__context__
    detail = f" ({cause})" if cause is not None else ""
    shown = " or ".join(names) or prefix
    return (f"invalid settings (flags, {ENV_PREFIX}* variables or {toml}): {field}: {shown} is not valid JSON"
            f"{detail}; lists and tables are given as JSON, e.g. {ENV_PREFIX}EXCLUDE='[\"**/tmp\"]'")


def load_settings(index_dir: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Settings for one command or one service process.

    ``overrides`` are the flags the user gave (``None`` values are ignored, so a CLI passes every option as is);
    nested ones as dicts (``search={"ann_backend": "exact"}``). Raises ``ConfigError`` for a malformed
    ``config.toml``, an ``IMG_SEARCH_*`` list or table that is not JSON, or any invalid value, naming the setting.
    """
    directory = resolve_index_dir(index_dir)
    toml = directory / CONFIG_FILENAME
    given = {k: v for k, v in overrides.items() if v is not None}
    if toml.exists():
        try:
            tomllib.loads(toml.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{toml} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {toml}: {exc.strerror or exc}") from None
    bound = type("BoundSettings", (Settings,), {"toml_file": toml if toml.exists() else None})
    try:
        settings = bound(index_dir=directory, **given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors(), toml)) from None
    except SettingsError as exc:  # a list or table variable that is not JSON (pydantic-settings parses it first)
        raise ConfigError(_describe_unparsable(exc, toml)) from None
    values = {name: getattr(settings, name) for name in Settings.model_fields}
    if values["dtype"] is not None and "precision" not in settings.model_fields_set:
        logger.warning("--dtype / dtype is deprecated: use --precision (%s -> %s)", values["dtype"],
                       DTYPE_ALIASES[values["dtype"]])
        values["precision"] = DTYPE_ALIASES[values["dtype"]]
    # hand back the plain class: picklable for worker processes, no file path baked into its type
    return Settings.model_construct(**values)
