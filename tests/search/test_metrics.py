"""Retrieval metrics against hand-computed values (INQUIRE's definitions, see img_search/search/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from img_search.search.metrics import (
    ann_recall_at_k,
    average_precision_at_k,
    hit_ranks,
    ndcg_at_k,
    normalize_id,
    recall_at_k,
    reciprocal_rank,
    retrieval_scores,
)

# relevant a, b, c, d; the ranking finds a, b, c at ranks 1, 3, 5 and misses d
RANKED = ["a", "x", "b", "y", "c", "z"]
RELEVANT = {"a", "b", "c", "d"}


def test_recall_counts_the_missed_item_in_the_denominator() -> None:
    assert recall_at_k(RANKED, RELEVANT, 1) == pytest.approx(1 / 4)
    assert recall_at_k(RANKED, RELEVANT, 3) == pytest.approx(2 / 4)
    assert recall_at_k(RANKED, RELEVANT, 5) == pytest.approx(3 / 4)
    assert recall_at_k(RANKED, RELEVANT, 50) == pytest.approx(3 / 4)


def test_average_precision_penalises_missed_positives() -> None:
    # precision at the hits: 1/1, 2/3, 3/5; divided by min(|relevant|=4, 50), not by the 3 hits
    expected = (1 / 1 + 2 / 3 + 3 / 5) / 4
    assert average_precision_at_k(RANKED, RELEVANT, 50) == pytest.approx(expected)
    assert expected == pytest.approx(0.5666667, abs=1e-6)
    # cut at 3: hits at 1 and 3, denominator min(4, 3) = 3
    assert average_precision_at_k(RANKED, RELEVANT, 3) == pytest.approx((1 + 2 / 3) / 3)


def test_ndcg_uses_the_ideal_over_min_relevant_and_k() -> None:
    dcg = 1 / math.log2(2) + 1 / math.log2(4) + 1 / math.log2(6)
    ideal = sum(1 / math.log2(i + 1) for i in range(1, 5))
    assert ndcg_at_k(RANKED, RELEVANT, 50) == pytest.approx(dcg / ideal)
    assert dcg / ideal == pytest.approx(0.73659, abs=1e-5)
    # k=2: one hit at rank 1, ideal over min(4, 2) = 2 positives
    assert ndcg_at_k(RANKED, RELEVANT, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_reciprocal_rank_of_the_first_hit_within_the_cutoff() -> None:
    assert reciprocal_rank(RANKED, RELEVANT) == 1.0
    assert reciprocal_rank(["x", "y", "b"], {"b"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y", "z", "b"], {"b"}, k=3) == 0.0
    assert reciprocal_rank(["x"], {"b"}) == 0.0


def test_more_relevant_items_than_the_cutoff() -> None:
    relevant = {f"r{i}" for i in range(60)}
    ranked = [f"r{i}" for i in range(50)]
    assert average_precision_at_k(ranked, relevant, 50) == pytest.approx(1.0)  # denominator min(60, 50)
    assert ndcg_at_k(ranked, relevant, 50) == pytest.approx(1.0)
    assert recall_at_k(ranked, relevant, 50) == pytest.approx(50 / 60)


def test_repeated_ids_count_once_and_padding_never_hits() -> None:
    assert hit_ranks(["a", "a", "b", None], {"a", "b"}, 4) == [1, 3]
    assert average_precision_at_k(["a", "a", "b"], {"a", "b"}) == pytest.approx((1 + 2 / 3) / 2)
    assert recall_at_k([None, None, "a"], {"a", "b"}, 3) == pytest.approx(0.5)


def test_a_query_without_relevant_items_is_an_error_per_query_and_skipped_in_averages() -> None:
    with pytest.raises(ValueError, match="no relevant"):
        recall_at_k(["a"], set(), 1)
    scores = retrieval_scores([RANKED, ["b", "a"], ["q"]], [RELEVANT, {"a"}, set()], recall_at=[1, 5], cutoff=50)
    assert scores.n_scored == 2
    assert scores.n_without_relevant == 1
    assert scores.recall[1] == pytest.approx((1 / 4 + 0) / 2)
    assert scores.recall[5] == pytest.approx((3 / 4 + 1) / 2)
    assert scores.average_precision == pytest.approx(((1 + 2 / 3 + 3 / 5) / 4 + 1 / 2) / 2)
    assert scores.mrr == pytest.approx((1 + 1 / 2) / 2)
    assert scores.ndcg == pytest.approx((0.7365897 + 1 / math.log2(3)) / 2, abs=1e-6)


def test_ties_are_ranked_in_gallery_order_by_the_exact_baseline() -> None:
    # g0 and g1 hold the same vector: equal scores, so gallery order decides and g1 lands at rank 2
    from img_search.index import create_index

    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    gallery_ids = ["g0", "g1", "g2"]
    index = create_index("exact", dim=2, metric="cosine")
    index.add(np.arange(3), vectors)
    ids, scores = index.search(np.array([[1.0, 0.0]], dtype=np.float32), 3)
    assert scores[0, 0] == scores[0, 1]
    ranked = [gallery_ids[i] for i in ids[0]]
    assert ranked == ["g0", "g1", "g2"]
    assert reciprocal_rank(ranked, {"g1"}) == pytest.approx(1 / 2)
    assert average_precision_at_k(ranked, {"g1"}) == pytest.approx(1 / 2)
    assert ndcg_at_k(ranked, {"g1"}) == pytest.approx(1 / math.log2(3))


def test_ann_recall_against_exact() -> None:
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[1, 2, 9], [4, 5, 6]])
    assert ann_recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert ann_recall_at_k(approx, exact, 2) == pytest.approx(1.0)
    assert ann_recall_at_k(approx, exact, 1) == pytest.approx(1.0)
    # the exact list is shorter than k (tiny gallery): the denominator is what exact found
    assert ann_recall_at_k(np.array([[7, 8, 3]]), np.array([[7, -1, -1]]), 3) == pytest.approx(1.0)
    assert math.isnan(ann_recall_at_k(np.array([[1]]), np.array([[-1]]), 1))
    with pytest.raises(ValueError):
        ann_recall_at_k(np.array([1, 2]), np.array([[1, 2]]), 1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0a1b2c3d", "0a1b2c3d"),
        ("0a1b2c3d.jpg", "0a1b2c3d"),
        ("train/Plantae/123.JPEG", "train/Plantae/123"),
        ("shot.png", "shot"),
        ("archive.tar.gz", "archive.tar.gz"),
        ("double.jpg.jpg", "double.jpg"),
        (".jpg", ".jpg"),
        (12345, "12345"),
    ],
)
def test_normalize_id_strips_one_image_extension(raw: object, expected: str) -> None:
    assert normalize_id(raw) == expected


def test_invalid_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(["a"], {"a"}, 0)
