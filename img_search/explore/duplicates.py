"""Near-duplicate images: groups of live images whose vectors are nearly the same.

Every live vector is searched, in batches, through the collection's own index (``Collection.search``: exact below the
ANN threshold, the saved ANN index above it) for its ``k`` nearest neighbours; each pair at or above ``threshold``
cosine is an edge, and edges are joined into groups with union-find (single linkage: A ~ B and B ~ C puts A, B and C
in one group even when A and C are further apart). Cost: n searches of k + 1 neighbours, O(n k) pairs examined,
never the n^2 / 2 pairs of an all-pairs loop (docs/PERFORMANCE.md, "Near-duplicates").

Default threshold 0.95 (``DEFAULT_THRESHOLD``, ``settings.ExploreSettings.duplicate_threshold``). Byte-identical
files share one vector (they are stored once per content hash: cosine 1.0). Copies re-encoded at another JPEG quality
or resized change only high-frequency detail, which the image towers of SigLIP / CLIP are trained to ignore, so their
vectors move much less than those of two different shots of one scene (a burst, a re-framed photo). 0.95 is the usual
starting point for CLIP-family near-duplicate detection: strict enough to keep distinct shots apart, loose enough for
recompressed and resized copies. It was not measured on a real checkpoint here (this project's machines reach no model
hub); the tests measure what re-encoded copies score with their tiny random-weight model, and docs/EXPLORE.md says how
to check the value on your own pictures (``duplicates --threshold 0.9 --json`` and look at ``min_cosine``). Lower it
(0.9) to also group bursts, raise it (0.98-0.99) to keep only copies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.errors import EmptyCollectionError, InvalidInputError

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95
DEFAULT_K = 10
DEFAULT_BATCH = 256  # queries per Collection.search call: bounds the (batch, k) score arrays and the catalog lookups
# groups up to this size get their min / max cosine over all member pairs (exact, from the vectors); larger ones
# over the linking pairs only (a group of thousands is a pile of copies, and m^2 / 2 pairs would dominate the run)
EXACT_PAIRS_MAX = 1024


@dataclass(frozen=True)
class DuplicateGroup:
    """One group of near-identical images, ``image_ids`` ascending with their ``paths`` in the same order.

    ``min_cosine`` / ``max_cosine``: the lowest and highest cosine between two members: over all pairs of the group
    when it has at most ``EXACT_PAIRS_MAX`` members, else over the pairs that linked it (``exact_pairs`` False).
    Single linkage means ``min_cosine`` can be below the threshold (A ~ B ~ C with A, C further apart)."""

    image_ids: tuple[int, ...]
    paths: tuple[str, ...]
    min_cosine: float
    max_cosine: float
    exact_pairs: bool = True

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def size(self) -> int:
        return len(self.image_ids)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "image_ids": list(self.image_ids), "paths": list(self.paths),
                "min_cosine": self.min_cosine, "max_cosine": self.max_cosine, "exact_pairs": self.exact_pairs}


class UnionFind:
    """Disjoint sets over arbitrary hashable keys (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        if x not in parent:
            parent[x] = x
            self.size[x] = 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]


def check_threshold(value: Any) -> float:
    """``value`` as a cosine in [-1, 1], or ``InvalidInputError``."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"duplicate threshold must be a cosine between -1 and 1, got {value!r}") from None
    if not math.isfinite(t) or not -1.0 <= t <= 1.0:
        raise InvalidInputError(f"duplicate threshold must be a cosine between -1 and 1, got {value!r}")
    return t


def check_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidInputError(f"k (neighbours searched per image) must be a whole number >= 1, got {value!r}")
    return int(value)


def find_duplicates(collection: Any, threshold: float = DEFAULT_THRESHOLD, k: int = DEFAULT_K, *,
                    batch_size: int = DEFAULT_BATCH, on_progress: Callable[[int, int], None] | None = None
                    ) -> list[DuplicateGroup]:
    """Groups of near-duplicate live images of ``collection`` (a ``search.collection.Collection``), largest first
    (ties: highest ``max_cosine``, then lowest first id).

    ``threshold``: the cosine at or above which two images are duplicates; ``k``: neighbours searched per image (a
    group bigger than k + 1 is still found whole when its members are linked through each other's neighbours, as
    identical copies always are). ``on_progress(done, total)`` is called after each batch.
    Raises ``InvalidInputError`` (threshold, k), ``EmptyCollectionError``.
    """
    threshold = check_threshold(threshold)
    k = check_k(k)
    model = collection.model
    dim = int(model.dim or 0)
    catalog = collection.catalog()
    ids, vectors = catalog.load_vectors(model.id, dim)
    n = len(ids)
    if n == 0:
        raise EmptyCollectionError(f"no images are indexed with model {model.name!r}")
    uf = UnionFind()
    edge_min: dict[int, float] = {}  # per linked image: the lowest / highest cosine of its linking pairs
    edge_max: dict[int, float] = {}
    paths: dict[int, str] = {}
    limit = min(k + 1, n)  # +1: each image finds itself
    for start in range(0, n, batch_size):
        q_ids = ids[start : start + batch_size]
        results = collection.search(vectors[start : start + batch_size], limit=limit)
        for qid, hits in zip(q_ids.tolist(), results, strict=True):
            for row, cos in hits:  # best first
                if cos < threshold:
                    break
                if row.id == qid:
                    continue
                uf.union(qid, row.id)
                paths[row.id] = row.path
                for member in (qid, row.id):
                    edge_min[member] = min(edge_min.get(member, cos), cos)
                    edge_max[member] = max(edge_max.get(member, cos), cos)
        if on_progress is not None:
            on_progress(min(start + batch_size, n), n)
    groups = uf.groups()
    missing = {i for g in groups for i in g if i not in paths}
    if missing:
        paths.update({i: r.path for i, r in catalog.images_by_id(missing).items()})
    position = {int(i): p for p, i in enumerate(ids.tolist())} if groups else {}
    out: list[DuplicateGroup] = []
    for members in groups:
        members = [m for m in members if m in paths]  # an image deleted meanwhile has no path: left out
        if len(members) < 2:
            continue
        if len(members) <= EXACT_PAIRS_MAX:
            v = vectors[[position[m] for m in members]].astype(np.float64)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            sims = v @ v.T
            upper = sims[np.triu_indices(len(members), 1)]
            lo, hi, exact = float(upper.min()), float(upper.max()), True
        else:
            lo = min(edge_min[m] for m in members if m in edge_min)
            hi = max(edge_max[m] for m in members if m in edge_max)
            exact = False
        out.append(DuplicateGroup(tuple(members), tuple(paths[m] for m in members), min(lo, 1.0), min(hi, 1.0),
                                  exact))
    out.sort(key=lambda g: (-g.size, -g.max_cosine, g.image_ids[0]))
    logger.info("%d near-duplicate groups (%d images) among %d at cosine >= %g", len(out),
                sum(g.size for g in out), n, threshold)
    return out


def pairs_above(vectors: NDArray[np.float32], threshold: float) -> set[tuple[int, int]]:
    """Every pair (i < j) of rows of ``vectors`` with cosine >= ``threshold``, by brute force: a reference for tests
    and benchmarks on small sets (O(n^2) memory), never used by ``find_duplicates``."""
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sims = v @ v.T
    i, j = np.nonzero(np.triu(sims >= threshold, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))
