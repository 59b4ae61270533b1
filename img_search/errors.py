"""Typed errors raised by the library; only the CLI and HTTP layers turn them into exit codes and messages.

Every error the library raises on purpose derives from ``ImgSearchError`` and from exactly one of four kinds,
which the edges translate without knowing the concrete class:

=====================  ===============================================  =========  =========
kind                   meaning                                          CLI exit   HTTP
=====================  ===============================================  =========  =========
``NotFoundError``      a named thing does not exist (catalog, model,    1          404
                       file, collection)
``InvalidInputError``  a value the user gave is malformed or out of     2 (usage)  422
                       range (option values, query text, config.toml)
``ConflictError``      the request clashes with the current state       1          409
                       (another writer holds the lock, a dimension
                       changed, precisions that must not mix)
``UnavailableError``   something needed is missing here (a library,     1          503
                       CUDA, the Hub, a read-only store for a write)
=====================  ===============================================  =========  =========

An ``ImgSearchError`` of no kind is an internal failure the user cannot fix by changing the request (exit 1, HTTP
500). ``KeyboardInterrupt`` exits 130 after committing what was done. ``EXIT_CODES`` / ``HTTP_STATUS`` hold the
mapping so the CLI and the service read it from one place.
"""

from __future__ import annotations


class ImgSearchError(Exception):
    """Base class of every error the library raises on purpose."""


class NotFoundError(ImgSearchError):
    """Something the request names does not exist (HTTP 404)."""


class InvalidInputError(ImgSearchError, ValueError):
    """A value given by the user is malformed or out of range (CLI exit 2, HTTP 422)."""


class ConflictError(ImgSearchError):
    """The request clashes with the state of the catalog or index (HTTP 409)."""


class UnavailableError(ImgSearchError):
    """A library, device, network resource or writable store the request needs is not available here (HTTP 503)."""


# -- concrete errors ------------------------------------------------------------------------------------------------
class ModelNotFoundError(NotFoundError):
    """A checkpoint could not be loaded (offline without a local copy, wrong id, incomplete directory)."""


class UnknownNameError(InvalidInputError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ImageDecodeError(InvalidInputError):
    """A file could not be turned into an RGB image; the message says why."""


class CatalogError(ImgSearchError):
    """The catalog is unusable (damaged, or its schema is one this code cannot read)."""


class CatalogNotFoundError(CatalogError, NotFoundError):
    """No catalog exists in the index directory, or it holds nothing for the asked model."""


class CatalogLockedError(CatalogError, ConflictError):
    """Another `index` run holds the catalog's writer lock."""


class CatalogReadOnlyError(CatalogError, UnavailableError):
    """The index directory cannot be written (read-only media, no permission) and the command must write."""


class StorageFullError(UnavailableError):
    """The device holding the index directory has no space left (ENOSPC, EDQUOT, SQLite's SQLITE_FULL): what was
    committed before stays, nothing is left half-written, and the same command can be re-run once there is space.

    ``where`` / ``detail``: the folder written to and what was being written (``files.storage_full`` sets them), so
    a caller can say which step ran out of space without losing the cause."""

    where: str | None = None
    detail: str | None = None


class CatalogVersionError(CatalogError, UnavailableError):
    """The catalog's schema is newer than this code, or older and must be migrated by a writer first."""


class DimensionMismatchError(ConflictError):
    """Vectors of different dimensions (or models) were about to be compared."""


class EmptyCollectionError(NotFoundError):
    """A search was asked of a collection that holds no vectors for the model."""


class DeviceUnavailableError(UnavailableError):
    """The asked-for device (CUDA, MPS) or precision is not available on this machine."""


class ConfigError(InvalidInputError):
    """A setting (config.toml, an ``IMG_SEARCH_*`` variable, an option) is malformed or names something unknown."""


class DatasetError(ImgSearchError):
    """A dataset could not be opened or read (missing files or columns, bad rows, Hub unreachable)."""


class HubPushError(UnavailableError):
    """Uploading to the Hugging Face Hub failed; the local files it was given are left as they were."""


# -- the edges' translation -----------------------------------------------------------------------------------------
EXIT_USAGE = 2
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

_KINDS: tuple[tuple[type[ImgSearchError], int, int], ...] = (
    (InvalidInputError, EXIT_USAGE, 422),
    (NotFoundError, EXIT_ERROR, 404),
    (ConflictError, EXIT_ERROR, 409),
    (UnavailableError, EXIT_ERROR, 503),
)


def exit_code(exc: ImgSearchError) -> int:
    """The CLI exit code for ``exc``: 2 for invalid input (a usage error), else 1."""
    return next((code for kind, code, _ in _KINDS if isinstance(exc, kind)), EXIT_ERROR)


def http_status(exc: ImgSearchError) -> int:
    """The HTTP status for ``exc``: 422, 404, 409 or 503 by kind; 500 for an error of no kind."""
    return next((status for kind, _, status in _KINDS if isinstance(exc, kind)), 500)
