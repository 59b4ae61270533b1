"""``img-search debug-scores IMAGE --query ...``: the seed's ``debug_siglip_scores.py`` (seed 003), on the library.

For one image and a few queries it shows what every score means at once: the raw cosine of IMAGE to each query, the
model's learned probability ``sigmoid(exp(t') * cos + b)`` (None for CLIP), the seed's fixed-temperature scores
``sigmoid(T * cos)`` for T = 10, 15, 20, 25, 30, where IMAGE ranks in the collection for that query, and the
distribution of the query's cosines over the whole collection (a histogram), so a cutoff can be chosen by looking.

It uses only the searcher's public parts: ``searcher.encoder`` (text and image towers), ``searcher.collection``
(``catalog().vector_for`` for an indexed image's stored vector, ``search`` over every image for the distribution).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from img_search.errors import EmptyCollectionError, InvalidInputError
from img_search.search.calibration import SEED_TEMPERATURES, Calibration, calibrate_siglip_score, check_temperature

if TYPE_CHECKING:
    from img_search.search.searcher import Searcher

#: Histogram bins of the score distribution by default.
DEFAULT_BINS = 10
#: Percentiles reported for the score distribution.
PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)
_BAR_WIDTH = 40


@dataclass(frozen=True)
class ScoreDistribution:
    """The cosines of every live image of the collection to one query: summary statistics and a histogram of
    ``len(counts)`` equal-width bins; ``edges`` has one more value than ``counts`` (bin i is ``[edges[i],
    edges[i+1])``, the last one closed). ``image_bin`` is the bin holding IMAGE's cosine (None when it lies outside,
    possible only for an image that is not in the collection)."""

    count: int
    minimum: float
    maximum: float
    mean: float
    std: float
    percentiles: dict[int, float]
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    image_bin: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "min": self.minimum, "max": self.maximum, "mean": self.mean, "std": self.std,
                "percentiles": {str(p): v for p, v in self.percentiles.items()},
                "histogram": {"edges": list(self.edges), "counts": list(self.counts), "image_bin": self.image_bin}}


@dataclass(frozen=True)
class QueryScores:
    """One query's scores for IMAGE.

    ``cosine``: raw cosine of IMAGE's vector to the query's (float, [-1, 1]). ``probability``: the model's learned
    calibration of that cosine (None for a model without one, CLIP). ``temperature_scores``: ``(T, sigmoid(T *
    cosine))`` per asked temperature. ``rank``: IMAGE's 1-based position among the collection's live images for this
    query, best first: its own position when the file is in the collection, else where it would land (1 + the number
    of images with a higher cosine). ``distribution``: every image's cosine to the query.
    """

    query: str
    cosine: float
    probability: float | None
    temperature_scores: tuple[tuple[float, float], ...]
    rank: int
    distribution: ScoreDistribution

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "cosine": self.cosine, "probability": self.probability,
                "temperature_scores": {_t(t): p for t, p in self.temperature_scores},
                "rank": self.rank, "distribution": self.distribution.to_dict()}


@dataclass(frozen=True)
class DebugReport:
    """What ``debug_scores`` found. ``image_id``: the catalog row of IMAGE's path (None when this path is not in the
    collection: then ranks are where it would land). ``vector_source``: ``"catalog"`` (its bytes are indexed: the
    stored vector) or ``"encoded"`` (embedded now). ``calibration``: the model's learned one (None for CLIP)."""

    image: str
    image_id: int | None
    vector_source: str
    model: str
    family: str | None
    collection_size: int
    calibration: Calibration | None
    temperatures: tuple[float, ...]
    queries: tuple[QueryScores, ...]

    def to_dict(self) -> dict[str, Any]:
        calib = None if self.calibration is None else {
            "logit_scale": self.calibration.logit_scale, "logit_bias": self.calibration.logit_bias,
            "multiplier": self.calibration.temperature}
        return {"image": self.image, "image_id": self.image_id, "vector_source": self.vector_source,
                "model": self.model, "family": self.family, "collection_size": self.collection_size,
                "calibration": calib, "temperatures": list(self.temperatures),
                "queries": [q.to_dict() for q in self.queries]}


def _t(temperature: float) -> str:
    """A temperature as a short label: 25.0 -> "25", 17.5 -> "17.5"."""
    return f"{temperature:g}"


def _check_queries(queries: Iterable[str]) -> list[str]:
    if isinstance(queries, str):
        queries = [queries]
    out = list(queries)
    if not out:
        raise InvalidInputError("give at least one query (--query TEXT)")
    for q in out:
        if not isinstance(q, str) or not q.strip():
            raise InvalidInputError("a query text is empty")
    return out


def _check_temperatures(temperatures: Iterable[float]) -> tuple[float, ...]:
    values: list[float] = []
    for t in temperatures:
        value = check_temperature(t)
        if value not in values:
            values.append(value)
    if not values:
        raise InvalidInputError("give at least one temperature")
    return tuple(values)


def _check_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 200:
        raise InvalidInputError(f"bins must be a whole number from 1 to 200, got {bins!r}")
    return bins


def image_vector(searcher: Searcher, image_path: str | os.PathLike[str], *,
                 max_image_pixels: int | None = None) -> tuple[NDArray[np.float32], int | None, str]:
    """(IMAGE's vector (dim,) float32 unit length, its catalog image id or None, "catalog" | "encoded").

    The stored vector when the file's bytes are indexed with the collection's model (no model run), else the file is
    decoded and embedded with the searcher's encoder. Raises ``NotFoundError`` (no such file) and ``ImageDecodeError``
    (an ``InvalidInputError``: unreadable, not an image, too large).
    """
    from img_search.data.images import check_query_file, content_hash, decode_image, read_file
    from img_search.data.paths import canonical_folder

    abspath = check_query_file(os.fspath(image_path))
    data = read_file(abspath, max_image_pixels=max_image_pixels)
    collection = searcher.collection
    catalog = collection.catalog()
    # the catalog names files under their folder's canonical path (symlinks and bind mounts resolved)
    folder, name = os.path.split(abspath)
    row = catalog.image(os.path.join(canonical_folder(folder), name)) or catalog.image(abspath)
    image_id = row.id if row is not None and row.status == "ok" else None
    stored = catalog.vector_for(collection.model.id, content_hash(data))
    if stored is not None:
        return np.asarray(stored, dtype=np.float32), image_id, "catalog"
    kwargs = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
    vec = searcher.encoder.encode_images([decode_image(data, **kwargs)])[0]
    return np.asarray(vec, dtype=np.float32), image_id, "encoded"


def _distribution(cosines: NDArray[np.float64], image_cosine: float, bins: int) -> ScoreDistribution:
    counts, edges = np.histogram(cosines, bins=bins)
    image_bin: int | None = None
    if edges[0] <= image_cosine <= edges[-1]:
        image_bin = min(int(np.searchsorted(edges, image_cosine, side="right")) - 1, bins - 1)
    pct = np.percentile(cosines, PERCENTILES)
    return ScoreDistribution(
        count=int(cosines.size), minimum=float(cosines.min()), maximum=float(cosines.max()),
        mean=float(cosines.mean()), std=float(cosines.std()),
        percentiles={p: float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        edges=tuple(float(e) for e in edges), counts=tuple(int(c) for c in counts), image_bin=image_bin)


def debug_scores(searcher: Searcher, image_path: str | os.PathLike[str], queries: Sequence[str],
                 temperatures: Iterable[float] = SEED_TEMPERATURES, *, bins: int = DEFAULT_BINS,
                 max_image_pixels: int | None = None) -> DebugReport:
    """Every score of IMAGE for each of ``queries`` (see ``QueryScores``), with the collection's score distribution.

    ``temperatures``: the fixed temperatures to show (default the seed's 10, 15, 20, 25, 30). ``bins``: histogram
    bins (1 ... 200). Loads the text tower (and the image tower when IMAGE is not indexed). Raises
    ``InvalidInputError`` (no query, an empty query, a bad temperature or bins, IMAGE not an image),
    ``NotFoundError`` (IMAGE missing), ``EmptyCollectionError`` (nothing indexed with the model).
    """
    texts = _check_queries(queries)
    temps = _check_temperatures(temperatures)
    bins = _check_bins(bins)
    image_vec, image_id, source = image_vector(searcher, image_path, max_image_pixels=max_image_pixels)
    encoder = searcher.encoder
    # one query per forward pass, as `search` encodes it: an int8 text tower quantizes its activations per batch
    # (ONNX Runtime dynamic quantization), so a query's vector moves slightly with the texts batched beside it
    text_vecs = np.concatenate([np.asarray(encoder.encode_texts([t]), dtype=np.float32) for t in texts])
    learned = Calibration.maybe(encoder.info.logit_scale, encoder.info.logit_bias)
    collection = searcher.collection
    size = len(collection)
    per_query = collection.search(text_vecs, limit=max(size, 1))
    if not per_query[0]:
        raise EmptyCollectionError(f"no live images are indexed with model {collection.model.name!r}")
    cosines = text_vecs.astype(np.float64) @ image_vec.astype(np.float64)
    results = []
    for text, cos, pairs in zip(texts, cosines.tolist(), per_query, strict=True):
        scores = np.fromiter((c for _, c in pairs), dtype=np.float64, count=len(pairs))
        position = next((i for i, (row, _) in enumerate(pairs) if row.id == image_id), None)
        rank = position + 1 if position is not None else 1 + int(np.count_nonzero(scores > cos))
        prob = float(learned.probability(cos)) if learned is not None else None
        temp_scores = tuple((t, float(calibrate_siglip_score(cos, t))) for t in temps)
        results.append(QueryScores(text, float(cos), prob, temp_scores, rank, _distribution(scores, cos, bins)))
    return DebugReport(image=os.path.abspath(os.fspath(image_path)), image_id=image_id, vector_source=source,
                       model=collection.model.name, family=collection.model.family, collection_size=len(per_query[0]),
                       calibration=learned, temperatures=temps, queries=tuple(results))


def format_report(report: DebugReport, display: Callable[[str], str] = str) -> str:
    """``report`` as readable text: a header, one table row per query, then a text histogram per query with IMAGE's
    bin marked. ``display`` makes paths and query texts safe to print (the CLI passes its ``display_path``)."""
    lines = []
    where = (f"in the collection, image id {report.image_id}" if report.image_id is not None
             else "not in the collection at this path: ranks are where it would land")
    lines.append(f"image: {display(report.image)} ({where}; vector "
                 f"{'stored in the catalog' if report.vector_source == 'catalog' else 'embedded now'})")
    if report.calibration is not None:
        bias = report.calibration.logit_bias
        calib = (f"learned calibration sigmoid({report.calibration.temperature:.4g} * cos "
                 f"{'-' if bias < 0 else '+'} {abs(bias):.4g})")
    else:
        calib = "no learned calibration (softmax-trained model): learned p is '-'"
    lines.append(f"model: {display(report.model)} ({report.family or 'unknown family'}), "
                 f"{report.collection_size} images; {calib}")
    lines.append("")
    qwidth = min(max(len(display(repr(q.query))) for q in report.queries), 40)
    temp_heads = "".join(f"{'T=' + _t(t):>8}" for t in report.temperatures)
    lines.append(f"{'query':<{qwidth}}  {'cosine':>8}  {'learned p':>9}  {'rank':>9}{temp_heads}")
    for q in report.queries:
        prob = "-" if q.probability is None else f"{q.probability:.4f}"
        rank = f"{q.rank}/{q.distribution.count}"
        temps = "".join(f"{p:>8.3f}" for _, p in q.temperature_scores)
        lines.append(f"{display(repr(q.query)):<{qwidth}}  {q.cosine:>+8.4f}  {prob:>9}  {rank:>9}{temps}")
    lines.append("(T=...: the seed's sigmoid(T * cos), no bias; learned p: the model's own "
                 "sigmoid(exp(t') * cos + b))")
    for q in report.queries:
        d = q.distribution
        pct = ", ".join(f"p{p} {v:+.4f}" for p, v in d.percentiles.items())
        lines.append("")
        lines.append(f"cosines of the {d.count} images to {display(repr(q.query))}: min {d.minimum:+.4f}, "
                     f"{pct}, max {d.maximum:+.4f}")
        top = max(d.counts) if d.counts else 0
        for i, count in enumerate(d.counts):
            closing = "]" if i == len(d.counts) - 1 else ")"
            bar = "#" * (math.ceil(_BAR_WIDTH * count / top) if top and count else 0)
            mark = "  <- image" if i == d.image_bin else ""
            lines.append(f"  [{d.edges[i]:+.4f}, {d.edges[i + 1]:+.4f}{closing} {count:>6} "
                         f"{bar}{mark}")
        if d.image_bin is None:
            lines.append(f"  image's cosine {q.cosine:+.4f} lies outside the collection's range")
    return "\n".join(lines)
