"""Fusing the embedding ranking with the text-index ranking into one list (hybrid search).

Modes (``HYBRID_MODES``):

- ``off``: the embedding ranking alone.
- ``rrf``: reciprocal rank fusion, ``score(d) = sum over lists of 1 / (RRF_K + rank(d))`` with 1-based ranks and
  ``RRF_K = 60`` (Cormack, Clarke & Buettcher, "Reciprocal Rank Fusion outperforms Condorcet and individual Rank
  Learning Methods", SIGIR 2009). Rank-only, so it needs no score normalisation.
- ``weighted``: seed 003's ``w * embedding + (1 - w) * metadata`` with both on [0, 1]: the embedding side is the
  calibrated probability (the model's learned sigmoid, or ``--temperature``'s; for a model without calibration, CLIP,
  the cosine min-max scaled over the candidates), the text side is BM25 divided by the query's best BM25. A document
  missing from one list scores 0 there. ``DEFAULT_WEIGHT`` = 0.6 as the seed.
- ``auto`` (the default): ``rrf`` when the collection holds text of its own (OCR, tags, descriptions, keywords; file
  and folder names do not count), else ``off``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from img_search.errors import InvalidInputError

HYBRID_MODES = ("auto", "off", "rrf", "weighted")
RRF_K = 60
DEFAULT_WEIGHT = 0.6


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``HYBRID_MODES``, else ``InvalidInputError`` naming them."""
    if mode not in HYBRID_MODES:
        raise InvalidInputError(f"hybrid mode must be one of {', '.join(HYBRID_MODES)}; got {mode!r}")
    return mode


def check_weight(weight: float) -> float:
    """``weight`` as a float within [0, 1], else ``InvalidInputError``."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise InvalidInputError(f"the hybrid weight must be a number within 0..1, got {weight!r}") from None
    if not 0.0 <= w <= 1.0:
        raise InvalidInputError(f"the hybrid weight must be within 0..1, got {weight!r}")
    return w


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> dict[int, float]:
    """Reciprocal rank fusion of several rankings (ids, best first) -> {id: fused score}."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, 1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return fused


def scale_text_scores(scores: Mapping[int, float]) -> dict[int, float]:
    """BM25 scores (higher is better, > 0) divided by the best one of the query -> [0, 1]."""
    if not scores:
        return {}
    best = max(scores.values())
    return {d: (s / best if best > 0 else 0.0) for d, s in scores.items()}


def min_max(scores: Mapping[int, float]) -> dict[int, float]:
    """Scores min-max scaled to [0, 1] (all 1.0 when they are equal)."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    return {d: ((s - lo) / (hi - lo) if hi > lo else 1.0) for d, s in scores.items()}


def weighted(embedding: Mapping[int, float], text: Mapping[int, float], weight: float) -> dict[int, float]:
    """``weight * embedding + (1 - weight) * text`` per id; both already on [0, 1], a missing side counts 0."""
    return {d: weight * embedding.get(d, 0.0) + (1.0 - weight) * text.get(d, 0.0)
            for d in set(embedding) | set(text)}
