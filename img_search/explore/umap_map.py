"""The map of a collection: a UMAP layout of its vectors on a sphere, kept up to date incrementally.

``update_map`` fits ``umap.UMAP(metric="cosine", output_metric="haversine")`` with a fixed random state to the live
vectors of one model (``explore.sphere``: coordinates as latitude / longitude in degrees), stores the fitted model and
the coordinates in the index directory, and on later calls places only the images indexed since with the stored
model's ``transform`` (a near-copy of a mapped image takes its place, ``explore.sphere.transform_sphere``). It refits
from scratch when asked (``refit``), when the collection has grown past ``growth_factor`` times the number of points
the model was fitted on (default 2: ``settings.ExploreSettings.map_growth_factor``), or when the fit's parameters or
the model's dimension changed. Images removed since are dropped; an image whose bytes changed is placed again.

On disk, like the saved search index (``search.store``)::

    <index_dir>/maps/model-<id>/CURRENT          {"generation": "map-000004"}
    <index_dir>/maps/model-<id>/map-000004/      umap.pkl (the fitted umap.UMAP, pickled), layout.npz, state.json
    <index_dir>/maps/model-<id>/map-000003/      the previous generation, kept until the next write

A generation is written under a hidden temporary name, fsync-ed, renamed into place, and ``CURRENT`` is switched with
an atomic replace (``files.write_atomic``): a reader (``load_map``) sees the old map or the new one, never a mix, and a
writer killed at any point leaves the old one in force. An update that only transforms hard-links the unchanged
model file into the new generation instead of copying it. One writer at a time per map (a lock file; another
process's concurrent update raises ``ConflictError``); ``load_map`` takes no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pickle
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import ModelRow
from img_search.errors import (
    CatalogReadOnlyError,
    ConflictError,
    EmptyCollectionError,
    ImgSearchError,
    InvalidInputError,
)
from img_search.explore.sphere import (
    MIN_FIT_POINTS,
    SphereParams,
    equator_layout,
    fit_sphere,
    require_umap,
    transform_sphere,
)
from img_search.files import fsync_tree, is_no_space, storage_full, write_atomic

logger = logging.getLogger(__name__)

MAPS_DIR = "maps"
CURRENT = "CURRENT"
MODEL_FILE = "umap.pkl"
LAYOUT_FILE = "layout.npz"
STATE_FILE = "state.json"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1
DEFAULT_GROWTH_FACTOR = 2.0
# a new image whose nearest mapped vector is at least this similar is placed on it (explore.sphere); the same default
# as the near-duplicate threshold (explore.duplicates.DEFAULT_THRESHOLD), so the images `duplicates` groups together
# share a spot on the map
DEFAULT_SNAP_COSINE = 0.95
_GENERATION_RE = re.compile(r"^\.?map-(?P<n>\d{6})(\.tmp)?$")

_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


class MapError(ImgSearchError):
    """A saved map could not be read (damaged files); the next ``update_map`` rewrites it."""


class MapTooSmallError(InvalidInputError):
    """The collection holds too few images for UMAP to fit (``check_mappable``): CLI exit 2, HTTP 422."""


@dataclass(frozen=True)
class MapLayout:
    """Where each live image of one model sits on the map.

    ``image_ids`` int64 (n,) ascending, ``latitude`` float64 (n,) degrees in [-90, 90], ``longitude`` float64 (n,)
    degrees in (-180, 180]. ``fitted_at``: when the UMAP model was fitted (seconds since the epoch); ``n_fitted``: how
    many points it was fitted on; ``updated_at``: when the layout was last written; ``n_transformed``: points placed
    since the fit by ``transform`` (``n_snapped`` of them on a near-copy). ``generation``: the saved generation read.
    """

    model_id: int
    image_ids: NDArray[np.int64]
    latitude: NDArray[np.float64]
    longitude: NDArray[np.float64]
    fitted_at: float
    n_fitted: int
    updated_at: float
    n_transformed: int = 0
    n_snapped: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    generation: str | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-image arrays (JSON-ready)."""
        return {"model_id": self.model_id, "images": len(self), "fitted_at": self.fitted_at,
                "n_fitted": self.n_fitted, "updated_at": self.updated_at, "n_transformed": self.n_transformed,
                "n_snapped": self.n_snapped, "params": dict(self.params), "generation": self.generation}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the summary plus ``points``: [{image_id, latitude, longitude}] in id order."""
        out = self.summary()
        out["points"] = [{"image_id": int(i), "latitude": float(la), "longitude": float(lo)}
                         for i, la, lo in zip(self.image_ids.tolist(), self.latitude.tolist(),
                                              self.longitude.tolist(), strict=True)]
        return out


def map_root(index_dir: Path, model_id: int) -> Path:
    """``<index_dir>/maps/model-<id>``: where the map of one model lives."""
    return Path(index_dir) / MAPS_DIR / f"model-{int(model_id)}"


def _model_id(model: ModelRow | int) -> int:
    return int(model.id) if isinstance(model, ModelRow) else int(model)


# ---------------------------------------------------------------------------------------------------------- reading
@dataclass
class _Saved:
    path: Path
    state: dict[str, Any]
    arrays: dict[str, NDArray[Any]]


def _read_current(root: Path) -> _Saved | None:
    try:
        name = json.loads((root / CURRENT).read_text())["generation"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MapError(f"the map under {root} is unreadable ({exc}); run `img-search map --refit`") from None
    path = root / str(name)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        with np.load(path / LAYOUT_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, KeyError) as exc:
        raise MapError(f"the map under {path} is unreadable ({exc}); run `img-search map --refit`") from None
    if state.get("version") != FORMAT_VERSION:
        return None  # written by another version: treated as absent, refitted by the next update
    return _Saved(path, state, arrays)


def _layout(saved: _Saved) -> MapLayout:
    s, a = saved.state, saved.arrays
    return MapLayout(model_id=int(s["model_id"]), image_ids=a["image_ids"].astype(np.int64),
                     latitude=a["latitude"].astype(np.float64), longitude=a["longitude"].astype(np.float64),
                     fitted_at=float(s["fitted_at"]), n_fitted=int(s["n_fitted"]), updated_at=float(s["updated_at"]),
                     n_transformed=int(s.get("n_transformed", 0)), n_snapped=int(s.get("n_snapped", 0)),
                     params=dict(s.get("params", {})), generation=saved.path.name)


def load_map(index_dir: Path, model_row: ModelRow | int) -> MapLayout | None:
    """The saved map of ``model_row`` (a ``ModelRow`` or its id) in ``index_dir``, or None when there is none yet.

    Cheap (reads the coordinates, not the fitted model) and lock-free; never writes. The layout is as of its last
    ``update_map``: images indexed since are not on it. Raises ``MapError`` when the saved files are damaged."""
    saved = _read_current(map_root(index_dir, _model_id(model_row)))
    return None if saved is None else _layout(saved)


def load_umap_model(index_dir: Path, model_row: ModelRow | int) -> Any | None:
    """The fitted ``umap.UMAP`` of the saved map (None: no map, or a collection too small to fit).

    Unpickles a file this program wrote into the index directory: only load index directories you trust."""
    saved = _read_current(map_root(index_dir, _model_id(model_row)))
    if saved is None or not (saved.path / MODEL_FILE).exists():
        return None
    with open(saved.path / MODEL_FILE, "rb") as fh:
        return pickle.load(fh)


# ---------------------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def _writer_lock(root: Path) -> Iterator[None]:
    """One writer per map: a thread lock within this process, a POSIX lock across processes."""
    with _THREAD_LOCKS_GUARD:
        tlock = _THREAD_LOCKS.setdefault(str(root), threading.Lock())
    with tlock:
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _write_error(root, exc) from exc
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    raise ConflictError(f"another process is updating the map in {root}; try again when it is "
                                        "done") from None
                raise
            yield
        finally:
            os.close(fd)


def _write_error(where: Path, exc: OSError) -> ImgSearchError:
    if is_no_space(exc):
        return storage_full(where, f"writing the map: {exc.strerror}")
    return CatalogReadOnlyError(f"cannot write the map under {where} ({exc.strerror or exc}); `map` needs a "
                                "writable --index-dir")


def _next_number(root: Path) -> int:
    numbers = [int(m.group("n")) for p in root.iterdir() if (m := _GENERATION_RE.match(p.name))]
    return max(numbers, default=0) + 1


def _prune(root: Path, keep: set[str]) -> None:
    for p in root.iterdir():
        if _GENERATION_RE.match(p.name) and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _save(root: Path, state: dict[str, Any], arrays: dict[str, NDArray[Any]], model: Any | None,
          link_model_from: Path | None, previous: str | None) -> str:
    """Write a new generation and switch ``CURRENT`` to it; returns its name."""
    name = f"map-{_next_number(root):06d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        if model is not None:
            with open(tmp / MODEL_FILE, "wb") as fh:
                pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
        elif link_model_from is not None and (link_model_from / MODEL_FILE).exists():
            try:
                os.link(link_model_from / MODEL_FILE, tmp / MODEL_FILE)  # never modified: sharing it is safe
            except OSError:
                shutil.copyfile(link_model_from / MODEL_FILE, tmp / MODEL_FILE)
        with open(tmp / LAYOUT_FILE, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        fsync_tree(tmp)
        tmp.rename(root / name)
        write_atomic(root / CURRENT, json.dumps({"generation": name}))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(root, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep={name} | ({previous} if previous else set()))
    return name


def check_growth_factor(value: Any) -> float:
    """``value`` as a float >= 1, or ``InvalidInputError``."""
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"growth factor must be a number >= 1, got {value!r}") from None
    if not np.isfinite(factor) or factor < 1.0:
        raise InvalidInputError(f"growth factor must be a number >= 1, got {value!r}")
    return factor


def check_mappable(collection: Any, *, shown: Callable[[str], str] = str) -> None:
    """Refuse a collection (a ``search.collection.Collection``) UMAP cannot fit, before anything is written: 1 to
    ``MIN_FIT_POINTS`` - 1 live images raise ``MapTooSmallError`` naming the count and the minimum (``update_map``
    would lay them along the equator, a map that shows nothing). None passes (``update_map`` raises
    ``EmptyCollectionError``). ``shown`` formats the model's name in the message (the CLI's keeps control characters
    off a terminal). The one check of ``img-search map`` and ``POST /api/v1/map``, so both say the same."""
    ids, _ = collection.catalog().live_entries(collection.model.id)
    if 0 < len(ids) < MIN_FIT_POINTS:
        raise MapTooSmallError(f"the map needs at least {MIN_FIT_POINTS} images; the collection of "
                               f"{shown(collection.model.name)} holds {len(ids)}: index more images first")


def update_map(index_dir: Path, collection: Any, *, refit: bool = False, growth_factor: float = DEFAULT_GROWTH_FACTOR,
               params: SphereParams | None = None, snap_cosine: float | None = DEFAULT_SNAP_COSINE) -> MapLayout:
    """Bring the map of ``collection`` (a ``search.collection.Collection``) in ``index_dir`` up to date and return it.

    Fits UMAP on every live vector when there is no saved map, when ``refit``, when the live images outnumber
    ``growth_factor`` x the fitted points, or when ``params`` / the model's dimension changed; otherwise places the
    images indexed since with the stored model's ``transform`` and drops the removed ones (nothing is written when
    nothing changed). Collections of fewer than ``MIN_FIT_POINTS`` images are laid out along the equator, unfitted
    (the CLI and the service refuse them first: ``check_mappable``).

    Raises ``UnavailableError`` without umap-learn (checked first, before the catalog is read),
    ``EmptyCollectionError`` (no live vector), ``InvalidInputError`` (growth factor), ``ConflictError``
    (another process is updating this map), ``CatalogReadOnlyError`` / ``StorageFullError`` (cannot write).
    Cost: a fit is O(n) memory of the vectors plus UMAP's graph, and minutes at 100k points (docs/PERFORMANCE.md,
    "Map (UMAP)"); a transform of m new points is seconds.
    """
    growth_factor = check_growth_factor(growth_factor)
    require_umap("`img-search map`")
    params = params or SphereParams()
    model_row: ModelRow = collection.model
    dim = int(model_row.dim or 0)
    root = map_root(index_dir, model_row.id)
    catalog = collection.catalog()
    with catalog.snapshot():
        ids, hashes = catalog.live_entries(model_row.id)
        vec_ids, vectors = catalog.load_vectors(model_row.id, dim)
    if not np.array_equal(ids, vec_ids):  # both read in one snapshot, both in id order
        raise MapError("the catalog's live images and vectors disagree; retry")
    if len(ids) == 0:
        raise EmptyCollectionError(f"no images are indexed with model {model_row.name!r}: nothing to map")
    with _writer_lock(root):
        saved = _read_current(root)
        now = time.time()
        if (saved is not None and not refit and np.array_equal(saved.arrays["image_ids"], ids)
                and np.array_equal(saved.arrays["hashes"], hashes) and saved.state.get("params") == params.to_dict()
                and int(saved.state.get("dim", -1)) == dim):
            return _layout(saved)  # nothing changed since the last update
        reason = _refit_reason(saved, refit, growth_factor, params, dim, len(ids))
        if reason is not None:
            logger.info("fitting the map of %s on %d images (%s)", model_row.name, len(ids), reason)
            return _fit(root, model_row, ids, hashes, vectors, params, dim, now, saved)
        assert saved is not None
        return _incremental(root, model_row, ids, hashes, vectors, saved, now, snap_cosine)


def _refit_reason(saved: _Saved | None, refit: bool, growth_factor: float, params: SphereParams, dim: int,
                  n_live: int) -> str | None:
    if saved is None:
        return "no saved map"
    if refit:
        return "asked"
    s = saved.state
    if s.get("params") != params.to_dict() or int(s.get("dim", -1)) != dim:
        return "the fit's parameters changed"
    if not (saved.path / MODEL_FILE).exists():
        return f"fewer than {MIN_FIT_POINTS} images at the last update"
    if n_live > growth_factor * int(s["n_fitted"]):
        return f"{n_live} images > {growth_factor:g} x the {s['n_fitted']} fitted"
    return None


def _state(model_row: ModelRow, dim: int, params: SphereParams, fitted_at: float, n_fitted: int, now: float,
           n_transformed: int, n_snapped: int) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "model_id": model_row.id, "model_name": model_row.name, "dim": dim,
            "params": params.to_dict(), "fitted_at": fitted_at, "n_fitted": n_fitted, "updated_at": now,
            "n_transformed": n_transformed, "n_snapped": n_snapped}


def _fit(root: Path, model_row: ModelRow, ids: NDArray[np.int64], hashes: NDArray[np.bytes_],
         vectors: NDArray[np.float32], params: SphereParams, dim: int, now: float, saved: _Saved | None) -> MapLayout:
    model: Any | None = None
    if len(ids) >= MIN_FIT_POINTS:
        model, lat, lon = fit_sphere(vectors, params)
    else:
        lat, lon = equator_layout(len(ids))
    state = _state(model_row, dim, params, now, len(ids) if model is not None else 0, now, 0, 0)
    arrays = {"image_ids": ids, "hashes": hashes, "latitude": lat, "longitude": lon,
              "fit_latitude": lat if model is not None else np.empty(0), "fit_longitude": lon if model is not None
              else np.empty(0)}
    name = _save(root, state, arrays, model, None, saved.path.name if saved else None)
    return _layout(_Saved(root / name, state, arrays))


def _incremental(root: Path, model_row: ModelRow, ids: NDArray[np.int64], hashes: NDArray[np.bytes_],
                 vectors: NDArray[np.float32], saved: _Saved, now: float, snap_cosine: float | None) -> MapLayout:
    a, s = saved.arrays, saved.state
    old = {int(i): (h, la, lo) for i, h, la, lo in zip(a["image_ids"].tolist(), a["hashes"].tolist(),
                                                        a["latitude"].tolist(), a["longitude"].tolist(), strict=True)}
    lat = np.empty(len(ids), np.float64)
    lon = np.empty(len(ids), np.float64)
    new_rows: list[int] = []
    for row, (i, h) in enumerate(zip(ids.tolist(), hashes.tolist(), strict=True)):
        entry = old.get(i)
        if entry is not None and entry[0] == h:
            lat[row], lon[row] = entry[1], entry[2]
        else:
            new_rows.append(row)
    removed = len(old) - (len(ids) - len(new_rows))
    if not new_rows and removed == 0:
        return _layout(saved)
    n_transformed, n_snapped = int(s.get("n_transformed", 0)), int(s.get("n_snapped", 0))
    if new_rows:
        rows = np.asarray(new_rows, np.int64)
        model = load_umap_model_from(saved.path)
        t_lat, t_lon, snapped = transform_sphere(model, vectors[rows], a["fit_latitude"], a["fit_longitude"],
                                                 snap_cosine=snap_cosine)
        lat[rows], lon[rows] = t_lat, t_lon
        n_transformed += len(rows)
        n_snapped += int(snapped.sum())
    logger.info("map of %s: %d images placed by transform, %d removed", model_row.name, len(new_rows), removed)
    params = SphereParams(**s["params"])
    state = _state(model_row, int(s["dim"]), params, float(s["fitted_at"]), int(s["n_fitted"]), now, n_transformed,
                   n_snapped)
    arrays = {"image_ids": ids, "hashes": hashes, "latitude": lat, "longitude": lon,
              "fit_latitude": a["fit_latitude"], "fit_longitude": a["fit_longitude"]}
    name = _save(root, state, arrays, None, saved.path, saved.path.name)
    return _layout(_Saved(root / name, state, arrays))


def load_umap_model_from(path: Path) -> Any:
    """Unpickle the fitted model of one saved generation (``MapError`` when it is missing or damaged)."""
    try:
        with open(path / MODEL_FILE, "rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise MapError(f"the fitted map model under {path} is unreadable ({exc}); run `img-search map "
                       "--refit`") from None
