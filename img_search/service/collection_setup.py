"""``img-search collection create|check`` and ``scripts/create_siglip_collection.py``: seed 002's collection set-up.

The seed created an empty Qdrant collection for SigLIP (``image_assets_siglip``: 768-d, COSINE, INT8 scalar
quantization, HNSW ``m=16`` / ``ef_construct=100``) before re-embedding into it, and checked it with ``--check``.
Here a collection is one model's vectors, kept in one of two *targets* (registry ``TARGETS``):

* ``embedded`` (the default): the index directory, i.e. the catalog's model row plus the model's saved search
  index (``vectors/model-<id>/``, ``search.store``). *Create* loads the model once to record what the catalog
  needs of it (family, dimension, learned logit scale and bias; the dimension must equal the settings'
  ``service.siglip_dim`` / ``clip_dim``), registers it under the writer lock and saves its (empty) index; the
  re-embedding jobs then fill it. *Check* reads the catalog and the saved generation only: points (live images with
  a vector of the model), and the index a search uses at that size: ``exact`` below ``search.ann_threshold``, else
  the ANN backend with its HNSW ``m`` / ``ef_construct`` and quantization (``search.store.choose_backend`` /
  ``backend_params``, merged over the backend's own defaults). Status ``green``: the saved index holds exactly the
  catalog's vectors; ``yellow``: the catalog holds vectors the saved index does not yet (searches add them in
  memory; the next ``index`` run or the re-embedding's last job saves them).
* ``qdrant``: a Qdrant named by ``search.params.qdrant.url`` (the seed's ``QDRANT_URL``,
  ``service.config.SEED_ALIASES``) or, for trials and tests, qdrant-client's local mode in a folder
  (``search.params.qdrant.path``). The collection is created with the ``qdrant`` backend's own settings
  (``index.qdrant_index.QdrantIndex``: the seed's), and checked with ``get_collection``. The network path is
  unverified here: no Qdrant server runs on the project's machines.

Errors are the library's kinds: an unknown collection name or conflicting settings is ``InvalidInputError``, a
missing collection ``NotFoundError``, a dimension that differs from the settings ``DimensionMismatchError``, a
Qdrant that does not answer ``UnavailableError``.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from img_search.embedding.base import ModelInfo
from img_search.errors import (
    CatalogNotFoundError,
    DimensionMismatchError,
    ImgSearchError,
    InvalidInputError,
    ModelNotFoundError,
    NotFoundError,
    UnavailableError,
)
from img_search.service.rollout import Side, incomplete_reason
from img_search.settings import Settings

logger = logging.getLogger(__name__)

Role = Literal["clip", "siglip"]
ROLE_LABELS: dict[str, str] = {"siglip": "SigLIP", "clip": "CLIP"}
DISTANCE = "COSINE"  # every collection of the embedded store is searched by cosine (search.store builds "cosine")
ModelInfoLoader = Callable[[str], ModelInfo]

# backend -> (its HNSW "m" parameter, its construction-time "ef" parameter): the names differ per library
HNSW_PARAMETERS: dict[str, tuple[str, str]] = {
    "qdrant_edge": ("m", "ef_construct"),
    "qdrant": ("m", "ef_construct"),
    "hnswlib": ("M", "ef_construction"),
    "faiss": ("M", "ef_construction"),  # with method="hnsw" (the default); IVF methods have no graph
    "usearch": ("M", "expansion_add"),
}


def _no_quantization(params: dict[str, Any]) -> str | None:
    return None


# backend -> its quantization (None: full float32 vectors), read from its effective parameters
QUANTIZATION: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "exact": _no_quantization,
    "hnswlib": _no_quantization,
    "qdrant_edge": lambda p: p.get("quantization"),
    "qdrant": lambda p: p.get("quantization"),
    "faiss": lambda p: "pq" if p.get("method") == "ivf_pq" else None,
    "usearch": lambda p: None if p.get("dtype", "f32") == "f32" else str(p["dtype"]),
    "scann": lambda p: "anisotropic",
}


@dataclass(frozen=True)
class CollectionSpec:
    """A collection the settings name: its name, role (clip / siglip; None for another indexed model), the model
    whose vectors it holds (canonical name, as the catalog records it) and the dimension the settings expect."""

    name: str
    role: Role | None
    model: str
    dim: int | None

    @property
    def label(self) -> str:
        """"SigLIP" / "CLIP" (the seed's wording), else empty."""
        return ROLE_LABELS.get(self.role or "", "")


@dataclass
class IndexInfo:
    """The search index a collection uses at its current size."""

    kind: str  # "exact" or "hnsw" (or another backend's name: scann)
    backend: str
    m: int | None = None
    ef_construct: int | None = None
    ann_threshold: int | None = None  # embedded: below this many points, exact
    ann_backend: str | None = None  # embedded: the backend from ann_threshold on
    note: str | None = None


@dataclass
class CollectionReport:
    """What ``check`` finds (and ``create`` prints after creating): the seed's "Collection details" and more."""

    name: str
    role: str | None
    model: str | None
    target: str
    location: str
    location_label: str
    status: str
    points: int
    vector_size: int | None
    distance: str | None
    quantization: str | None
    index: IndexInfo
    saved_index: str | None = None  # embedded: the saved generation CURRENT names
    pending: int = 0  # embedded: points the saved index does not hold yet
    source: dict[str, Any] | None = None  # {"name", "points"} of the collection this one re-embeds (CLIP)
    complete: bool | None = None
    reason: str | None = None  # why it is not complete
    problem: str | None = None  # why the service cannot serve it (dimension differs from the settings)
    warnings: list[str] = field(default_factory=list)

    @property
    def quantization_enabled(self) -> bool:
        return self.quantization is not None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["quantization_enabled"] = self.quantization_enabled
        return out

    def detail_lines(self, *, with_model: bool = True) -> list[str]:
        """The seed's "Collection details:" block (its lines, in its order), then what it did not show
        (``with_model``: the model's line, which ``create`` already printed above)."""
        lines = ["Collection details:", f"  Status: {self.status}", f"  Points: {self.points}",
                 f"  Vector size: {self.vector_size if self.vector_size is not None else '-'}",
                 f"  Distance: {self.distance or '-'}",
                 f"  Quantization enabled: {self.quantization_enabled}"
                 + (f" ({self.quantization})" if self.quantization else "")]
        ix = self.index
        if ix.kind == "hnsw":
            lines += [f"  HNSW m: {ix.m}", f"  HNSW ef_construct: {ix.ef_construct}", f"  Index: {ix.backend} (HNSW)"]
        elif ix.kind == "exact" and ix.ann_threshold is not None:
            later = f"; {ix.ann_backend} from {ix.ann_threshold:,} points" if ix.ann_backend else ""
            lines.append(f"  Index: exact (below the ANN threshold of {ix.ann_threshold:,} points{later})")
        else:
            lines.append(f"  Index: {ix.kind}" + (f" ({ix.backend})" if ix.backend != ix.kind else ""))
        if ix.note:
            lines.append(f"  Note: {ix.note}")
        if self.model is not None and with_model:
            lines.append(f"  Model: {self.model}")
        if self.target == "embedded":
            pending = f"; {self.pending} points not saved in it yet" if self.pending else ""
            lines.append(f"  Saved index: {self.saved_index or 'none yet'}{pending}")
        if self.source is not None:
            verdict = "yes" if self.complete else f"no ({self.reason}; searches the rollout sends to it go to " \
                                                  f"{self.source['name']!r} until it is complete)"
            lines.append(f"  Complete: {verdict}")
        if self.problem:
            lines.append(f"  Problem: {self.problem}")
        lines += [f"  Warning: {w}" for w in self.warnings]
        return lines


class CollectionTarget(Protocol):
    """Where collections live: the embedded index directory, or a Qdrant."""

    name: str
    location: str
    location_label: str

    def inspect(self, spec: CollectionSpec) -> CollectionReport | None:
        """The collection's report, or None when it does not exist."""
        ...

    def create(self, spec: CollectionSpec, load_info: ModelInfoLoader) -> None:
        """Create the (absent) collection."""
        ...


# ------------------------------------------------------------------------------------------------ naming
def configured_collections(settings: Settings) -> dict[str, CollectionSpec]:
    """The two collections of the rollout, by name: ``service.clip_collection`` / ``siglip_collection``."""
    from img_search.embedding.hf import canonical_model_id

    svc = settings.service
    return {
        svc.clip_collection: CollectionSpec(svc.clip_collection, "clip", canonical_model_id(svc.clip_model),
                                            svc.clip_dim),
        svc.siglip_collection: CollectionSpec(svc.siglip_collection, "siglip", canonical_model_id(svc.siglip_model),
                                              svc.siglip_dim),
    }


def resolve_collection(settings: Settings, name: str | None = None, *, indexed: bool = False) -> CollectionSpec:
    """The collection named ``name`` (default: the SigLIP one, as the seed's script). ``indexed``: also any other
    model of the catalog, by the name the service gives it (``model-<catalog id>``). Raises ``InvalidInputError``
    for any other name, listing the valid ones."""
    configured = configured_collections(settings)
    wanted = settings.service.siglip_collection if name is None else name.strip()
    if wanted in configured:
        return configured[wanted]
    others: dict[str, CollectionSpec] = {}
    if indexed:
        from img_search.catalog import Catalog

        try:
            with Catalog.in_dir(settings.index_dir, readonly=True) as catalog:
                known = {spec.model for spec in configured.values()}
                others = {f"model-{m.id}": CollectionSpec(f"model-{m.id}", None, m.name, m.dim)
                          for m in catalog.models() if m.name not in known}
        except CatalogNotFoundError:
            pass
        if wanted in others:
            return others[wanted]
    valid = ", ".join([f"{s.name} ({s.label}, {s.model})" for s in configured.values()] + sorted(others))
    raise InvalidInputError(f"unknown collection {wanted!r}; valid: {valid} (names from service.clip_collection / "
                            "service.siglip_collection, SIGLIP_COLLECTION)")


# ------------------------------------------------------------------------------------------------ embedded
def _constructor_defaults(backend: str) -> dict[str, Any]:
    """The keyword defaults of a backend's constructor (what it uses for parameters the settings leave out)."""
    from img_search.index import resolve_backend

    try:
        cls = resolve_backend(backend)
    except ImgSearchError:
        return {}
    return {name: p.default for name, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def index_info(backend: str, params: dict[str, Any]) -> tuple[IndexInfo, str | None]:
    """(the index ``backend`` builds with ``params`` over its defaults, its quantization or None)."""
    effective = {**_constructor_defaults(backend), **params}
    quantization = QUANTIZATION.get(backend, _no_quantization)(effective)
    keys = HNSW_PARAMETERS.get(backend)
    if backend == "exact":
        return IndexInfo("exact", backend), quantization
    if keys is not None and effective.get("method", "hnsw") == "hnsw":
        m, ef = effective.get(keys[0]), effective.get(keys[1])
        return IndexInfo("hnsw", backend, int(m) if m is not None else None,
                         int(ef) if ef is not None else None), quantization
    return IndexInfo(str(effective.get("method", backend)), backend), quantization


class EmbeddedTarget:
    """Collections in the index directory: the catalog's model rows and their saved search indexes."""

    name = "embedded"
    location_label = "Local path"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.location = str(settings.index_dir)

    def inspect(self, spec: CollectionSpec) -> CollectionReport | None:
        from img_search.catalog import Catalog
        from img_search.search.store import VectorStore, backend_params, choose_backend

        search = self.settings.search
        try:
            catalog = Catalog.in_dir(self.settings.index_dir, readonly=True)
        except CatalogNotFoundError:
            return None
        with catalog:
            row = catalog.get_model(spec.model)
            if row is None:
                return None
            if row.dim is None:
                return None  # registered by a run that never embedded: `index` or create records the dimension
            source = self._source(catalog, spec)
            with catalog.snapshot():
                ids, hashes = catalog.live_entries(row.id)
            store = VectorStore(self.settings.index_dir, catalog, row, search)
            backend = choose_backend(search, len(ids))
            info, quantization = index_info(backend, backend_params(search, backend))
            if backend == "exact":
                ann = choose_backend(search, max(search.ann_threshold, 1))
                info.ann_threshold, info.ann_backend = search.ann_threshold, ann
                ann_info, _ = index_info(ann, backend_params(search, ann))
                if ann_info.kind == "hnsw":
                    info.ann_backend = f"{ann} HNSW m {ann_info.m}, ef_construct {ann_info.ef_construct}"
            gen = store.current()
            pending = len(ids)
            if gen is not None and gen.backend == backend and gen.dim == row.dim \
                    and gen.params == backend_params(search, backend):
                saved_ids, saved_hashes = gen.entries()
                live = dict(zip(ids.tolist(), hashes.tolist(), strict=True))
                saved = dict(zip(saved_ids.tolist(), saved_hashes.tolist(), strict=True))
                pending = sum(1 for i, h in live.items() if saved.get(i) != h) + \
                    sum(1 for i in saved if i not in live)
        report = CollectionReport(
            name=spec.name, role=spec.role, model=row.name, target=self.name,
            location=self.location, location_label=self.location_label,
            status="green" if gen is not None and pending == 0 else "yellow", points=len(ids),
            vector_size=row.dim, distance=DISTANCE, quantization=quantization, index=info,
            saved_index=str(gen.path.relative_to(self.settings.index_dir)) if gen is not None else None,
            pending=pending)
        if spec.dim is not None and row.dim != spec.dim:
            report.problem = (f"model {row.name} gives {row.dim}-dim vectors but the settings say {spec.dim} "
                              f"(service.{spec.role}_dim): the service does not serve this collection")
        _completeness(report, source)
        return report

    def _source(self, catalog: Any, spec: CollectionSpec) -> Side | None:
        """The CLIP collection a SigLIP collection re-embeds (its points), when it is indexed."""
        if spec.role != "siglip":
            return None
        clip = configured_collections(self.settings)[self.settings.service.clip_collection]
        row = catalog.get_model(clip.model)
        if row is None:
            return None
        with catalog.snapshot():
            ids, _ = catalog.live_entries(row.id)
        return Side(clip.name, len(ids))

    def create(self, spec: CollectionSpec, load_info: ModelInfoLoader) -> None:
        from img_search.catalog import Catalog
        from img_search.catalog.lock import IndexLock
        from img_search.search.store import VectorStore

        info = load_info(spec.model)  # before the lock: loading a model takes seconds
        if spec.dim is not None and info.dim != spec.dim:
            raise DimensionMismatchError(
                f"model {spec.model} gives {info.dim}-dim vectors but the settings say {spec.dim} "
                f"(service.{spec.role}_dim{', SIGLIP_EMBEDDING_DIM' if spec.role == 'siglip' else ''}); "
                "fix the setting or the model")
        with IndexLock(self.settings.index_dir), Catalog.in_dir(self.settings.index_dir) as catalog:
            row = catalog.get_model(spec.model)
            if row is None or row.dim is None:
                catalog.ensure_model(spec.model, family=info.family, dim=info.dim, logit_scale=info.logit_scale,
                                     logit_bias=info.logit_bias)
                row = catalog.get_model(spec.model)
            assert row is not None
            VectorStore(self.settings.index_dir, catalog, row, self.settings.search).sync()
        logger.info("collection %r: model %s registered in %s, its search index saved", spec.name, spec.model,
                    self.settings.index_dir)


def _completeness(report: CollectionReport, source: Side | None) -> None:
    if source is None:
        return
    report.source = {"name": source.name, "points": source.points}
    report.reason = incomplete_reason(Side(report.name, report.points), source)
    report.complete = report.reason is None


# ------------------------------------------------------------------------------------------------ Qdrant
QDRANT_CONNECTION_KEYS = ("url", "path", "location", "api_key", "collection", "prefer_grpc", "timeout")


class QdrantTarget:
    """Collections on a Qdrant server (``search.params.qdrant.url``, the seed's ``QDRANT_URL``) or in
    qdrant-client's local mode (``search.params.qdrant.path``)."""

    name = "qdrant"

    def __init__(self, settings: Settings) -> None:
        from img_search.search.store import backend_params

        self.settings = settings
        params = dict(backend_params(settings.search, "qdrant"))
        self.url: str | None = params.get("url") or None
        self.path: str | None = params.get("path") or None
        if self.url and self.path:
            raise InvalidInputError("search.params.qdrant has both url (QDRANT_URL) and path (qdrant-client's local "
                                    "mode): keep one")
        self.api_key: str | None = params.get("api_key") or None
        self.timeout = params.get("timeout")
        # the collection's own settings: what the qdrant backend creates (the seed's), with [search.params.qdrant]
        self.params = {k: v for k, v in params.items() if k not in QDRANT_CONNECTION_KEYS}
        self.local = self.url is None
        self.location = self.url or os.path.abspath(os.path.expanduser(str(self.path)))
        self.location_label = "Qdrant URL" if self.url else "Qdrant local path (qdrant-client's local mode)"

    def _client(self) -> Any:
        from qdrant_client import QdrantClient

        try:
            if self.url is not None:
                # the client checks the server's version in a thread of its own and warns when it gets no answer;
                # a server that does not answer is reported (one line) by the first call instead
                warnings.filterwarnings("ignore", message="Failed to obtain server version", category=UserWarning)
                return QdrantClient(url=self.url, api_key=self.api_key, timeout=self.timeout)
            return QdrantClient(path=self.location)
        except (RuntimeError, OSError, ValueError) as exc:  # a local folder another client holds; a bad URL
            raise UnavailableError(f"cannot open Qdrant at {self.location}: {exc}") from None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ImgSearchError:
            raise
        except Exception as exc:  # qdrant-client raises transport errors of several libraries (httpx, grpc)
            raise UnavailableError(f"Qdrant at {self.location} did not answer {what}: "
                                   f"{type(exc).__name__}: {exc}") from None

    def inspect(self, spec: CollectionSpec) -> CollectionReport | None:
        if self.local and not os.path.isdir(self.location):
            return None  # never create the local folder just to look
        client = self._client()
        try:
            if not self._call("collection_exists", lambda: client.collection_exists(spec.name)):
                return None
            info = self._call("get_collection", lambda: client.get_collection(spec.name))
            source = None
            if spec.role == "siglip":
                clip = self.settings.service.clip_collection
                if self._call("collection_exists", lambda: client.collection_exists(clip)):
                    count = self._call("count", lambda: client.count(clip, exact=True).count)
                    source = Side(clip, int(count))
            points = info.points_count
            if points is None:
                points = self._call("count", lambda: client.count(spec.name, exact=True).count)
        finally:
            client.close()
        return self._report(spec, info, int(points or 0), source)

    def _report(self, spec: CollectionSpec, info: Any, points: int, source: Side | None) -> CollectionReport:
        vectors = info.config.params.vectors
        warnings: list[str] = []
        if isinstance(vectors, dict):  # named vectors: the seed's collections have one unnamed vector
            warnings.append(f"named vectors {sorted(vectors)}; showing the first")
            vectors = next(iter(vectors.values()), None)
        size = int(vectors.size) if vectors is not None else None
        distance = vectors.distance.name if vectors is not None else None
        quant_config = getattr(vectors, "quantization_config", None) or info.config.quantization_config
        quantization = None
        if quant_config is not None:
            kind = next((k for k in ("scalar", "product", "binary") if getattr(quant_config, k, None) is not None),
                        "unknown")
            detail = getattr(quant_config, kind, None)
            quantization = str(getattr(getattr(detail, "type", None), "value", kind)) if kind == "scalar" else kind
        hnsw = getattr(vectors, "hnsw_config", None) or info.config.hnsw_config
        index = IndexInfo("hnsw", "qdrant", int(hnsw.m) if hnsw and hnsw.m is not None else None,
                          int(hnsw.ef_construct) if hnsw and hnsw.ef_construct is not None else None)
        if self.local:
            index = IndexInfo("exact", "qdrant-client local mode",
                              note="qdrant-client's local mode searches by brute force: it keeps no HNSW graph and no "
                                   "quantization (a Qdrant server builds them)")
        elif info.indexed_vectors_count is not None:
            index.note = (f"{info.indexed_vectors_count} of {points} vectors in HNSW segments (Qdrant builds them "
                          "past the optimizer's indexing_threshold; smaller segments are searched exactly)")
        report = CollectionReport(
            name=spec.name, role=spec.role, model=None, target=self.name, location=self.location,
            location_label=self.location_label, status=str(getattr(info.status, "value", info.status)),
            points=points, vector_size=size, distance=distance, quantization=quantization, index=index,
            warnings=warnings)
        if spec.dim is not None and size is not None and size != spec.dim:
            report.problem = f"the collection holds {size}-d vectors but the settings say {spec.dim}"
        _completeness(report, source)
        return report

    def create(self, spec: CollectionSpec, load_info: ModelInfoLoader) -> None:
        from img_search.index.qdrant_index import QdrantIndex

        if spec.dim is None:
            raise InvalidInputError(f"collection {spec.name!r}: no dimension is configured for it")
        known = set(inspect.signature(QdrantIndex).parameters)
        params = {k: v for k, v in self.params.items() if k in known}
        ignored = sorted(set(self.params) - known)
        if ignored:
            logger.warning("search.params.qdrant: %s ignored (not QdrantIndex parameters)", ", ".join(ignored))
        where: dict[str, Any] = {"url": self.url, "api_key": self.api_key} if self.url else {"path": self.location}
        index = self._call("create_collection", lambda: QdrantIndex(dim=spec.dim or 0, metric="cosine",
                                                                   collection=spec.name, **where, **params))
        index.close()
        logger.info("Qdrant collection %r created at %s", spec.name, self.location)


def _qdrant_configured(settings: Settings) -> bool:
    params = settings.search.params.get("qdrant", {})
    return bool(params.get("url") or params.get("path"))


# target name -> its constructor; ``target_for`` picks one from the settings
TARGETS: dict[str, Callable[[Settings], CollectionTarget]] = {"embedded": EmbeddedTarget, "qdrant": QdrantTarget}


def target_for(settings: Settings) -> CollectionTarget:
    """``qdrant`` when the settings name a Qdrant (URL or local path), else the embedded index directory."""
    return TARGETS["qdrant" if _qdrant_configured(settings) else "embedded"](settings)


# ------------------------------------------------------------------------------------------------ commands
def load_model_info(model: str) -> ModelInfo:
    """What the catalog records of ``model``: loads it once on the CPU (a Hub id needs it in the local cache when
    the Hub is off; raises ``ModelNotFoundError`` otherwise)."""
    from img_search.embedding import load_encoder

    encoder = load_encoder(model, device="cpu")
    return encoder.info


@dataclass
class CreateResult:
    """What ``create_collection`` did: ``action`` is ``created``, ``exists`` (nothing changed) or ``dry_run``."""

    spec: CollectionSpec
    target: str
    location: str
    location_label: str
    action: Literal["created", "exists", "dry_run"]
    report: CollectionReport | None  # None only for a dry run of an absent collection

    def header_lines(self) -> list[str]:
        """The seed's opening block: what is being created, and where."""
        label = f"{self.spec.label} collection" if self.spec.label else "collection"
        dry = " (dry run: nothing is written)" if self.action == "dry_run" else ""
        return [f"Creating {label}...{dry}", f"  Collection name: {self.spec.name}",
                f"  Embedding dimension: {self.spec.dim if self.spec.dim is not None else '-'}",
                f"  Model: {self.spec.model}", f"  {self.location_label}: {self.location}"]

    def outcome_line(self) -> str:
        name = self.spec.name
        if self.action == "created":
            return f"\u2713 Collection '{name}' created successfully"
        if self.action == "exists":
            return f"\u2713 Collection '{name}' already exists (nothing changed)"
        if self.report is not None:
            return f"Dry run: collection '{name}' already exists; nothing would change"
        return f"Dry run: collection '{name}' does not exist; it would be created"

    def lines(self) -> list[str]:
        out = [*self.header_lines(), "", self.outcome_line()]
        if self.report is not None:
            out += ["", *self.report.detail_lines(with_model=False)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "collection": self.spec.name, "role": self.spec.role, "model": self.spec.model,
                "dim": self.spec.dim, "target": self.target, "location": self.location,
                "details": self.report.to_dict() if self.report is not None else None}


# the encoders' advice for a model they cannot load names the options of index / search, which collection commands
# do not take: their model is a service setting
_MODEL_OPTION_ADVICE = "pass --model DIR (or IMG_SEARCH_MODEL=DIR)"
_ROLE_MODEL_SETTINGS = {
    "siglip": "set service.siglip_model to DIR (IMG_SEARCH_SERVICE__SIGLIP_MODEL=DIR, or the seed's "
              "SIGLIP_MODEL_NAME=DIR)",
    "clip": "set service.clip_model to DIR (IMG_SEARCH_SERVICE__CLIP_MODEL=DIR)",
}


def _where_the_model_is_set(message: str, spec: CollectionSpec) -> str:
    """``message`` (a model that cannot be loaded) with the advice pointing at the setting that names ``spec``'s
    model rather than at --model / IMG_SEARCH_MODEL, which `collection create` does not read."""
    advice = _ROLE_MODEL_SETTINGS.get(spec.role or "")
    if advice is None:
        return message
    if _MODEL_OPTION_ADVICE in message:
        return message.replace(_MODEL_OPTION_ADVICE, advice)
    return f"{message.rstrip('.')}; collection {spec.name!r} takes its model from the settings: {advice}"


def create_collection(settings: Settings, name: str | None = None, *, dry_run: bool = False,
                      load_info: ModelInfoLoader = load_model_info) -> CreateResult:
    """Create collection ``name`` (default the SigLIP one) in the settings' target, unless it exists (then nothing
    changes). ``dry_run``: only say what would happen. ``load_info``: how the embedded target learns the model's
    family, dimension and logit values (default: load it). Raises ``DimensionMismatchError`` when the model or an
    existing collection does not have the configured dimension."""
    spec = resolve_collection(settings, name)
    target = target_for(settings)
    report = target.inspect(spec)

    def result(action: Literal["created", "exists", "dry_run"], found: CollectionReport | None) -> CreateResult:
        return CreateResult(spec, target.name, target.location, target.location_label, action, found)

    if report is not None and report.vector_size is not None and spec.dim is not None \
            and report.vector_size != spec.dim:
        raise DimensionMismatchError(f"collection {spec.name!r} already exists with {report.vector_size}-d vectors, "
                                     f"not the {spec.dim} the settings say")
    if dry_run:
        return result("dry_run", report)
    if report is not None:
        return result("exists", report)
    try:
        target.create(spec, load_info)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(_where_the_model_is_set(str(exc), spec)) from None
    created = target.inspect(spec)
    if created is None:
        raise UnavailableError(f"collection {spec.name!r} was created at {target.location} but cannot be found there")
    return result("created", created)


def check_collection(settings: Settings, name: str | None = None) -> CollectionReport:
    """The report of collection ``name`` (default the SigLIP one; also ``model-<id>`` of other indexed models).
    Raises ``NotFoundError`` when it does not exist."""
    spec = resolve_collection(settings, name, indexed=True)
    target = target_for(settings)
    report = target.inspect(spec)
    if report is None:
        how = "`img-search collection create" + ("`" if spec.name == settings.service.siglip_collection
                                                 else f" {spec.name}`")
        raise NotFoundError(f"collection {spec.name!r} ({spec.model}) does not exist at {target.location}; create it "
                            f"with {how} (or scripts/create_siglip_collection.py)")
    return report


def check_lines(report: CollectionReport) -> list[str]:
    """``check``'s text: where the collection is, then its details."""
    label = f"{ROLE_LABELS[report.role]} collection" if report.role in ROLE_LABELS else "collection"
    return [f"Checking {label}...", f"  Collection name: {report.name}",
            f"  {report.location_label}: {report.location}", "", *report.detail_lines()]


__all__ = ["TARGETS", "CollectionReport", "CollectionSpec", "CreateResult", "EmbeddedTarget", "QdrantTarget",
           "check_collection", "check_lines", "configured_collections", "create_collection", "resolve_collection",
           "target_for"]
