"""The service's collections: one per indexed model, each a warm ``Searcher``; and the router that picks one.

``CollectionRegistry`` opens a ``Searcher`` (``search.searcher.open_searcher``) for every model in the catalog at
start-up and keeps it: the saved index stays open and the model stays loaded. Before each request ``refresh()``
asks SQLite whether anything was committed since (one ``PRAGMA data_version`` on the registry's own connection); if
so, every collection catches up (``Collection.refresh``) and models indexed since start-up get a collection too,
so an ``index`` run or a re-embedding shows up without a restart.

Collection names come from the settings (``service.clip_collection`` / ``service.siglip_collection``) for the
models named ``service.clip_model`` / ``service.siglip_model``; any other indexed model is served as
``model-<catalog id>`` (the name of its folder under ``vectors/``). A configured collection whose model gives
vectors of another size than ``service.clip_dim`` / ``service.siglip_dim`` is not served (a ``ConflictError``
when asked for; health shows why).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from img_search.catalog import Catalog, ModelRow
from img_search.errors import (
    CatalogNotFoundError,
    DimensionMismatchError,
    EmptyCollectionError,
    ImgSearchError,
    NotFoundError,
)
from img_search.search.searcher import Searcher, open_searcher, query_encoder_factory
from img_search.service.rollout import Decision, Rollout, Side, decide, incomplete_reason, request_bucket
from img_search.settings import Settings

logger = logging.getLogger(__name__)

Role = Literal["clip", "siglip"]
WARM_UP_QUERY = "a photo"
SearcherOpener = Callable[[Settings, ModelRow], Searcher]


def default_opener(settings: Settings, model: ModelRow) -> Searcher:
    """``open_searcher`` for ``model``: the encoder loads on first use and runs one forward pass at a time."""
    return open_searcher(settings, model.name, encoder=query_encoder_factory(model.name, settings))


@dataclass
class Served:
    """One collection: its name, model and role, and its searcher (None when it cannot be served: ``error``)."""

    name: str
    model: ModelRow
    role: Role | None
    searcher: Searcher | None
    error: ImgSearchError | None = None
    encoder_error: str | None = None

    @property
    def points(self) -> int:
        """Live vectors in the collection (0 when it is not served)."""
        return len(self.searcher.collection) if self.searcher is not None else 0

    def usable(self) -> Searcher:
        """The searcher, or the error that keeps this collection from being served."""
        if self.searcher is None:
            assert self.error is not None
            raise self.error
        return self.searcher

    def status(self) -> dict[str, Any]:
        """What health reports of this collection."""
        collection = self.searcher.collection if self.searcher is not None else None
        encoder_loaded = self.searcher is not None and self.searcher.encoder_loaded
        return {
            "name": self.name, "model": self.model.name, "family": self.model.family, "role": self.role,
            "dim": self.model.dim, "points": self.points,
            "backend": collection.backend if collection is not None else None,
            "generation": collection.generation if collection is not None else None,
            "model_loaded": encoder_loaded, "problem": str(self.error) if self.error else self.encoder_error,
        }


class CollectionRegistry:
    """Every indexed model's collection in ``settings.index_dir``; safe to share between request threads.

    ``opener`` builds a ``Searcher`` for a catalog model (default ``default_opener``; tests inject their own).
    """

    def __init__(self, settings: Settings, *, opener: SearcherOpener = default_opener) -> None:
        from img_search.embedding.hf import canonical_model_id

        self.settings = settings
        self._opener = opener
        self._lock = threading.Lock()
        self._watch: Catalog | None = None
        self._version: int | None = None
        self._served: dict[int, Served] = {}  # by catalog model id; replaced whole, never mutated in place
        self._local = threading.local()
        svc = settings.service
        self._roles: dict[str, tuple[Role, str, int]] = {
            canonical_model_id(svc.clip_model): ("clip", svc.clip_collection, svc.clip_dim),
            canonical_model_id(svc.siglip_model): ("siglip", svc.siglip_collection, svc.siglip_dim),
        }

    # ------------------------------------------------------------------ life cycle
    def open(self, *, preload: bool | None = None) -> None:
        """Open every collection; with ``preload`` (default ``service.preload_models``) load their models now."""
        self.refresh()
        if preload if preload is not None else self.settings.service.preload_models:
            for served in self.served():
                self._preload(served)

    def close(self) -> None:
        with self._lock:
            if self._watch is not None:
                self._watch.close()
            self._watch, self._version, self._served = None, None, {}

    def _preload(self, served: Served) -> None:
        if served.searcher is None:
            return
        try:
            # load the model, and run one query through it: the first forward pass imports and initialises
            # lazily (hundreds of ms on CPU), which a user's first search should not pay
            served.searcher.encoder.encode_texts([WARM_UP_QUERY])
        except ImgSearchError as exc:
            served.encoder_error = f"model not loaded: {exc}"
            logger.error("collection %r: cannot load model %s (%s); text and upload searches will fail, searches "
                         "by image id still work", served.name, served.model.name, exc)

    def refresh(self) -> None:
        """Catch up with the catalog when something was committed since the last call (cheap otherwise)."""
        with self._lock:
            if self._watch is None:
                try:
                    self._watch = Catalog.in_dir(self.settings.index_dir, readonly=True)
                except CatalogNotFoundError:
                    return  # nothing indexed yet: looked for again at the next request
            version = self._watch.data_version()
            if version == self._version:
                return
            self._sync(self._watch.models())
            self._version = version

    def _sync(self, models: list[ModelRow]) -> None:
        served = dict(self._served)
        for row in models:
            known = served.get(row.id)
            if known is None:
                served[row.id] = self._open_one(row)
                logger.info("collection %r (model %s) opened: %d points", served[row.id].name, row.name,
                            served[row.id].points)
            elif known.searcher is not None:
                known.searcher.refresh()
            elif known.model != row:  # the model was re-indexed with other values: try again
                served[row.id] = self._open_one(row)
        self._served = served

    def _open_one(self, row: ModelRow) -> Served:
        role, name, dim = self._roles.get(row.name, (None, f"model-{row.id}", None))
        if dim is not None and row.dim is not None and row.dim != dim:
            error = DimensionMismatchError(
                f"collection {name!r}: model {row.name} gives {row.dim}-dim vectors but the settings say {dim} "
                f"(service.{role}_dim)")
            logger.error("%s; it is not served", error)
            return Served(name, row, role, None, error)
        try:
            searcher = self._opener(self.settings, row)
        except ImgSearchError as exc:
            logger.error("collection %r (model %s) cannot be opened: %s", name, row.name, exc)
            return Served(name, row, role, None, exc)
        return Served(name, row, role, searcher)

    # ------------------------------------------------------------------ lookups
    def catalog(self) -> Catalog:
        """This thread's read-only catalog connection (``CatalogNotFoundError`` while nothing is indexed)."""
        catalog: Catalog | None = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = Catalog.in_dir(self.settings.index_dir, readonly=True)
        return catalog

    def served(self) -> list[Served]:
        """Every collection, in catalog order."""
        return [self._served[k] for k in sorted(self._served)]

    def get(self, name: str) -> Served:
        """The collection named ``name``, or the one of the model recorded as ``name`` (its Hub id, or the
        absolute path of a local checkpoint: compared as text, never looked up on disk); else ``NotFoundError``
        listing what is served."""
        everything = self.served()
        found = next((s for s in everything if s.name == name), None)
        if found is None:
            found = next((s for s in everything if s.model.name == name), None)
        if found is None:
            known = ", ".join(f"{s.name} ({s.model.name})" for s in everything) or "none (nothing is indexed)"
            raise NotFoundError(f"no collection or model named {name!r}; served: {known}")
        return found

    def role(self, role: Role) -> Served | None:
        return next((s for s in self.served() if s.role == role), None)

    def main(self) -> Served | None:
        """The collection with most points among those that can be served (the catalog's main model)."""
        usable = [s for s in self.served() if s.searcher is not None]
        return max(usable, key=lambda s: (s.points, -s.model.id)) if usable else None


@dataclass(frozen=True)
class Routed:
    """A search's collection, its searcher and the routing decision (served in the response's ``routing``)."""

    served: Served
    searcher: Searcher
    decision: Decision


class Router:
    """Picks the collection of each search: the one asked for, else the rollout between CLIP and SigLIP
    (``service.rollout.decide``) when both are served, else the only one, else the catalog's main model."""

    def __init__(self, registry: CollectionRegistry, rollout: Rollout) -> None:
        self.registry = registry
        self.rollout = rollout
        self._logged_problem: str | None = None

    def route(self, model: str | None = None, *, user_id: str | int | None = None,
              session_key: str | None = None) -> Routed:
        """Raises ``NotFoundError`` (unknown name; nothing indexed) or the error of an unusable collection."""
        registry = self.registry
        if model is not None:
            served = registry.get(model)
            searcher = served.usable()
            reason = f"collection {served.name!r} was requested"
            source = registry.role("clip")
            problem = None
            if served.role == "siglip" and source is not None and source.searcher is not None:
                problem = incomplete_reason(Side(served.name, served.points), Side(source.name, source.points))
            if problem is not None:
                reason += f" ({problem})"
            return Routed(served, searcher, Decision(served.name, "requested", reason, problem=problem))
        clip, siglip = registry.role("clip"), registry.role("siglip")
        both = [s for s in (clip, siglip) if s is not None and s.searcher is not None]
        if clip is not None and siglip is not None and len(both) == 2:
            bucket, sticky_by = request_bucket(user_id, session_key)
            decision = decide(self.rollout.state, Side(clip.name, clip.points), Side(siglip.name, siglip.points),
                              bucket, sticky_by)
            served = clip if decision.collection == clip.name else siglip
        elif both:
            served = both[0]
            other = siglip if served is clip else clip
            why = f"; {other.name!r} is not served: {other.error}" if other is not None else ""
            decision = Decision(served.name, "only_collection", f"only {served.name!r} of the two rollout "
                                f"collections is indexed{why}", problem=str(other.error) if other else None)
        else:
            main = registry.main()
            if main is None:
                raise EmptyCollectionError(f"nothing is indexed in {registry.settings.index_dir} that can be "
                                           "searched: run `img-search index FOLDER` first")
            served = main
            decision = Decision(main.name, "main_model", f"neither {registry.settings.service.clip_collection!r} "
                                f"nor {registry.settings.service.siglip_collection!r} is indexed; {main.name!r} "
                                "holds most images")
        self._log(decision)
        return Routed(served, served.usable(), decision)

    def status(self) -> dict[str, Any]:
        """The rollout as the next request meets it (health and the admin routes report it)."""
        state = self.rollout.state
        svc = self.registry.settings.service
        clip, siglip = self.registry.role("clip"), self.registry.role("siglip")
        active = all(s is not None and s.searcher is not None for s in (clip, siglip))
        problem = None
        if clip is not None and siglip is not None and active:
            problem = incomplete_reason(Side(siglip.name, siglip.points), Side(clip.name, clip.points))
        routable = active and (problem is None or state.force)
        if not active:
            served = [s.name for s in (clip, siglip) if s is not None and s.searcher is not None]
            reason = (f"inactive: only {served[0]!r} is served, it takes every search" if served else
                      "inactive: neither collection is indexed; the model with most images takes every search")
        elif problem is not None and not state.force:
            reason = f"{problem}: every search goes to {svc.clip_collection!r} until it is complete (or forced)"
        else:
            reason = f"{state.percentage:g}% of searches go to {svc.siglip_collection!r}" + (
                f" although {problem} (forced)" if problem else "")
        return {
            "percentage": state.percentage, "force": state.force, "source": state.source,
            "changed_at": state.changed_at, "active": active, "clip_collection": svc.clip_collection,
            "siglip_collection": svc.siglip_collection,
            "clip_points": clip.points if clip is not None else None,
            "siglip_points": siglip.points if siglip is not None else None,
            "siglip_routable": routable, "reason": reason,
        }

    def _log(self, decision: Decision) -> None:
        if decision.problem is not None and decision.problem != self._logged_problem:
            logger.warning("routing: %s", decision.reason)
        else:
            logger.debug("routing: %s", decision.reason)
        if decision.problem is not None:
            self._logged_problem = decision.problem
