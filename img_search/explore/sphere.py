"""UMAP onto a sphere: the layout shared by the map (``explore.umap_map``) and the crossfilter database.

``umap.UMAP(metric="cosine", output_metric="haversine")`` lays the vectors out on the unit sphere
(https://umap-learn.readthedocs.io/en/latest/embedding_space.html#spherical-embeddings). Its two output columns are
unbounded angles in radians; we read them as UMAP's optimiser shapes them: column 0 is the polar angle (colatitude)
theta, column 1 the longitude phi. (umap's ``haversine_grad``, which the optimiser follows, shifts column 0 by pi/2,
i.e. treats it as a colatitude; measured on clustered data, reading it as a latitude instead puts the map's nearest
neighbour in another cluster for ~18% of points, as a colatitude for none.) Points are reported as
latitude = 90 - theta and longitude = phi in degrees, wrapped into [-90, 90] x (-180, 180] through the 3-D unit
vector, so two readings of one place on the sphere always give the same numbers.

Near-copies: UMAP's ``transform`` places a new point at a weighted mean of its input-space neighbours' map positions
and then moves it with a short, noisy optimisation; measured on structured synthetic data (docs/EXPLORE.md), a new
point whose vector is a near-copy (cosine 0.999) of a mapped one lands nearest that original for only 12-15% of
points at UMAP's defaults (48% at best, with min_dist=0 and 1,500 epochs), a few degrees away.
``transform_sphere`` therefore places a new point whose nearest mapped vector is at least ``snap_cosine`` similar
(the near-duplicate threshold) exactly on that point; every other new point is placed by UMAP's ``transform``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.optional import require

logger = logging.getLogger(__name__)

# crossfilter's run_umap.py: random_state 42, n_neighbors 15, min_dist 0.1 (also umap-learn's own defaults for the
# last two)
DEFAULT_RANDOM_STATE = 42
DEFAULT_N_NEIGHBORS = 15
DEFAULT_MIN_DIST = 0.1
# below this many points no UMAP is fitted (its spectral initialisation fails on 2-3 points and a 2-D layout of a
# handful says nothing): the points are spread evenly along the equator instead, and the next update fits
MIN_FIT_POINTS = 8


@dataclass(frozen=True)
class SphereParams:
    """What a fit depends on (stored with the fitted model: a change of any refits)."""

    random_state: int = DEFAULT_RANDOM_STATE
    n_neighbors: int = DEFAULT_N_NEIGHBORS
    min_dist: float = DEFAULT_MIN_DIST

    def to_dict(self) -> dict[str, Any]:
        return {"random_state": self.random_state, "n_neighbors": self.n_neighbors, "min_dist": self.min_dist}


def angles_to_latlon(embedding: NDArray[Any]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """UMAP haversine output (n, 2) radians (colatitude, longitude; unbounded) -> (latitude, longitude) in degrees,
    float64, latitude in [-90, 90], longitude in (-180, 180]."""
    e = np.asarray(embedding, dtype=np.float64)
    theta, phi = e[:, 0], e[:, 1]
    x, y, z = np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)
    lat = 90.0 - np.degrees(np.arccos(np.clip(z, -1.0, 1.0)))
    lon = np.degrees(np.arctan2(y, x))
    lon = np.where(lon <= -180.0, lon + 360.0, lon)
    return lat, lon


def latlon_to_unit(latitude: NDArray[Any], longitude: NDArray[Any]) -> NDArray[np.float64]:
    """(latitude, longitude) in degrees -> unit vectors (n, 3), float64: great-circle nearness is their dot product."""
    lat, lon = np.radians(np.asarray(latitude, np.float64)), np.radians(np.asarray(longitude, np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def equator_layout(n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``n`` points evenly spaced along the equator (the layout of collections too small to fit)."""
    lon = -180.0 + (np.arange(n, dtype=np.float64) + 0.5) * (360.0 / max(n, 1))
    return np.zeros(n, np.float64), lon


def _unit_rows(vectors: NDArray[Any]) -> NDArray[np.float32]:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


def require_umap(needed_for: str) -> Any:
    """The ``umap`` module; ``UnavailableError`` naming the ``explore`` extra (pyproject.toml) when umap-learn is
    not installed. Callers check it before any work (``needed_for``: what needs it, for the message)."""
    return require("umap", extra="explore", needed_for=needed_for, package="umap-learn")


def fit_sphere(vectors: NDArray[Any], params: SphereParams | None = None
               ) -> tuple[Any, NDArray[np.float64], NDArray[np.float64]]:
    """Fit UMAP (cosine in, haversine out) to ``vectors`` (float32 (n, dim), n >= ``MIN_FIT_POINTS``).

    Returns (the fitted ``umap.UMAP``, latitude, longitude): degrees, float64 (n,). ``n_neighbors`` is clamped to
    n - 1. Deterministic for a given ``params.random_state`` (umap then runs single-threaded). Raises
    ``UnavailableError`` without umap-learn (``require_umap``)."""
    umap = require_umap("a UMAP projection")

    params = params or SphereParams()
    x = _unit_rows(vectors)
    if len(x) < MIN_FIT_POINTS:
        raise ValueError(f"fit_sphere needs at least {MIN_FIT_POINTS} points, got {len(x)}")
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": the determinism is the point
        warnings.filterwarnings("ignore", message=".*n_jobs.*", category=UserWarning)
        model = umap.UMAP(n_components=2, metric="cosine", output_metric="haversine",
                          random_state=params.random_state, n_neighbors=min(params.n_neighbors, len(x) - 1),
                          min_dist=params.min_dist).fit(x)
    lat, lon = angles_to_latlon(model.embedding_)
    return model, lat, lon


def nearest_fitted(model: Any, vectors: NDArray[Any]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """For each row of ``vectors``: (row of the nearest fitted vector, its cosine), through the model's own
    neighbour index (pynndescent, as ``transform`` searches) or exactly over the fitted vectors for small fits."""
    x = _unit_rows(vectors)
    search = getattr(model, "_knn_search_index", None)
    if search is not None and not getattr(model, "_small_data", False):
        idx, dist = search.query(x, k=1)
        return idx[:, 0].astype(np.int64), (1.0 - dist[:, 0]).astype(np.float32)
    fitted = _unit_rows(model._raw_data)
    sims = x @ fitted.T
    best = np.argmax(sims, axis=1)
    return best.astype(np.int64), sims[np.arange(len(x)), best].astype(np.float32)


def transform_sphere(model: Any, vectors: NDArray[Any], fitted_lat: NDArray[Any], fitted_lon: NDArray[Any], *,
                     snap_cosine: float | None) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Place new ``vectors`` (float32 (m, dim)) on a fitted map: UMAP's ``transform``, except that a vector whose
    nearest fitted vector has cosine >= ``snap_cosine`` takes that point's place (None: never).

    ``fitted_lat`` / ``fitted_lon``: the fitted points' coordinates in the model's row order (degrees).
    Returns (latitude, longitude, snapped): float64 degrees (m,) and which rows were placed on their near-copy."""
    x = _unit_rows(vectors)
    m = len(x)
    lat, lon = np.empty(m, np.float64), np.empty(m, np.float64)
    snapped = np.zeros(m, bool)
    if m == 0:
        return lat, lon, snapped
    if snap_cosine is not None:
        rows, cos = nearest_fitted(model, x)
        snapped = cos >= snap_cosine
        lat[snapped] = np.asarray(fitted_lat, np.float64)[rows[snapped]]
        lon[snapped] = np.asarray(fitted_lon, np.float64)[rows[snapped]]
    rest = ~snapped
    if rest.any():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            placed = model.transform(x[rest])
        lat[rest], lon[rest] = angles_to_latlon(placed)
        lost = rest & ~(np.isfinite(lat) & np.isfinite(lon))
        if lost.any():  # no neighbour within UMAP's disconnection distance: placed on its nearest mapped point
            rows, _ = nearest_fitted(model, x[lost])
            lat[lost] = np.asarray(fitted_lat, np.float64)[rows]
            lon[lost] = np.asarray(fitted_lon, np.float64)[rows]
    logger.info("placed %d new points on the map (%d on a near-copy, %d by transform)", m, int(snapped.sum()),
                int(rest.sum()))
    return lat, lon, snapped
