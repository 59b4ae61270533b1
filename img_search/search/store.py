"""Per-model vector indexes saved in the index directory: one writer (`index`), any number of readers.

The catalog (SQLite) is the source of truth. ``vectors/model-<id>/`` holds *generations* of a saved ``VectorIndex``
and ``CURRENT``, a small JSON file naming the live one::

    vectors/model-3/CURRENT                   {"generation": "qdrant_edge-000007"}
    vectors/model-3/qdrant_edge-000007/       index/ (the backend's files), ids.npy, hashes.npy, state.json,
                                              vectors.npy, vectors.i8.npy, vectors.i8.scales.npy
    vectors/model-3/qdrant_edge-000006/       the previous generation, kept until the next write

**Writer** (``VectorStore.sync``, called by `index` while it holds the catalog's writer lock): diffs the saved
(image id, content hash) pairs against the catalog's live images, plus the images whose vector was written again
since the generation was saved (``--recompute`` after the checkpoint changed in place, a re-embedding job: same
content hash, new vector; found by the embeddings' ``created_at`` above the generation's ``vectors_watermark``),
applies only the difference to a *copy* of the
current generation in a hidden temporary directory (or builds a fresh index when the backend or its parameters
changed), saves it, renames it into place and switches ``CURRENT`` with an atomic ``os.replace``. A generation is
never modified once ``CURRENT`` names it, so a reader can never see a half-written index, and a writer killed at
any point leaves the previous generation in force. The generation before the current one is kept (a reader that
read ``CURRENT`` just before the switch can still open it); older ones are deleted.

**Reader** (``VectorStore.open_reader``, used by every search): opens the current generation read-only
(``img_search.index.open_reader``: nothing under it is ever written, so it works on read-only media) and lays over
it, in memory, an exact index of the vectors committed since it was saved, with removed or changed images masked.
No copy of the saved index is made, so a cold search stays cheap. ``Collection.refresh`` repeats this when the
catalog or ``CURRENT`` moved on. Readers do not look for vectors written again under an unchanged content hash (that
would scan every vector of the model on each open): between such a write and the writer's next ``sync`` (the end
of the same `index` run, or of the next one if it was killed), a reader may still rank by the previous vectors.

Below ``search.ann_threshold`` vectors the backend is ``exact`` (a memory-mapped .npy); at or above it, the
configured ANN backend (``settings.SearchSettings``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.catalog import Catalog, ModelRow
from img_search.errors import CatalogError, ConfigError, ImgSearchError, StorageFullError
from img_search.files import copy_tree_sparse, fsync_tree, is_no_space, storage_full, write_atomic
from img_search.index import BackendUnavailableError, create_index, load_index, open_reader, resolve_backend
from img_search.index.base import VectorIndex, empty_results, merge_topk, normalize, pad_results, score_rows, topk
from img_search.search import compact as compact_mod
from img_search.search.compact import CompactVectors
from img_search.settings import SearchSettings

logger = logging.getLogger(__name__)

# The default ANN backend and its settings come from bench/ann_backends.py (docs/PERFORMANCE.md, "Recommendation"):
# Qdrant Edge updates and persists incrementally, matches the fastest single-query latency at recall >= 0.95 and
# pins the least RAM; hnswlib is the fallback where qdrant-edge-py is not installed.
DEFAULT_ANN_BACKEND = "qdrant_edge"
FALLBACK_ANN_BACKEND = "hnswlib"
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "qdrant_edge": {"m": 16, "ef_construct": 100, "hnsw_ef": 128},
    "hnswlib": {"M": 16, "ef_construction": 100, "ef": 128},
    "faiss": {"method": "hnsw", "M": 16, "ef_construction": 100, "ef_search": 128},
}
CURRENT = "CURRENT"
_STATE = "state.json"
_IDS = "ids.npy"
_HASHES = "hashes.npy"
# float32 (n, dim), rows aligned with ids.npy: filtered searches score a subset exactly from it (memory-mapped), since
# reading vectors back from SQLite costs ~45 us each (3 KB blobs in a WITHOUT ROWID B-tree: bench/filtered_search.py)
_VECTORS = "vectors.npy"
# rows of vectors.npy gathered and scored at a time by an exact filtered search (8,192 x 768 float32 = 24 MB at most)
_SCORE_BLOCK = 8192
# rows copied and scored at a time for one query (256 x 768 float32 = 768 KB: stays in a 2 MB L2 cache)
_DOT_BLOCK = 256
_INDEX = "index"
_GENERATION_RE = re.compile(r"^\.?[a-z_]+-(?P<n>\d{6})(\.tmp)?$")  # a generation, or a writer's temporary one
# a reader that lost the race with two writes in a row (its generation deleted under it) re-reads CURRENT
_OPEN_ATTEMPTS = 3


def choose_backend(search: SearchSettings, n_vectors: int) -> str:
    """``exact`` below ``search.ann_threshold`` vectors, else the configured ANN backend (or the default one,
    falling back to hnswlib when qdrant-edge-py is not installed)."""
    if n_vectors < search.ann_threshold:
        return "exact"
    if search.ann_backend is not None:
        return search.ann_backend
    try:
        resolve_backend(DEFAULT_ANN_BACKEND)
    except BackendUnavailableError as exc:
        logger.warning("%s; using %s instead", exc, FALLBACK_ANN_BACKEND)
        return FALLBACK_ANN_BACKEND
    return DEFAULT_ANN_BACKEND


def backend_params(search: SearchSettings, backend: str) -> dict[str, Any]:
    """Constructor parameters of ``backend``: ``DEFAULT_PARAMS`` with ``[search.params.<backend>]`` merged over."""
    return {**DEFAULT_PARAMS.get(backend, {}), **search.params.get(backend, {})}


@dataclass(frozen=True)
class Generation:
    """One saved generation: its directory, and what it reflects."""

    path: Path
    backend: str
    params: dict[str, Any]
    dim: int
    count: int
    # the largest embeddings.created_at of the model when the generation was saved (None: saved before it was kept)
    vectors_watermark: float | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def entries(self) -> tuple[NDArray[np.int64], NDArray[np.bytes_]]:
        """(image ids int64 (n,), content hashes S16 (n,)) the generation's index holds."""
        return np.load(self.path / _IDS), np.load(self.path / _HASHES)


def read_current(root: Path) -> Generation | None:
    """The generation ``root/CURRENT`` names, or None when there is none (or it is unreadable)."""
    try:
        name = json.loads((root / CURRENT).read_text())["generation"]
        state = json.loads((root / name / _STATE).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    watermark = state.get("vectors_watermark")
    return Generation(root / name, str(state["backend"]), dict(state["params"]), int(state["dim"]),
                      int(state["count"]), None if watermark is None else float(watermark))


def vectors_watermark(catalog: Catalog, model_id: int) -> float | None:
    """The largest ``created_at`` (seconds since the epoch, as ``time.time()``) of the model's stored vectors: every
    vector written after a generation was saved has a larger one. None when the model has no vector."""
    row = catalog.db.execute("SELECT MAX(created_at) FROM embeddings WHERE model_id = ?", (model_id,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def rewritten_since(catalog: Catalog, model_id: int, watermark: float) -> frozenset[bytes]:
    """Content hashes whose vector of ``model_id`` was written after ``watermark`` (new ones and ones written again:
    ``Catalog.upsert_vectors`` replaces a stored vector together with its ``created_at``)."""
    rows = catalog.db.execute("SELECT content_hash FROM embeddings WHERE model_id = ? AND created_at > ?",
                              (model_id, watermark))
    return frozenset(bytes(r[0]) for r in rows)


@dataclass(frozen=True)
class Delta:
    """What changed in the catalog since a generation was saved: ids to drop and ids to (re-)add."""

    removed: NDArray[np.int64]
    added: NDArray[np.int64]

    @classmethod
    def between(cls, old_ids: NDArray[np.int64], old_hashes: NDArray[np.bytes_], ids: NDArray[np.int64],
                hashes: NDArray[np.bytes_], rewritten: frozenset[bytes] = frozenset()) -> Delta:
        """Ids to drop and to (re-)add to go from the saved (id, hash) pairs to the catalog's; an id whose content
        hash is in ``rewritten`` (its vector was written again) is dropped and added back."""
        if not rewritten and np.array_equal(old_ids, ids) and np.array_equal(old_hashes, hashes):
            empty = np.empty(0, np.int64)
            return cls(empty, empty)  # the common case (a no-op re-run, a search): no per-image work
        old = dict(zip(old_ids.tolist(), old_hashes.tolist(), strict=True))
        new = dict(zip(ids.tolist(), hashes.tolist(), strict=True))
        removed = [i for i, h in old.items() if new.get(i) != h or h in rewritten]
        added = [i for i, h in new.items() if old.get(i) != h or h in rewritten]
        return cls(np.asarray(removed, np.int64), np.asarray(added, np.int64))

    def __bool__(self) -> bool:
        return bool(self.removed.size or self.added.size)


class VectorLookup:
    """The live vectors of a collection by image id, for exact scoring of a subset (filtered search).

    ``ids`` int64 (n,) ascending and ``matrix`` float32 (n, dim) (a saved generation's ``vectors.npy``, memory-mapped,
    or an in-memory build), overlaid by ``extra`` ({id: (dim,) float32}: vectors committed since the generation was
    saved) with ``removed`` ids (no longer live, or replaced by ``extra``) left out. ``compact``: the generation's int8
    copy of ``matrix`` (``search.compact``), used by ``top_k`` for a first pass when numkong is installed; None: the
    float32 rows only. ``use_compact`` (default True) switches that pass off (benchmarks compare both).
    """

    use_compact = True

    def __init__(self, ids: NDArray[np.int64], matrix: NDArray[np.float32],
                 extra: dict[int, NDArray[np.float32]] | None = None, removed: NDArray[np.int64] | None = None,
                 compact: CompactVectors | None = None) -> None:
        self.ids, self.matrix = ids, matrix
        self.compact = compact
        self.extra = extra or {}
        self.removed = np.asarray(removed if removed is not None else np.empty(0, np.int64), np.int64)
        self._inv_norms: NDArray[np.float32] | None = None
        self._local = threading.local()  # per-thread scoring buffer (_dots)
        if self.matrix.dtype != np.float32 or not self.matrix.flags.c_contiguous:
            self.matrix = np.ascontiguousarray(self.matrix, np.float32)

    def get(self, wanted: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """(ids, (m, dim) float32) of those of ``wanted`` that are live, in the order given."""
        wanted = np.asarray(wanted, np.int64)
        pos = np.searchsorted(self.ids, wanted)
        pos_ok = np.minimum(pos, max(len(self.ids) - 1, 0))
        if len(self.ids):
            in_base = (pos < len(self.ids)) & (self.ids[pos_ok] == wanted)
        else:
            in_base = np.zeros(len(wanted), np.bool_)
        if self.removed.size:
            in_base &= ~np.isin(wanted, self.removed)
        if not self.extra:
            keep = in_base
            return wanted[keep], np.asarray(self.matrix[pos_ok[keep]], np.float32)
        in_extra = np.fromiter((int(i) in self.extra for i in wanted.tolist()), bool, len(wanted))
        keep = in_base | in_extra
        out = np.empty((int(keep.sum()), self.matrix.shape[1]), np.float32)
        rows = np.flatnonzero(keep)
        base_rows = in_base[rows] & ~in_extra[rows]
        out[base_rows] = self.matrix[pos_ok[rows[base_rows]]]
        for j in np.flatnonzero(~base_rows).tolist():
            out[j] = self.extra[int(wanted[rows[j]])]
        return wanted[keep], out

    def inverse_norms(self) -> NDArray[np.float32]:
        """1 / |row| of every saved row ((n,) float32; 0 for a zero row), computed on first use in blocks (115 ms
        for 100,000 x 768, once per view) and kept: exact filtered scores are cosines whatever the rows' length."""
        inv = self._inv_norms
        if inv is None:
            inv = np.empty(len(self.ids), np.float32)
            for start in range(0, len(self.ids), _SCORE_BLOCK):
                block = np.asarray(self.matrix[start : start + _SCORE_BLOCK], np.float32)
                norms = np.sqrt(np.einsum("ij,ij->i", block, block))
                inv[start : start + block.shape[0]] = np.divide(1.0, norms, out=np.zeros_like(norms),
                                                                where=norms > 0)
            self._inv_norms = inv  # computed the same by any thread that races here
        return inv

    def _dots(self, q: NDArray[np.float32], rows: NDArray[np.intp]) -> NDArray[np.float32]:
        """``matrix[rows] @ q`` for one (dim,) float32 query, on this thread only: the rows (ascending) are copied
        ``_DOT_BLOCK`` at a time into a per-thread buffer that stays in the CPU's L2 cache and scored there, by faiss's
        SIMD ``fvec_inner_products_ny`` where faiss is installed (no OpenMP team, no BLAS threads), else
        ``np.einsum``. Measured at 5,000 of 100,000 768-d rows: 2.4 ms against 3.5 ms for a gather of every row then
        one product, and 2.2 ms for faiss's ``fvec_inner_products_by_idx``, which opens an OpenMP team per call
        (docs/PERFORMANCE.md, "Filtered search")."""
        dim = self.matrix.shape[1]
        buf: NDArray[np.float32] | None = getattr(self._local, "buf", None)
        if buf is None or buf.shape[1] != dim:
            buf = self._local.buf = np.empty((_DOT_BLOCK, dim), np.float32)
        out = np.empty(rows.size, np.float32)
        faiss = _faiss()
        for start in range(0, rows.size, _DOT_BLOCK):
            part = rows[start : start + _DOT_BLOCK]
            block = np.take(self.matrix, part, axis=0, out=buf[: part.size], mode="clip")  # "clip": unbuffered
            if faiss is not None:
                faiss.fvec_inner_products_ny(faiss.swig_ptr(out[start : start + part.size]), faiss.swig_ptr(q),
                                             faiss.swig_ptr(block), dim, part.size)
            else:
                np.einsum("ij,j->i", block, q, out=out[start : start + part.size])
        return out

    def top_k(self, queries: NDArray[np.float32], allowed: NDArray[np.int64], k: int
              ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Exact top-``k`` of unit (n_q, dim) float32 ``queries`` among the live vectors of ``allowed`` (int64 ids,
        ascending): (n_q, k) ids and cosines, best first, padded with -1 / -inf.

        The saved rows are read in ascending order (``allowed`` and ``ids`` are both sorted, so the memory-mapped
        matrix is read front to back) in blocks of ``_SCORE_BLOCK`` rows, each scored and cut to its top k, so memory
        stays bounded whatever the filter keeps. One query is scored on one thread (``np.einsum``: OpenBLAS threads
        a large matrix-vector product and stalls on a loaded machine, see ``score_rows``). Scores are cosines: each
        row's dot product times its ``inverse_norms`` entry.

        One query with an int8 copy (``compact``, numkong installed) and enough saved rows (``compact.worth_it``:
        at least 512 and more than ``compact.candidate_count(k)``): the int8 pass scores every allowed saved row (a
        quarter of the bytes), and only its best ``candidate_count(k)`` rows are scored from ``matrix`` as above, in
        ascending order. The result is then bit for bit the float32 one whenever the true top k is among those
        candidates (ties keep the order of the rows as in the full pass); see ``search.compact`` for how often it is
        not (never observed).
        """
        allowed = np.asarray(allowed, np.int64)
        n_ids = len(self.ids)
        pos = np.searchsorted(self.ids, allowed)
        in_base = pos < n_ids
        in_base[in_base] = self.ids[pos[in_base]] == allowed[in_base]
        if self.removed.size:
            in_base &= ~np.isin(allowed, self.removed)
        parts: list[tuple[NDArray[np.int64], NDArray[np.float32]]] = []
        base_pos = pos[in_base]
        base_ids = allowed[in_base]
        inv_norms = self.inverse_norms()
        if queries.shape[0] == 1 and base_pos.size:
            q = np.ascontiguousarray(queries[0], np.float32)
            n_cand = compact_mod.candidate_count(k)
            if (self.compact is not None and self.use_compact and compact_mod.worth_it(base_pos.size, k)
                    and compact_mod.kernel() is not None):
                approx = self.compact.scores(q, base_pos)
                keep = np.sort(np.argpartition(-approx, n_cand - 1)[:n_cand])  # ascending: the full pass's order
                base_pos, base_ids = base_pos[keep], base_ids[keep]
            # rows as stored (the catalog's vectors, not necessarily unit length): cosine = dot * (1 / |row|)
            scores = self._dots(q, base_pos) * inv_norms[base_pos]
            cols, best = topk(scores[None, :], k)
            parts.append(pad_results(base_ids[cols], best.astype(np.float32, copy=False), k))
        else:
            for start in range(0, base_pos.size, _SCORE_BLOCK):
                rows = base_pos[start : start + _SCORE_BLOCK]
                block = np.take(self.matrix, rows, axis=0) * inv_norms[rows, None]
                parts.append(score_rows(queries, block, base_ids[start : start + _SCORE_BLOCK], k))
        if self.extra:
            extra_ids = np.fromiter((i for i in allowed.tolist() if i in self.extra), np.int64)
            if extra_ids.size:
                vectors = np.stack([self.extra[int(i)] for i in extra_ids.tolist()]).astype(np.float32, copy=False)
                parts.append(score_rows(queries, normalize(vectors), extra_ids, k))
        if not parts:
            return empty_results(queries.shape[0], k)
        return parts[0] if len(parts) == 1 else merge_topk(parts, k)


@dataclass(frozen=True)
class StoreView:
    """What ``VectorStore.open_view`` opens: the index, its backend, the generation (None: built in memory) and the
    vectors by id (None for a generation saved before ``vectors.npy`` was kept: read from the catalog then), with the
    generation's int8 copy when it has one."""

    index: VectorIndex
    backend: str
    generation: str | None
    vectors: VectorLookup | None


class VectorStore:
    """The saved search index of one model in one index directory (see the module docstring)."""

    def __init__(self, index_dir: Path, catalog: Catalog, model: ModelRow, search: SearchSettings) -> None:
        if model.dim is None:
            raise CatalogError(f"model {model.name!r} has no recorded dimension; re-run `img-search index`")
        self.root = Path(index_dir) / "vectors" / f"model-{model.id}"
        self.catalog = catalog
        self.model = model
        self.dim = int(model.dim)
        self.search = search

    # ------------------------------------------------------------------ shared
    def current(self) -> Generation | None:
        return read_current(self.root)

    def _matches(self, gen: Generation | None, backend: str) -> bool:
        return (gen is not None and gen.backend == backend and gen.params == backend_params(self.search, backend)
                and gen.dim == self.dim)

    def _build(self, backend: str, ids: NDArray[np.int64], **extra: Any) -> tuple[VectorIndex, NDArray[np.float32]]:
        """A new index of ``ids``' vectors, and those vectors ((n, dim) float32, rows in ``ids`` order).

        Raises ``ConfigError`` when the backend refuses a value the user set in ``[search.params.<backend>]`` (its
        keys are checked when the settings load; its values only here, by the backend itself)."""
        params = backend_params(self.search, backend)
        given = self.search.params.get(backend, {})
        try:
            index = create_index(backend, dim=self.dim, metric="cosine", **params, **extra)
        except ImgSearchError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            if not given:  # the defaults alone: not the user's doing
                raise
            detail = " ".join(str(exc).split())[:200]
            raise ConfigError(f"search.params.{backend}: the {backend} index refused the configured parameters "
                              f"{given} ({type(exc).__name__}: {detail}); fix [search.params.{backend}]") from exc
        vectors = self.catalog.vectors_for_ids(self.model.id, self.dim, ids.tolist())
        if len(ids):
            index.add(ids, vectors)
        logger.info("built a %s index of %d vectors for %s", backend, len(ids), self.model.name)
        return index, vectors

    def _apply(self, index: VectorIndex, delta: Delta) -> NDArray[np.float32]:
        """Apply ``delta`` to ``index``; returns the added vectors ((len(delta.added), dim) float32)."""
        if delta.removed.size:
            index.remove(delta.removed)
        added = self.catalog.vectors_for_ids(self.model.id, self.dim, delta.added.tolist())
        if delta.added.size:
            index.add(delta.added, added)
        return added

    # ------------------------------------------------------------------ reader
    def open_reader(self) -> tuple[VectorIndex, str, str | None]:
        """``open_view`` as (index, backend, generation name or None)."""
        view = self.open_view()
        return view.index, view.backend, view.generation

    def open_view(self) -> StoreView:
        """A read-only view of the model's vectors as the catalog holds them now.

        Nothing in the index directory is written. When no saved generation fits (none yet, or the backend or its
        parameters differ from the settings), the index is built in memory from the catalog (logged: run
        `img-search index` to save one).
        """
        for _ in range(_OPEN_ATTEMPTS):
            with self.catalog.snapshot():
                ids, hashes = self.catalog.live_entries(self.model.id)
                backend = choose_backend(self.search, len(ids))
                gen = self.current()
                if not self._matches(gen, backend):
                    if gen is not None or len(ids) >= self.search.ann_threshold:
                        logger.info("no saved %s index matches the settings; building one in memory "
                                    "(`img-search index` saves it)", backend)
                    index, vectors = self._build(backend, ids)
                    return StoreView(index, backend, None, VectorLookup(ids, vectors))
                assert gen is not None
                try:
                    index = open_reader(backend, gen.path / _INDEX)
                    old_ids, old_hashes = gen.entries()
                    matrix = _load_vectors(gen.path, len(old_ids), self.dim)
                    compact = None if matrix is None else CompactVectors.load(gen.path, len(old_ids), self.dim)
                except FileNotFoundError:
                    continue  # a writer replaced CURRENT and deleted this generation meanwhile: look again
                except Exception as exc:  # a damaged generation is bypassed, never fatal for a search
                    logger.warning("cannot open the saved %s index %s (%s); building one in memory", backend,
                                   gen.path, exc)
                    index, vectors = self._build(backend, ids)
                    return StoreView(index, backend, None, VectorLookup(ids, vectors))
                delta = Delta.between(old_ids, old_hashes, ids, hashes)
                extra: dict[int, NDArray[np.float32]] = {}
                if delta:
                    added = self._apply(index, delta)
                    extra = dict(zip(delta.added.tolist(), added, strict=True))
                    logger.info("saved %s index of %s caught up in memory: +%d -%d vectors", backend,
                                self.model.name, delta.added.size, delta.removed.size)
                lookup = None if matrix is None else VectorLookup(old_ids, matrix, extra, delta.removed, compact)
                return StoreView(index, backend, gen.name, lookup)
        raise CatalogError(f"the saved index under {self.root} kept changing while being opened; retry")

    # ------------------------------------------------------------------ writer
    def sync(self) -> str:
        """Bring the saved index up to date with the catalog; only `index` calls this, holding the writer lock.

        Returns the backend of the current generation. Leaves the previous generation in force, and nothing of the
        new one on disk, if anything fails; raises ``StorageFullError`` when that is a full device.
        """
        ids, hashes = self.catalog.live_entries(self.model.id)
        watermark = vectors_watermark(self.catalog, self.model.id)
        backend = choose_backend(self.search, len(ids))
        gen = self.current()
        number = self._next_number()
        name = f"{backend}-{number:06d}"
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        index: VectorIndex | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # a generation saved without a watermark cannot tell which of its vectors were written again, and one
            # without vectors.npy cannot serve filtered searches from memory: either is rebuilt once. One without
            # the int8 copy (search.compact) is copied once with it added, even when nothing changed
            if (self._matches(gen, backend) and gen is not None and gen.vectors_watermark is not None
                    and (gen.path / _VECTORS).exists()):
                rewritten = rewritten_since(self.catalog, self.model.id, gen.vectors_watermark)
                delta = Delta.between(*gen.entries(), ids, hashes, rewritten)
                if not delta and compact_mod.exists(gen.path):
                    self._prune(keep={gen.name})
                    return backend
                if delta:
                    index, vectors = self._updated_copy(gen, backend, delta, ids, tmp)
                else:  # only the int8 copy is missing: the index files are copied as they are, never loaded
                    copy_tree_sparse(gen.path / _INDEX, tmp / _INDEX)
                    vectors = self._saved_vectors(gen, ids)
            else:
                tmp.mkdir(parents=True)
                index, vectors = self._build(backend, ids)
            if index is not None:
                index.save(tmp / _INDEX)
            np.save(tmp / _VECTORS, vectors)
            compact_mod.save(tmp, vectors)
            del vectors
            if index is not None:
                _close(index)
                index = None
            np.save(tmp / _IDS, ids)
            np.save(tmp / _HASHES, hashes)
            (tmp / _STATE).write_text(json.dumps({"backend": backend, "params": backend_params(self.search, backend),
                                                  "dim": self.dim, "count": len(ids),
                                                  "vectors_watermark": watermark}))
            fsync_tree(tmp)
            tmp.rename(self.root / name)
            write_atomic(self.root / CURRENT, json.dumps({"generation": name}))
        except BaseException as exc:
            if index is not None:
                _close(index)
            shutil.rmtree(tmp, ignore_errors=True)
            current = self.current()
            if current is None or current.name != name:  # renamed into place but CURRENT not switched: not kept
                shutil.rmtree(self.root / name, ignore_errors=True)
            if isinstance(exc, StorageFullError) and exc.detail is not None:  # a backend's own check (hnswlib)
                raise storage_full(Path(exc.where or self.root), f"saving the search index: {exc.detail}") from exc
            if is_no_space(exc):
                raise storage_full(self.root, f"saving the search index: {getattr(exc, 'strerror', exc)}") from exc
            raise
        self._prune(keep={name} | ({gen.name} if gen is not None else set()))
        logger.info("saved the %s index of %s (%d vectors) as %s", backend, self.model.name, len(ids), name)
        return backend

    def _updated_copy(self, gen: Generation, backend: str, delta: Delta, ids: NDArray[np.int64],
                      tmp: Path) -> tuple[VectorIndex, NDArray[np.float32]]:
        """The current generation copied into ``tmp`` and loaded from there (writable), with ``delta`` applied, and
        the vectors of ``ids`` ((n, dim) float32, for ``vectors.npy``).

        Backends such as qdrant_edge open their files in place and write through, so the writer always works on
        a copy: the generation readers may have open is never modified.
        """
        cls = resolve_backend(backend)
        if delta.removed.size and not cls.supports_remove:
            logger.info("%s cannot remove vectors: rebuilding the %s index", backend, self.model.name)
            tmp.mkdir(parents=True)
            return self._build(backend, ids)
        copy_tree_sparse(gen.path / _INDEX, tmp / _INDEX)
        index = load_index(backend, tmp / _INDEX)
        added = self._apply(index, delta)
        logger.info("%s index of %s updated: +%d -%d vectors", backend, self.model.name, delta.added.size,
                    delta.removed.size)
        return index, self._saved_vectors(gen, ids, delta, added)

    def _saved_vectors(self, gen: Generation, ids: NDArray[np.int64], delta: Delta | None = None,
                       added: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        """The vectors of ``ids`` ((n, dim) float32, rows in ``ids`` order) from ``gen``'s vectors.npy, with
        ``delta`` applied (``added``: the vectors of ``delta.added``); from the catalog for a generation saved before
        vectors.npy was kept. Raises ``CatalogError`` when some are in neither."""
        old_ids, _ = gen.entries()
        old = _load_vectors(gen.path, len(old_ids), self.dim)
        if old is None:  # a generation saved before vectors.npy was kept
            return self.catalog.vectors_for_ids(self.model.id, self.dim, ids.tolist())
        extra = {} if delta is None or added is None else dict(zip(delta.added.tolist(), added, strict=True))
        lookup = VectorLookup(old_ids, old, extra, None if delta is None else delta.removed)
        found, vectors = lookup.get(ids)
        if len(found) != len(ids):
            raise CatalogError(f"{len(ids) - len(found)} vectors of {self.model.name!r} are missing from the saved "
                               "index and the catalog; re-run `img-search index`")
        return vectors

    def _next_number(self) -> int:
        numbers = [int(m["n"]) for p in self._entries() if (m := _GENERATION_RE.match(p.name))]
        return max(numbers, default=0) + 1

    def _entries(self) -> list[Path]:
        try:
            return list(self.root.iterdir())
        except FileNotFoundError:
            return []

    def _prune(self, keep: set[str]) -> None:
        """Delete every generation (and leftover temporary or pre-generation directory) not in ``keep``."""
        for path in self._entries():
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _faiss() -> Any:
    """faiss (the ``ann`` extra) for its SIMD inner products, or None where it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _load_vectors(path: Path, n: int, dim: int) -> NDArray[np.float32] | None:
    """A generation's ``vectors.npy`` memory-mapped read-only, or None when it has none (saved before it was kept) or
    it does not match the generation's ids (then the catalog is read instead)."""
    try:
        matrix = np.load(path / _VECTORS, mmap_mode="r")
    except FileNotFoundError:
        return None
    if matrix.shape != (n, dim) or matrix.dtype != np.float32:
        logger.warning("%s holds %s %s vectors for %d ids of dim %d: not used", path / _VECTORS, matrix.shape,
                       matrix.dtype, n, dim)
        return None
    return matrix  # type: ignore[no-any-return]


def _close(index: VectorIndex) -> None:
    close = getattr(index, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
    del index
    gc.collect()  # backends that hold files until collected (qdrant_edge's finalizer) let go of them now
