"""Query terms: ``beach -people +holiday.jpg -blurry.jpg`` -> words, NOT-words, and example images for and against.

Grammar (whitespace-separated terms; quotes group words: ``-"crowd of people"``, ``+"my photo.jpg"``):

- a plain word is part of the positive text (all plain words form one text query: ``golden retriever``);
- ``-word`` / ``-"some words"`` is a NOT-term (a negative text);
- ``+path`` / ``-path`` where ``path`` names an image file (an image extension, or an existing file) adds that image's
  vector for / against; a missing ``+photo.jpg`` is a ``NotFoundError``, never silently dropped;
- ``+word`` is a plain word; a lone ``-`` or a number like ``-5`` is a plain word too.

The arithmetic (``combine``): every vector is L2-normalised first, then

    q = normalise( t + sum(v_i) - NEGATIVE_WEIGHT * (sum(n_j) + sum(u_k)) )

with ``t`` the positive text embedding (absent when the query has no words), ``v_i`` the ``+image`` vectors, ``n_j``
the NOT-term text embeddings and ``u_k`` the ``-image`` vectors. Ranking uses the cosine to ``q``; the calibrated
probability shown with each hit is the model's for the positive text alone (what "matches the words" means), so a
NOT-term re-orders results but never empties them, and a query made only of NOT-terms is refused (there is nothing to
rank by). The same arithmetic as rclip's ``+``/``-`` queries, with the negatives at half weight so that a NOT-term
pushes away from a concept without flipping the query (``NEGATIVE_WEIGHT``).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from img_search.data.formats import IMAGE_EXTENSIONS
from img_search.errors import InvalidInputError, NotFoundError

NEGATIVE_WEIGHT = 0.5
_NUMBER = re.compile(r"^[-+]?\d+(?:[.,]\d+)?$")


@dataclass(frozen=True)
class ParsedQuery:
    """A query split into its terms (see the module docstring). ``text`` is '' when the query has no plain words."""

    text: str
    negative_texts: tuple[str, ...] = ()
    positive_images: tuple[str, ...] = ()
    negative_images: tuple[str, ...] = ()

    @property
    def has_terms(self) -> bool:
        """Whether anything beyond plain words was given (NOT-terms or example images)."""
        return bool(self.negative_texts or self.positive_images or self.negative_images)


def _is_image_ref(term: str) -> bool:
    return os.path.splitext(term)[1].lower() in IMAGE_EXTENSIONS or os.path.isfile(os.path.expanduser(term))


def _split(raw: str) -> list[str]:
    try:
        return shlex.split(raw)
    except ValueError:  # an unbalanced quote: the words as typed
        return raw.split()


def parse_query(raw: str) -> ParsedQuery:
    """Split ``raw`` into its terms. Raises ``InvalidInputError`` for an empty query or one with only NOT-terms, and
    ``NotFoundError`` for a ``+``/``-`` image that does not exist."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInputError("the query text is empty")
    words: list[str] = []
    neg_texts: list[str] = []
    pos_images: list[str] = []
    neg_images: list[str] = []
    for term in _split(raw):
        sign, rest = term[:1], term[1:]
        if sign not in "+-" or not rest.strip() or _NUMBER.match(term):
            words.append(term)
            continue
        if _is_image_ref(rest):
            path = os.path.abspath(os.path.expanduser(rest))
            if not os.path.lexists(path):
                raise NotFoundError(f"{sign}{rest}: no such image file (quote a word that only looks like a file name)")
            (pos_images if sign == "+" else neg_images).append(path)
        elif sign == "-":
            neg_texts.append(rest)
        else:
            words.append(rest)
    parsed = ParsedQuery(" ".join(words), tuple(neg_texts), tuple(pos_images), tuple(neg_images))
    if not parsed.text and not parsed.positive_images:
        raise InvalidInputError(
            f"the query {raw!r} has only NOT-terms: add what to look for (e.g. 'beach -people')")
    return parsed


def _unit(v: NDArray[np.float32]) -> NDArray[np.float32]:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.asarray(v / np.maximum(norm, 1e-12), dtype=np.float32)


def combine(text: NDArray[np.float32] | None, positive: NDArray[np.float32], negative: NDArray[np.float32]
            ) -> NDArray[np.float32]:
    """The query vector of the module docstring: ``text`` (dim,) or None, ``positive`` (p, dim) and ``negative``
    (m, dim) float32 -> (dim,) float32 of unit length. Raises ``InvalidInputError`` when the terms cancel out."""
    parts = [_unit(np.asarray(positive, np.float32)).sum(axis=0)] if len(positive) else []
    if text is not None:
        parts.append(_unit(np.asarray(text, np.float32)))
    if not parts:
        raise InvalidInputError("a query needs words or a +image to look for")
    q = np.sum(parts, axis=0)
    if len(negative):
        q = q - NEGATIVE_WEIGHT * _unit(np.asarray(negative, np.float32)).sum(axis=0)
    if float(np.linalg.norm(q)) < 1e-6:
        raise InvalidInputError("the query's terms cancel each other out: drop a NOT-term")
    return _unit(q)
