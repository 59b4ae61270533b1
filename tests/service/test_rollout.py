"""service/rollout.py: hashed sticky buckets (uniform over any ids, unlike the seed's user_id % 100), the decision
between CLIP and SigLIP, and the guard against an incomplete SigLIP collection."""

from __future__ import annotations

import pytest

from img_search.errors import InvalidInputError
from img_search.service.rollout import (
    Rollout,
    RolloutState,
    Side,
    bucket_of,
    decide,
    incomplete_reason,
    request_bucket,
)

N_IDS = 10_000
CLIP, SIGLIP = Side("image_assets", 1000), Side("image_assets_siglip", 1000)

ID_SETS = {
    "sequential ints": list(range(N_IDS)),
    # the seed's bucket (user_id % 100) sends every one of these to bucket 0: 100 % SigLIP at any rollout > 0
    "multiples of 100": [i * 100 for i in range(N_IDS)],
    "uuid-like strings": [f"{i:08x}-7c1e-4c2a-9f1e-{i * 7919:012x}" for i in range(N_IDS)],
    "emails": [f"user{i}@example.org" for i in range(N_IDS)],
}


def _share_to_siglip(ids: list[int] | list[str], percentage: float) -> float:
    state = RolloutState(percentage)
    hits = 0
    for uid in ids:
        bucket, sticky_by = request_bucket(uid, None)
        hits += decide(state, CLIP, SIGLIP, bucket, sticky_by).collection == SIGLIP.name
    return 100 * hits / len(ids)


@pytest.mark.parametrize("id_set", sorted(ID_SETS))
@pytest.mark.parametrize("percentage", [1, 10, 25, 50, 90])
def test_share_within_two_points_over_10000_ids(id_set: str, percentage: float) -> None:
    share = _share_to_siglip(ID_SETS[id_set], percentage)
    assert abs(share - percentage) <= 2, (id_set, percentage, share)


def test_zero_and_hundred_are_exact() -> None:
    ids = ID_SETS["emails"]
    assert _share_to_siglip(ids, 0) == 0
    assert _share_to_siglip(ids, 100) == 100


def test_buckets_are_sticky_and_monotonic_in_the_percentage() -> None:
    ids = ID_SETS["uuid-like strings"][:2000]
    first = [request_bucket(uid, None) for uid in ids]
    assert first == [request_bucket(uid, None) for uid in ids]  # same id, same bucket, every time
    assert all(0 <= b < 100 and by == "user_id" for b, by in first)
    # raising the rollout only moves users from CLIP to SigLIP, never back: a user's model changes at most once
    at_10 = {uid for uid, (b, _) in zip(ids, first, strict=True) if b < 10}
    at_30 = {uid for uid, (b, _) in zip(ids, first, strict=True) if b < 30}
    assert at_10 <= at_30 and len(at_30) > len(at_10)


def test_int_and_str_ids_are_one_user_and_session_keys_are_separate() -> None:
    assert request_bucket(23, None) == request_bucket("23", None)
    assert request_bucket(None, "abc") == (bucket_of("session:abc"), "session_key")
    assert request_bucket(7, "abc")[1] == "user_id"  # the user id wins over the session key
    assert request_bucket(None, "abc") == request_bucket(None, "abc")


def test_anonymous_requests_are_random() -> None:
    draws = [request_bucket(None, None) for _ in range(2000)]
    assert all(by == "random" for _, by in draws)
    share = 100 * sum(b < 25 for b, _ in draws) / len(draws)
    assert 20 <= share <= 30 and len({b for b, _ in draws}) > 500


def test_incomplete_siglip_is_refused_unless_forced() -> None:
    partial = Side(SIGLIP.name, 400)
    refused = decide(RolloutState(100), CLIP, partial, 5.0, "user_id")
    assert refused.collection == CLIP.name and refused.rule == "incomplete"
    assert "400 of the 1000 points" in refused.reason and refused.problem
    forced = decide(RolloutState(100, force=True), CLIP, partial, 5.0, "user_id")
    assert (forced.collection, forced.rule, forced.forced) == (SIGLIP.name, "forced", True)
    empty = decide(RolloutState(100), CLIP, Side(SIGLIP.name, 0), 5.0, "user_id")
    assert empty.collection == CLIP.name and "is empty" in empty.reason
    # a bucket above the rollout goes to CLIP whatever SigLIP holds, with no problem to report
    above = decide(RolloutState(10), CLIP, partial, 50.0, "user_id")
    assert above.collection == CLIP.name and above.rule == "rollout" and above.problem is None


def test_more_siglip_points_than_clip_is_complete_and_empty_clip_falls_back() -> None:
    assert incomplete_reason(Side("s", 1001), CLIP) is None
    fallback = decide(RolloutState(0), Side(CLIP.name, 0), SIGLIP, 99.0, "random")
    assert fallback.collection == SIGLIP.name and fallback.rule == "fallback"


def test_rollout_set_validates_and_records_the_change() -> None:
    rollout = Rollout.from_settings(use_siglip=False, percentage=10)
    assert rollout.state.percentage == 10 and rollout.state.source == "settings"
    assert Rollout.from_settings(use_siglip=True, percentage=10).state.percentage == 100  # the seed's full mode
    new = rollout.set(0.5, force=True)
    assert rollout.state is new and (new.percentage, new.force, new.source) == (0.5, True, "admin")
    for bad in (-1, 100.01, float("nan"), "x"):
        with pytest.raises(InvalidInputError, match="percentage"):
            rollout.set(bad)  # type: ignore[arg-type]
    assert rollout.state is new
