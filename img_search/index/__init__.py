"""Vector-index backends behind one interface (see ``base.py``), found by name in ``BACKENDS``.

Each optional backend lives in its own module that imports its library inside, so a missing
library only removes that backend: ``available_backends()`` lists what imports here and
``create_index`` on a missing one raises a clear ``BackendUnavailableError``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from img_search.errors import UnavailableError, UnknownNameError
from img_search.index.base import ReadOnlyIndexError, VectorIndex
from img_search.index.reader import IndexReader, open_reader

# name -> "module:Class"; modules are imported lazily so optional libraries stay optional
BACKENDS: dict[str, str] = {
    "exact": "img_search.index.exact:ExactIndex",
    "faiss": "img_search.index.faiss_index:FaissIndex",
    "hnswlib": "img_search.index.hnswlib_index:HnswlibIndex",
    "usearch": "img_search.index.usearch_index:UsearchIndex",
    "scann": "img_search.index.scann_index:ScannIndex",
    "qdrant": "img_search.index.qdrant_index:QdrantIndex",
    "qdrant_edge": "img_search.index.qdrant_edge_index:QdrantEdgeIndex",
}

# name -> what to install when the backend's library is missing
_DEFAULT_HINT = "pip install 'img-search[ann]'"
_INSTALL_HINTS: dict[str, str] = {
    "faiss": "pip install faiss-cpu  (or: pip install 'img-search[ann]')",
    "hnswlib": "pip install hnswlib  (or: pip install 'img-search[ann]')",
    "usearch": "pip install usearch  (or: pip install 'img-search[ann]')",
    "scann": "pip install scann  (or: pip install 'img-search[scann]'; Linux x86-64 / macOS arm64 wheels only)",
    "qdrant": "pip install qdrant-client  (or: pip install 'img-search[ann]')",
    "qdrant_edge": "pip install qdrant-edge-py  (or: pip install 'img-search[ann]')",
}


class BackendUnavailableError(UnavailableError):
    """The backend's library is not installed (or cannot run here)."""


def _resolve(name: str) -> type[VectorIndex]:
    if name not in BACKENDS:
        raise UnknownNameError(f"unknown index backend {name!r}; valid names: {', '.join(sorted(BACKENDS))}")
    module_name, _, cls_name = BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"index backend {name!r} needs a library that is not installed ({exc}); "
            f"install it: {_INSTALL_HINTS.get(name, _DEFAULT_HINT)}"
        ) from exc
    return getattr(module, cls_name)  # type: ignore[no-any-return]


def resolve_backend(name: str) -> type[VectorIndex]:
    """The backend class for ``name``; UnknownNameError or BackendUnavailableError (with an install hint)."""
    return _resolve(name)


def create_index(name: str, *, dim: int, metric: str = "cosine", **params: Any) -> VectorIndex:
    return _resolve(name)(dim=dim, metric=metric, **params)  # type: ignore[call-arg]


def load_index(name: str, path: Path, **kwargs: Any) -> VectorIndex:
    """Load a saved index for reading and writing (``readonly=True``: see ``open_reader`` instead)."""
    return _resolve(name).load(path, **kwargs)


def available_backends() -> list[str]:
    names = []
    for name in sorted(BACKENDS):
        try:
            _resolve(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "IndexReader",
    "ReadOnlyIndexError",
    "VectorIndex",
    "available_backends",
    "create_index",
    "load_index",
    "open_reader",
    "resolve_backend",
]
