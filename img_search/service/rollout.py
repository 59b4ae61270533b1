"""Which collection answers a search: the SigLIP rollout of seed 002, made sticky, uniform and safe.

* The seed's bucket was the numeric ``user_id`` itself (``user_id % 100``): sticky, but only uniform when ids are;
  ids that are multiples of 100 all landed in bucket 0. Ours hashes the id: ``bucket = (first 8 bytes of
  BLAKE2b(key), big-endian) mod 10000 / 100``, a number in [0, 100) with 0.01 resolution, uniform over any set of
  distinct ids. A search goes to SigLIP when ``bucket < percentage``. The key is ``"user:" + str(user_id)`` (so the
  user ``23`` and ``"23"`` are one user); an anonymous caller may send a ``session_key`` instead
  (``"session:" + key``) to stay in one bucket; with neither, the bucket is drawn at random for each request.
* The rollout applies only when both the CLIP and the SigLIP collections exist; with one of them (or one model)
  indexed, every search goes to it.
* The SigLIP collection is the re-embedding of the CLIP one: while it holds fewer points than the CLIP collection
  (or none), it is never routed to - the seed's "empty search results" trap - unless the admin route forced it;
  the response's ``routing.reason`` and the log say so.
* ``Rollout`` holds the percentage and the force flag; the admin route replaces them and the next request uses the
  new values (no restart). The state lives in this process: it starts from the settings at every start.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal

from img_search.errors import InvalidInputError

logger = logging.getLogger(__name__)

BUCKETS = 10_000  # 0.01-percent resolution
StickyBy = Literal["user_id", "session_key", "random"]
Rule = Literal["requested", "rollout", "incomplete", "forced", "fallback", "only_collection", "main_model"]


def bucket_of(key: str) -> float:
    """The rollout bucket of ``key``, in [0, 100): the first 8 bytes of BLAKE2b(key) mod 10,000, / 100."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") % BUCKETS) / 100


def request_bucket(user_id: str | int | None, session_key: str | None) -> tuple[float, StickyBy]:
    """The bucket of one request and what made it: the user id, else the session key, else a random draw."""
    if user_id is not None and str(user_id) != "":
        return bucket_of(f"user:{user_id}"), "user_id"
    if session_key:
        return bucket_of(f"session:{session_key}"), "session_key"
    return secrets.randbelow(BUCKETS) / 100, "random"


@dataclass(frozen=True)
class RolloutState:
    """The share of searches (percent, 0-100) routed to SigLIP, and whether an incomplete SigLIP collection is
    used anyway (``force``). ``source``: "settings" at start, "admin" after a change; ``changed_at``: Unix time."""

    percentage: float
    force: bool = False
    source: Literal["settings", "admin"] = "settings"
    changed_at: float = 0.0


class Rollout:
    """The live rollout state of this process; ``set`` takes effect for the next request."""

    def __init__(self, percentage: float, *, force: bool = False) -> None:
        self._lock = threading.Lock()
        self._state = RolloutState(_check_percentage(percentage), force, "settings", time.time())

    @classmethod
    def from_settings(cls, use_siglip: bool, percentage: float) -> Rollout:
        """The seed's flags: ``USE_SIGLIP`` means 100 %; else ``SIGLIP_ROLLOUT_PERCENTAGE``."""
        return cls(100.0 if use_siglip else percentage)

    @property
    def state(self) -> RolloutState:
        return self._state

    def set(self, percentage: float, *, force: bool = False) -> RolloutState:
        """Replace the rollout (``InvalidInputError`` for a percentage outside 0-100); returns the new state."""
        new = RolloutState(_check_percentage(percentage), force, "admin", time.time())
        with self._lock:
            old, self._state = self._state, new
        logger.warning("rollout changed: SigLIP %.2f%% -> %.2f%%%s", old.percentage, new.percentage,
                       " (forced: an incomplete SigLIP collection is used)" if force else "")
        return new


def _check_percentage(value: float) -> float:
    try:
        pct = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"the rollout percentage must be a number from 0 to 100, got {value!r}") from None
    if not 0.0 <= pct <= 100.0:
        raise InvalidInputError(f"the rollout percentage must be from 0 to 100, got {value!r}")
    return pct


@dataclass(frozen=True)
class Side:
    """What routing needs to know of one collection: its name and how many points (live vectors) it holds."""

    name: str
    points: int


@dataclass(frozen=True)
class Decision:
    """Where one search goes and why. ``bucket``/``sticky_by`` are set when the rollout was consulted."""

    collection: str
    rule: Rule
    reason: str
    bucket: float | None = None
    sticky_by: StickyBy | None = None
    percentage: float | None = None
    forced: bool = False
    problem: str | None = None  # why a collection the rollout would pick was not used (logged once per change)


def incomplete_reason(candidate: Side, baseline: Side) -> str | None:
    """Why ``candidate`` (the SigLIP collection) may not take traffic from ``baseline`` (its source), or None."""
    if candidate.points == 0:
        return f"collection {candidate.name!r} is empty"
    if candidate.points < baseline.points:
        return (f"collection {candidate.name!r} is incomplete: {candidate.points} of the {baseline.points} points "
                f"of {baseline.name!r}")
    return None


def decide(state: RolloutState, baseline: Side, candidate: Side, bucket: float, sticky_by: StickyBy) -> Decision:
    """Route one search between the CLIP collection (``baseline``) and the SigLIP one (``candidate``) that both
    exist: to SigLIP when ``bucket < state.percentage`` and SigLIP is complete (or ``state.force``)."""
    pct = state.percentage

    def decision(collection: str, rule: Rule, reason: str, problem: str | None = None) -> Decision:
        return Decision(collection, rule, reason, bucket=bucket, sticky_by=sticky_by, percentage=pct,
                        forced=rule == "forced", problem=problem)

    if baseline.points == 0 and candidate.points > 0:
        empty = f"collection {baseline.name!r} is empty"
        return decision(candidate.name, "fallback", f"{empty}; routed to {candidate.name!r}", empty)
    if bucket >= pct:
        return decision(baseline.name, "rollout", f"bucket {bucket:.2f} >= SigLIP rollout {pct:g}%")
    problem = incomplete_reason(candidate, baseline)
    if problem is None:
        return decision(candidate.name, "rollout", f"bucket {bucket:.2f} < SigLIP rollout {pct:g}%")
    if state.force:
        return decision(candidate.name, "forced", f"bucket {bucket:.2f} < SigLIP rollout {pct:g}%; {problem}, used "
                        "because the rollout is forced", problem)
    return decision(baseline.name, "incomplete", f"bucket {bucket:.2f} < SigLIP rollout {pct:g}% but {problem}; "
                    f"routed to {baseline.name!r} (force the rollout to use it anyway)", problem)
