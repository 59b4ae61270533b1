"""Queries the service makes of a ``Searcher``: by uploaded bytes and by catalog image id (both in the library:
``Searcher.search_bytes`` / ``Searcher.search_id``, which also serialise forward passes)."""

from __future__ import annotations

from img_search.search.collection import Hit
from img_search.search.searcher import Searcher, SearchOptions


def search_upload(searcher: Searcher, data: bytes, *, limit: int, threshold: float | None,
                  options: SearchOptions | None = None) -> list[Hit]:
    """Images similar to the uploaded image ``data`` (cosine, no probability); see ``Searcher.search_bytes``."""
    return searcher.search_bytes(data, limit=limit, threshold=threshold, options=options)


def search_by_id(searcher: Searcher, image_id: int, *, limit: int, threshold: float | None,
                 options: SearchOptions | None = None) -> list[Hit]:
    """Images similar to catalog image ``image_id``, itself left out; see ``Searcher.search_id``."""
    return searcher.search_id(image_id, limit=limit, threshold=threshold, options=options)
