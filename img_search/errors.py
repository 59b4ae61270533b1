"""Typed errors raised by the library; only the CLI and HTTP layers turn them into exit codes and messages."""

from __future__ import annotations


class ImgSearchError(Exception):
    """Base class of every error the library raises on purpose."""


class ModelNotFoundError(ImgSearchError):
    """A checkpoint could not be loaded (offline without a local copy, wrong id, incomplete directory)."""


class UnknownNameError(ImgSearchError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ImageDecodeError(ImgSearchError):
    """A file could not be turned into an RGB image; the message says why."""


class CatalogError(ImgSearchError):
    """The catalog is missing, newer than this code, or otherwise unusable."""


class CatalogLockedError(CatalogError):
    """Another `index` run holds the catalog's writer lock."""


class DimensionMismatchError(ImgSearchError):
    """Vectors of different dimensions (or models) were about to be compared."""


class EmptyCollectionError(ImgSearchError):
    """A search was asked of a collection that holds no vectors for the model."""


class DatasetError(ImgSearchError):
    """A dataset could not be opened or read (missing files or columns, bad rows, Hub unreachable)."""


class HubPushError(ImgSearchError):
    """Uploading to the Hugging Face Hub failed; the local files it was given are left as they were."""
