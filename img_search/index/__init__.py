"""Vector-index backends behind one interface (see ``base.py``), found by name in ``BACKENDS``.

Each optional backend lives in its own module that imports its library inside, so a missing
library only removes that backend: ``available_backends()`` lists what imports here and
``create_index`` on a missing one raises a clear ``BackendUnavailableError``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from img_search.errors import ImgSearchError, UnknownNameError
from img_search.index.base import VectorIndex

# name -> "module:Class"; modules are imported lazily so optional libraries stay optional
BACKENDS: dict[str, str] = {
    "exact": "img_search.index.exact:ExactIndex",
}


class BackendUnavailableError(ImgSearchError):
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
            "install the extra, e.g. `pip install 'img-search[ann]'`"
        ) from exc
    return getattr(module, cls_name)  # type: ignore[no-any-return]


def create_index(name: str, *, dim: int, metric: str = "cosine", **params: Any) -> VectorIndex:
    return _resolve(name)(dim=dim, metric=metric, **params)  # type: ignore[call-arg]


def load_index(name: str, path: Path, **kwargs: Any) -> VectorIndex:
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


__all__ = ["BACKENDS", "BackendUnavailableError", "VectorIndex", "available_backends", "create_index", "load_index"]
