"""Per-model vector indexes persisted in the index directory and kept in step with the catalog.

The catalog (SQLite) is the source of truth; ``vectors/model-<id>/<backend>/`` holds a saved
``VectorIndex`` plus the (image id, content hash) pairs it reflects. Opening the store diffs those
pairs against the catalog's live images and applies only the difference (new, changed, removed
images), so search never re-reads every vector, and an ``index`` run re-saves it after each update.
Below ``ann_threshold`` vectors the backend is ``exact`` (saved as memory-mapped .npy); at or above
it, the configured ANN backend. Both come from ``config.toml`` in the index directory and can be
overridden per command.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from img_search.catalog import Catalog, ModelRow
from img_search.errors import CatalogError, ConfigError
from img_search.index import BACKENDS, BackendUnavailableError, create_index, load_index, resolve_backend
from img_search.index.base import VectorIndex

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.toml"
# The default ANN backend and its settings come from bench/ann_backends.py (docs/PERFORMANCE.md, "Recommendation"):
# Qdrant Edge updates and persists incrementally, matches the fastest single-query latency at recall >= 0.95 and
# pins the least RAM; hnswlib is the fallback where qdrant-edge-py is not installed.
DEFAULT_ANN_BACKEND = "qdrant_edge"
FALLBACK_ANN_BACKEND = "hnswlib"
DEFAULT_ANN_THRESHOLD = 20_000
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "qdrant_edge": {"m": 16, "ef_construct": 100, "hnsw_ef": 128},
    "hnswlib": {"M": 16, "ef_construction": 100, "ef": 128},
    "faiss": {"method": "hnsw", "M": 16, "ef_construction": 100, "ef_search": 128},
}
_STATE = "state.json"
_IDS = "ids.npy"
_HASHES = "hashes.npy"


@dataclass(frozen=True)
class SearchConfig:
    ann_backend: str | None = None  # None: DEFAULT_ANN_BACKEND, falling back to FALLBACK_ANN_BACKEND if missing
    ann_threshold: int = DEFAULT_ANN_THRESHOLD
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # backend name -> constructor params

    @classmethod
    def load(cls, index_dir: Path) -> SearchConfig:
        """Read the ``[search]`` table of ``<index_dir>/config.toml`` (defaults when the file is absent)."""
        path = Path(index_dir) / CONFIG_FILENAME
        if not path.exists():
            return cls()
        try:
            table = tomllib.loads(path.read_text()).get("search", {})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        valid = {"ann_backend", "ann_threshold", "params"}
        unknown = sorted(set(table) - valid)
        if unknown:
            raise ConfigError(
                f"{path}: unknown [search] key(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        cfg = cls(
            ann_backend=str(table["ann_backend"]) if "ann_backend" in table else None,
            ann_threshold=int(table.get("ann_threshold", DEFAULT_ANN_THRESHOLD)),
            params={str(k): dict(v) for k, v in table.get("params", {}).items()},
        )
        return cfg.validated(str(path))

    def validated(self, where: str = "search config") -> SearchConfig:
        for name in (self.ann_backend or DEFAULT_ANN_BACKEND, *self.params):
            if name not in BACKENDS:
                raise ConfigError(f"{where}: unknown index backend {name!r}; valid: {', '.join(sorted(BACKENDS))}")
        if self.ann_threshold < 0:
            raise ConfigError(f"{where}: ann_threshold must be >= 0")
        return self

    def with_overrides(self, *, backend: str | None = None, threshold: int | None = None) -> SearchConfig:
        cfg = self
        if backend is not None:
            # naming a backend means "use it": exact stays exact, an ANN backend applies at any size
            cfg = replace(cfg, ann_backend=backend, ann_threshold=0)
        if threshold is not None:
            cfg = replace(cfg, ann_threshold=threshold)
        return cfg.validated("command line")

    def backend_for(self, n_vectors: int) -> str:
        if n_vectors < self.ann_threshold:
            return "exact"
        if self.ann_backend is not None:
            return self.ann_backend
        try:
            resolve_backend(DEFAULT_ANN_BACKEND)
        except BackendUnavailableError as exc:
            logger.warning("%s; using %s instead", exc, FALLBACK_ANN_BACKEND)
            return FALLBACK_ANN_BACKEND
        return DEFAULT_ANN_BACKEND


class VectorStore:
    def __init__(self, index_dir: Path, catalog: Catalog, model: ModelRow, config: SearchConfig) -> None:
        if model.dim is None:
            raise CatalogError(f"model {model.name!r} has no recorded dimension; re-run `img-search index`")
        self.root = Path(index_dir) / "vectors" / f"model-{model.id}"
        self.catalog = catalog
        self.model = model
        self.dim = int(model.dim)
        self.config = config
        self.changed = False

    def _path(self, backend: str) -> Path:
        return self.root / backend

    def _params(self, backend: str) -> dict[str, Any]:
        return {**DEFAULT_PARAMS.get(backend, {}), **self.config.params.get(backend, {})}

    def open(self) -> VectorIndex:
        """The model's index, brought up to date with the catalog (in memory; ``save`` persists it)."""
        ids, hashes = self.catalog.live_entries(self.model.id)
        backend = self.config.backend_for(len(ids))
        self._live = (ids, hashes)
        self._backend = backend
        index = self._load_matching(backend)
        if index is None:
            self.changed = True
            return self._build(backend, ids)
        old_ids, old_hashes = self._saved_state(backend)
        if np.array_equal(old_ids, ids) and np.array_equal(old_hashes, hashes):
            return index  # the common case (a no-op re-run, a search): no per-image work
        old = dict(zip(old_ids.tolist(), old_hashes.tolist(), strict=True))
        new = dict(zip(ids.tolist(), hashes.tolist(), strict=True))
        removed = [i for i, h in old.items() if new.get(i) != h]
        added = [i for i, h in new.items() if old.get(i) != h]
        if not removed and not added:
            return index
        self.changed = True
        if removed and not index.supports_remove:
            logger.info("%s cannot remove vectors: rebuilding the %s index", backend, self.model.name)
            return self._build(backend, ids)
        if removed:
            index.remove(np.asarray(removed, dtype=np.int64))
        if added:
            index.add(np.asarray(added, dtype=np.int64), self.catalog.vectors_for_ids(self.model.id, self.dim, added))
        logger.info("index for %s updated: +%d -%d vectors", self.model.name, len(added), len(removed))
        return index

    def _build(self, backend: str, ids: np.ndarray) -> VectorIndex:
        index = create_index(backend, dim=self.dim, metric="cosine", **self._params(backend))
        if len(ids):
            index.add(ids, self.catalog.vectors_for_ids(self.model.id, self.dim, ids.tolist()))
        logger.info("built a %s index of %d vectors for %s", backend, len(ids), self.model.name)
        return index

    def _saved_state(self, backend: str) -> tuple[np.ndarray, np.ndarray]:
        path = self._path(backend)
        return np.load(path / _IDS), np.load(path / _HASHES)

    def _load_matching(self, backend: str) -> VectorIndex | None:
        path = self._path(backend)
        try:
            state = json.loads((path / _STATE).read_text())
        except (OSError, ValueError):
            return None
        if state.get("params") != self._params(backend) or state.get("dim") != self.dim:
            return None
        try:
            return load_index(backend, path / "index")
        except Exception as exc:  # a damaged or half-written index is rebuilt, never fatal
            logger.warning("could not load the saved %s index (%s); rebuilding", backend, exc)
            return None

    def save(self, index: VectorIndex) -> None:
        """Persist ``index`` (as returned by ``open``) atomically; drop indexes of other backends."""
        ids, hashes = self._live
        final = self._path(self._backend)
        tmp = self.root / f".{self._backend}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        index.save(tmp / "index")
        np.save(tmp / _IDS, ids)
        np.save(tmp / _HASHES, hashes)
        (tmp / _STATE).write_text(json.dumps({"backend": self._backend, "params": self._params(self._backend),
                                              "dim": self.dim, "count": len(ids)}))
        old = self.root / f".{self._backend}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        for other in self.root.iterdir():
            if other.is_dir() and other.name != self._backend and not other.name.startswith("."):
                shutil.rmtree(other, ignore_errors=True)
        self.changed = False

    def sync(self) -> VectorIndex:
        """Bring the saved index up to date (called by `index` runs, which hold the writer lock)."""
        index = self.open()
        if self.changed or not self._path(self._backend).exists():
            self.save(index)
        return index

    @property
    def backend(self) -> str:
        return self._backend
