"""Optional libraries: import one, or raise ``UnavailableError`` naming the ``pip install`` extra that brings it.

The extras are those of pyproject.toml's ``[project.optional-dependencies]``; callers check the libraries they need
before any work (a command fails in a second with one line, not after minutes of embedding with a traceback).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from img_search.errors import UnavailableError


def install_hint(extra: str) -> str:
    """The command that installs ``extra`` (a name from pyproject.toml's optional dependencies)."""
    return f"pip install 'img-search[{extra}]'"


def require(module: str, *, extra: str, needed_for: str, package: str | None = None) -> ModuleType:
    """``import module`` and return it; ``UnavailableError`` when it does not import.

    ``extra``: the pyproject.toml extra that installs it; ``needed_for``: what needs it, for the message (e.g.
    "`img-search map`"); ``package``: the distribution name when it differs from the module's (``umap-learn`` for
    ``umap``). The message is one line: ``<needed_for> needs <package> (<import error>): pip install
    'img-search[<extra>]'``. A module set to ``None`` in ``sys.modules`` (tests) fails like a missing one.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnavailableError(
            f"{needed_for} needs {package or module}, which is not installed here ({exc}): {install_hint(extra)}"
        ) from None
