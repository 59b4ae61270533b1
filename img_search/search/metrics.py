"""Retrieval metrics of the evaluation harness, with INQUIRE's definitions.

Per query, given the ranked gallery ids a method returned (best first) and the set of relevant ids:

* ``recall@k``  = |relevant ∩ top-k| / |relevant|
* ``AP@k``      = (Σ precision@i over the ranks i <= k that hold a relevant item) / min(|relevant|, k);
  relevant items the ranking misses are penalised through the denominator.
* ``nDCG@k``    = DCG@k / IDCG@k with binary gains, DCG@k = Σ_{i<=k, relevant} 1 / log2(i + 1) and the ideal
  DCG taken over min(|relevant|, k) positives.
* ``MRR@k``     = 1 / rank of the first relevant item within the top k, else 0.

A ranking that repeats an id counts it once (its first rank); ``None`` entries stand for padding (faiss' -1) and
never match. Queries without relevant items have no defined score: ``retrieval_scores`` leaves them out of the
averages and counts them. ANN recall@k compares an approximate method against the exact baseline:
|ANN top-k ∩ exact top-k| / k (k shrinks to the number of exact results when the gallery is smaller than k).

Gallery ids and relevance labels are matched after ``normalize_id``, which strips an image-extension suffix:
INQUIRE's raw metadata lists ``image_path`` without ".jpg" while other sources keep it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# suffixes stripped by ``normalize_id``; matched case-insensitively
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic")

# the INQUIRE paper scores AP, nDCG and MRR over the top 50
DEFAULT_CUTOFF = 50


def normalize_id(value: object) -> str:
    """Return ``value`` as a string with one trailing image extension removed (``"a/b.JPG"`` -> ``"a/b"``)."""
    text = str(value).strip()
    lowered = text.lower()
    for ext in IMAGE_EXTENSIONS:
        if lowered.endswith(ext) and len(text) > len(ext):
            return text[: -len(ext)]
    return text


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_relevant(relevant: Collection[Hashable]) -> None:
    if not relevant:
        raise ValueError("the query has no relevant items; its score is undefined")


def hit_ranks(ranked: Iterable[Hashable | None], relevant: Collection[Hashable], k: int) -> list[int]:
    """1-based ranks (<= k) at which a relevant item first appears; repeated ids and ``None`` padding never hit."""
    _check_k(k)
    ranks: list[int] = []
    seen: set[Hashable] = set()
    for rank, item in enumerate(ranked, start=1):
        if rank > k:
            break
        if item is None or item in seen:
            continue
        seen.add(item)
        if item in relevant:
            ranks.append(rank)
    return ranks


def recall_at_k(ranked: Sequence[Hashable | None], relevant: Collection[Hashable], k: int) -> float:
    _check_relevant(relevant)
    return len(hit_ranks(ranked, relevant, k)) / len(relevant)


def average_precision_at_k(
    ranked: Sequence[Hashable | None], relevant: Collection[Hashable], k: int = DEFAULT_CUTOFF
) -> float:
    _check_relevant(relevant)
    ranks = hit_ranks(ranked, relevant, k)
    precision_sum = sum(n_hits / rank for n_hits, rank in enumerate(ranks, start=1))
    return precision_sum / min(len(relevant), k)


def ndcg_at_k(ranked: Sequence[Hashable | None], relevant: Collection[Hashable], k: int = DEFAULT_CUTOFF) -> float:
    _check_relevant(relevant)
    dcg = sum(1.0 / math.log2(rank + 1) for rank in hit_ranks(ranked, relevant, k))
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return dcg / ideal


def reciprocal_rank(
    ranked: Sequence[Hashable | None], relevant: Collection[Hashable], k: int = DEFAULT_CUTOFF
) -> float:
    _check_relevant(relevant)
    ranks = hit_ranks(ranked, relevant, k)
    return 1.0 / ranks[0] if ranks else 0.0


@dataclass(frozen=True)
class RetrievalScores:
    """Quality metrics averaged over the queries that have at least one relevant item."""

    recall: dict[int, float]
    average_precision: float
    ndcg: float
    mrr: float
    cutoff: int
    n_scored: int
    n_without_relevant: int


def retrieval_scores(
    rankings: Sequence[Sequence[Hashable | None]],
    relevant_sets: Sequence[Collection[Hashable]],
    *,
    recall_at: Sequence[int],
    cutoff: int = DEFAULT_CUTOFF,
) -> RetrievalScores:
    """Average recall@k for every k in ``recall_at``, AP@cutoff, nDCG@cutoff and MRR@cutoff over the queries."""
    if len(rankings) != len(relevant_sets):
        raise ValueError(f"got {len(rankings)} rankings for {len(relevant_sets)} relevance sets")
    for k in recall_at:
        _check_k(k)
    _check_k(cutoff)
    recalls: dict[int, list[float]] = {k: [] for k in recall_at}
    aps: list[float] = []
    ndcgs: list[float] = []
    rrs: list[float] = []
    skipped = 0
    for ranked, relevant in zip(rankings, relevant_sets, strict=True):
        if not relevant:
            skipped += 1
            continue
        for k in recall_at:
            recalls[k].append(recall_at_k(ranked, relevant, k))
        aps.append(average_precision_at_k(ranked, relevant, cutoff))
        ndcgs.append(ndcg_at_k(ranked, relevant, cutoff))
        rrs.append(reciprocal_rank(ranked, relevant, cutoff))
    return RetrievalScores(
        recall={k: _mean(v) for k, v in recalls.items()},
        average_precision=_mean(aps),
        ndcg=_mean(ndcgs),
        mrr=_mean(rrs),
        cutoff=cutoff,
        n_scored=len(aps),
        n_without_relevant=skipped,
    )


def ann_recall_at_k(approx_ids: NDArray[np.int64], exact_ids: NDArray[np.int64], k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k; -1 padding never counts.

    When the exact baseline returns fewer than k valid ids (gallery smaller than k) the denominator is that
    number; queries whose exact list is empty are left out (NaN when none remain).
    """
    _check_k(k)
    approx = np.asarray(approx_ids)
    exact = np.asarray(exact_ids)
    if approx.ndim != 2 or exact.ndim != 2 or approx.shape[0] != exact.shape[0]:
        raise ValueError(f"expected two (n_queries, k) arrays, got {approx.shape} and {exact.shape}")
    values: list[float] = []
    for approx_row, exact_row in zip(approx[:, :k], exact[:, :k], strict=True):
        truth = set(exact_row[exact_row >= 0].tolist())
        if not truth:
            continue
        found = set(approx_row[approx_row >= 0].tolist())
        values.append(len(found & truth) / len(truth))
    return _mean(values)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
