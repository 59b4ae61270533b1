"""hnswlib backend: HNSW graph (M, ef_construction) searched with ``ef``; removal by ``mark_deleted``.

* hnswlib needs a capacity up front: the index starts at ``capacity`` (default 1,024) and doubles (``resize_index``)
  whenever an add would overflow it.
* ``remove`` marks labels deleted: they are skipped at search time but keep their memory; re-adding a deleted or
  live label replaces its vector in place (hnswlib's own update path).
* hnswlib scores are distances (``1 - <q, x>`` for both spaces; ``cosine`` normalises inside hnswlib); they are
  turned back into similarities here.
* ``save`` / ``load`` use hnswlib's own file, written to a temporary name, size-checked against hnswlib's
  ``index_file_size`` (hnswlib does not report a failed write: a full disk leaves a truncated file and no error),
  fsync-ed and renamed; a short write raises ``StorageFullError``. hnswlib has no memory-mapped load, so ``load``
  reads it into RAM (and so never writes it: ``load(readonly=True)`` only adds the refusal of changes).
* large k: hnswlib widens ``ef`` to k itself, but a graph walk can miss nodes (measured: 2,098 of 2,100 for
  k = 2,100 on tightly clustered vectors), so a k of at least ``EXACT_K_FRACTION`` of the collection, and any row that
  comes back short, is scored exactly over the stored vectors (read from hnswlib's pickled state: ``get_items``
  costs 33 us per vector).
* ``num_threads <= 0`` means one thread per CPU, resolved here: hnswlib 0.8's own ``-1`` runs batches on one
  thread (measured: 9.6k vs 18k queries/s on 2 cores).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import hnswlib
import numpy as np

from img_search.files import is_no_space, storage_full
from img_search.index.base import (
    EXACT_K_FRACTION,
    BoolArray,
    FloatArray,
    IdArray,
    Metric,
    as_ids,
    as_query,
    as_vectors,
    check_allowed,
    check_metric,
    check_search_params,
    check_writable,
    empty_results,
    exact_is_cheaper,
    merge_topk,
    pad_results,
    score_rows,
    short_rows,
    topk,
    unit_queries,
)

logger = logging.getLogger(__name__)

_FILE = "index.hnswlib"
_F32 = np.dtype(np.float32)
# vectors fetched per get_items call by the exact path (64k x 768 float32 = 200 MB at most at a time)
_EXACT_CHUNK = 65_536
# a filtered search scored exactly reads up to this many allowed vectors with get_items (~33 us each), more from the
# level-0 block (a copy of every vector: ~0.65 ms per 1,000 stored)
_GET_ITEMS_MAX = 256


class HnswlibIndex:
    name: ClassVar[str] = "hnswlib"
    supports_remove: ClassVar[bool] = True
    search_params: ClassVar[tuple[str, ...]] = ("ef",)

    def __init__(
        self,
        *,
        dim: int,
        metric: str = "cosine",
        M: int = 16,
        ef_construction: int = 100,
        ef: int = 64,
        capacity: int = 1024,
        num_threads: int = -1,
        seed: int = 100,
    ) -> None:
        self.dim = int(dim)
        self.metric: Metric = check_metric(metric)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef = int(ef)
        self.num_threads = int(num_threads)
        self._threads = self.num_threads if self.num_threads > 0 else (os.cpu_count() or 1)
        self.seed = int(seed)
        self._index = hnswlib.Index(space="cosine" if self.metric == "cosine" else "ip", dim=self.dim)
        self._index.init_index(
            max_elements=max(1, int(capacity)), ef_construction=self.ef_construction, M=self.M, random_seed=self.seed
        )
        self._index.set_ef(self.ef)
        self._index.set_num_threads(self._threads)
        self._deleted: set[int] = set()
        self._readonly = False
        self._one_shape = (1, self.dim)

    def __len__(self) -> int:
        return int(self._index.element_count) - len(self._deleted)

    def add(self, ids: Any, vectors: Any) -> None:
        check_writable(self)
        vecs = as_vectors(vectors, self.dim)
        new_ids = as_ids(ids, vecs.shape[0])
        if new_ids.size == 0:
            return
        needed = int(self._index.element_count) + new_ids.size
        capacity = int(self._index.get_max_elements())
        if needed > capacity:
            new_capacity = max(needed, 2 * capacity)
            logger.debug("hnswlib: resizing %d -> %d", capacity, new_capacity)
            self._index.resize_index(new_capacity)
        self._index.add_items(vecs, new_ids, num_threads=self._threads)
        if self._deleted:
            self._deleted.difference_update(new_ids.tolist())

    def remove(self, ids: Any) -> None:
        check_writable(self)
        for label in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if label in self._deleted:
                continue
            try:
                self._index.mark_deleted(label)
            except RuntimeError:  # unknown label: ignored, as the contract says
                continue
            self._deleted.add(label)

    def set_search_params(self, **params: Any) -> None:
        check_search_params(self.name, self.search_params, params)
        if "ef" in params:
            self.ef = int(params["ef"])
            self._index.set_ef(self.ef)

    def contains(self, ids: Any) -> BoolArray:
        """Per id (hnswlib has no membership call): ``get_items`` raises for a label it never stored."""
        labels = np.asarray(ids, dtype=np.int64).reshape(-1).tolist()
        out = np.zeros(len(labels), dtype=bool)
        for row, label in enumerate(labels):
            if label in self._deleted:
                continue
            try:
                self._index.get_items([label])
            except RuntimeError:
                continue
            out[row] = True
        return out

    def _search_one(self, queries: Any, k: int) -> tuple[IdArray, FloatArray] | None:
        """A service's typical call in a few operations: one float32 (1, dim) query, k below the exhaustive
        threshold, a full answer. ``None`` otherwise (the general path answers, with identical results)."""
        if (type(queries) is not np.ndarray or queries.shape != self._one_shape or queries.dtype is not _F32
                or not queries.flags.c_contiguous):
            return None
        n_live = self._index.element_count - len(self._deleted)
        if k <= 0 or k >= EXACT_K_FRACTION * n_live:
            return None
        try:  # one row runs on the calling thread whatever num_threads says (hnswlib: rows <= 4 * threads)
            labels, distances = self._index.knn_query(queries, k)
        except RuntimeError:  # fewer than k reachable: the general path completes it
            return None
        return labels.view(np.int64), 1.0 - distances

    def search(self, queries: Any, k: int, *, allowed: Any = None) -> tuple[IdArray, FloatArray]:
        if allowed is not None:
            return self._search_allowed(as_query(queries, self.dim), k, check_allowed(allowed))
        one = self._search_one(queries, k)
        if one is not None:
            return one
        q = as_query(queries, self.dim)
        n_live = int(self._index.element_count) - len(self._deleted)
        if k <= 0 or n_live <= 0:
            return empty_results(q.shape[0], k)
        kk = k if k < n_live else n_live
        if exact_is_cheaper(kk, n_live):
            return pad_results(*self._search_exact(q, kk), k)
        try:
            labels, distances = self._index.knn_query(q, k=kk, num_threads=self._threads)
        except RuntimeError:
            # hnswlib refuses a 2-D answer when some query finds fewer than kk live neighbours
            # (small ef on a graph with many deletions): those rows are scored exactly instead.
            ids, scores = self._search_ragged(q, kk)
        else:
            ids = labels.view(np.int64)  # uint64 labels that came in as non-negative int64: same bits, no copy
            scores = 1.0 - distances
        rows = short_rows(ids, kk)
        if rows is not None:
            ids[rows], scores[rows] = self._search_exact(q[rows], kk)
        return (ids, scores) if kk == k else pad_results(ids, scores, k)

    def _search_allowed(self, q: FloatArray, k: int, allowed: IdArray) -> tuple[IdArray, FloatArray]:
        """hnswlib's own filtered search: ``knn_query(filter=...)`` with a Python callable that hnswlib calls for
        every node it considers returning (``allowed_set.__contains__``: a C-level set lookup, but one call into
        Python per node, under the GIL, so on one thread; docs/PERFORMANCE.md measures it). Rows it leaves short
        (hnswlib raises when any row finds fewer than k), and a k of at least ``EXACT_K_FRACTION`` of the allowed
        vectors, are scored exactly over the allowed stored vectors."""
        n_q = q.shape[0]
        if self._deleted:
            allowed = allowed[~np.isin(allowed, np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted)))]
        if k <= 0 or allowed.size == 0 or self._index.element_count == 0:
            return empty_results(n_q, k)
        allowed_set = set(allowed.tolist())
        # an upper bound of the allowed ids stored (ids of allowed the index never held are not known without a
        # lookup per id): the search asks for min(k, that) and completes short rows exactly
        kk = min(k, allowed.size)
        if not exact_is_cheaper(kk, allowed.size):
            try:
                labels, distances = self._index.knn_query(q, k=kk, num_threads=1, filter=allowed_set.__contains__)
            except RuntimeError:  # some row found fewer than kk: all rows exactly (correct, and rare)
                pass
            else:
                return pad_results(labels.view(np.int64), (1.0 - distances).astype(np.float32, copy=False), k)
        return self._search_exact_allowed(q, k, allowed)

    def _search_exact_allowed(self, q: FloatArray, k: int, allowed: IdArray) -> tuple[IdArray, FloatArray]:
        """Brute force over the stored vectors of the live ``allowed`` ids (``get_items`` below
        ``_GET_ITEMS_MAX`` of them, else the level-0 block)."""
        if self.metric == "cosine":
            q = unit_queries(q)
        if allowed.size <= _GET_ITEMS_MAX:
            present = allowed[self.contains(allowed)]
            vectors = np.asarray(self._index.get_items(present), dtype=np.float32).reshape(-1, self.dim)
            return score_rows(q, vectors, present, k)
        labels, vectors = self._stored()
        keep = np.isin(labels, allowed)
        return score_rows(q, vectors[keep], labels[keep], k)

    def _search_ragged(self, q: FloatArray, kk: int) -> tuple[IdArray, FloatArray]:
        """Per query, what the graph finds (at most kk); the rest padded for the exact pass to complete."""
        out_ids = np.full((q.shape[0], kk), -1, dtype=np.int64)
        out_scores = np.full((q.shape[0], kk), -np.inf, dtype=np.float32)
        for row in range(q.shape[0]):
            try:
                labels, distances = self._index.knn_query(q[row : row + 1], k=kk, num_threads=1)
            except RuntimeError:
                continue  # left short: scored exactly by the caller
            out_ids[row] = labels[0]
            out_scores[row] = 1.0 - distances[0]
        return out_ids, out_scores

    def _search_exact(self, q: FloatArray, kk: int) -> tuple[IdArray, FloatArray]:
        """Brute force over the live stored vectors (hnswlib keeps them normalised in its cosine space)."""
        if self.metric == "cosine":
            q = unit_queries(q)
        labels, vectors = self._stored()
        if self._deleted:
            keep = ~np.isin(labels, np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted)))
            labels, vectors = labels[keep], vectors[keep]
        best: tuple[IdArray, FloatArray] | None = None
        for start in range(0, labels.size, _EXACT_CHUNK):
            cols, scores = topk(q @ vectors[start : start + _EXACT_CHUNK].T, kk)
            part = (labels[start : start + _EXACT_CHUNK][cols], scores)
            best = part if best is None else merge_topk([best, part], kk)
        assert best is not None  # callers ask only when n_live > 0
        return best

    def _stored(self) -> tuple[IdArray, np.ndarray]:
        """(labels, vectors) of every stored element, deleted ones included.

        hnswlib's ``get_items`` costs ~33 us per vector (0.65 s for 20k), so the vectors are read from its pickled
        state instead (one copy of the level-0 block: 13 ms for 20k x 384): each element's bytes hold its links, then
        ``dim`` float32 at ``offset_data``, then its uint64 label at ``label_offset`` (hnswlib's serialisation
        version 1; any other version goes through ``get_items``).
        """
        state = self._index.__getstate__()[0]
        if state.get("ser_version") != 1:
            listed = np.asarray(self._index.get_ids_list(), dtype=np.int64)
            return listed, np.asarray(self._index.get_items(listed), dtype=np.float32)
        n, size = int(state["cur_element_count"]), int(state["size_data_per_element"])
        block = np.asarray(state["data_level0"]).view(np.uint8)[: n * size].reshape(n, size)
        offset, label_at = int(state["offset_data"]), int(state["label_offset"])
        vectors = np.ascontiguousarray(block[:, offset : offset + 4 * self.dim]).view(np.float32)
        raw_labels = np.ascontiguousarray(block[:, label_at : label_at + 8]).view(np.uint64).reshape(-1)
        return raw_labels.astype(np.int64), vectors

    def save(self, path: Path) -> None:
        check_writable(self)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._save_checked(path / _FILE)
        np.save(path / "deleted.npy", np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted)))
        meta = {
            "backend": self.name, "dim": self.dim, "metric": self.metric, "M": self.M,
            "ef_construction": self.ef_construction, "ef": self.ef, "num_threads": self.num_threads,
            "seed": self.seed,
        }
        (path / "meta.json").write_text(json.dumps(meta))

    def _save_checked(self, target: Path) -> None:
        """``save_index`` to a temporary file beside ``target``, checked, fsync-ed, then renamed over ``target``.

        hnswlib writes through a C++ ``std::ofstream`` and never checks it: on a full device it returns normally and
        leaves a truncated file (measured on a 1 MB tmpfs: 1,048,576 of 1,213,832 bytes, no error). So the written
        size is compared with hnswlib's own ``index_file_size()``; a short file raises ``StorageFullError`` and is
        removed, and ``target`` is left as it was.
        """
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            self._index.save_index(str(tmp))
            expected = int(self._index.index_file_size())
            written = tmp.stat().st_size if tmp.exists() else 0
            if written != expected:
                raise storage_full(target.parent, f"hnswlib wrote {written:,} of {expected:,} bytes of {target.name}")
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if is_no_space(exc):
                raise storage_full(target.parent, f"saving {target.name}: {getattr(exc, 'strerror', exc)}") from exc
            raise

    @classmethod
    def load(cls, path: Path, *, readonly: bool = False, **_: Any) -> HnswlibIndex:
        """Read the index into RAM (hnswlib cannot memory-map its file); ``readonly`` refuses later changes."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        params = {k: v for k, v in meta.items() if k != "backend"}
        index = cls(**params, capacity=1)
        index._index = hnswlib.Index(space="cosine" if index.metric == "cosine" else "ip", dim=index.dim)
        index._index.load_index(str(path / _FILE))
        index._index.set_ef(index.ef)
        index._index.set_num_threads(index._threads)
        index._deleted = set(np.load(path / "deleted.npy").tolist())
        index._readonly = readonly
        return index

    def memory_bytes(self) -> int:
        """hnswlib's own figure, ``index_file_size``: vectors, links and labels of the stored elements.

        Spare capacity (up to 2x after a doubling) is reserved address space that only becomes resident as it
        fills, so it is not counted (measured: 1M x 768 after doublings, RSS grew 3.35 GB for 3.2 GB reported).
        """
        return int(self._index.index_file_size())

    @property
    def raw_index(self) -> Any:
        return self._index
