"""Qdrant through ``qdrant-client``: a server or cluster (``url=``), or the client's local mode (``path=`` on disk,
``location=":memory:"`` in memory, the default).

Collection settings default to the seed's: COSINE (or DOT for ``ip``), HNSW ``m=16`` / ``ef_construct=100``, INT8
scalar quantization (``quantile=0.99``) kept in RAM (``always_ram``), and searches that re-score the quantized
candidates with the original vectors (``rescore``, ``oversampling``).

The client's local mode is a brute-force NumPy emulation written in Python: it ignores HNSW, quantization and the
search parameters (they are not even sent, to spare the client's warning). It is right for exercising the client code
path and small collections, wrong as an engine -- ``qdrant_edge`` is Qdrant's own engine in-process. Server mode is
untested on the project's machines (tests behind the ``qdrant_server`` marker).

``save`` writes the settings; for local mode it also writes the points (ids and vectors), which ``load`` upserts into a
fresh local client. For a server the data stays in the server's collection and ``load`` reconnects to it (pass
``api_key=`` again: it is never written to disk). ``load(readonly=True)`` builds the local-mode index in memory
(never at ``local_path``) and refuses changes; for a server it only refuses changes from this object.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from qdrant_client import QdrantClient, models

from img_search.errors import DimensionMismatchError, InvalidInputError
from img_search.index.base import (
    QDRANT_SEARCH_PARAM_CASTS,
    BoolArray,
    FloatArray,
    IdArray,
    Metric,
    apply_search_params,
    as_ids,
    as_query,
    as_vectors,
    check_allowed,
    check_metric,
    check_writable,
    pad_results,
)

logger = logging.getLogger(__name__)

_SCROLL_PAGE = 4096


class QdrantIndex:
    name: ClassVar[str] = "qdrant"
    supports_remove: ClassVar[bool] = True
    search_params: ClassVar[tuple[str, ...]] = ("hnsw_ef", "rescore", "oversampling", "exact")

    def __init__(
        self,
        *,
        dim: int,
        metric: str = "cosine",
        url: str | None = None,
        path: str | Path | None = None,
        location: str | None = None,
        api_key: str | None = None,
        prefer_grpc: bool = False,
        timeout: int | None = None,
        collection: str = "img_search",
        recreate: bool = False,
        m: int = 16,
        ef_construct: int = 100,
        hnsw_ef: int = 64,
        quantization: str | None = "int8",
        quantile: float | None = 0.99,
        always_ram: bool = True,
        rescore: bool = True,
        oversampling: float | None = 2.0,
        exact: bool = False,
        on_disk: bool = False,
        batch_size: int = 1024,
    ) -> None:
        if quantization not in (None, "int8"):
            raise ValueError(f"unknown qdrant quantization {quantization!r}; valid: int8, None")
        if sum(x is not None for x in (url, path, location)) > 1:
            raise ValueError("qdrant: give at most one of url=, path=, location=")
        self.dim = int(dim)
        self.metric: Metric = check_metric(metric)
        self.url, self.path = url, None if path is None else str(path)
        self.location = location if (url is None and path is None) else None
        if self.url is None and self.path is None and self.location is None:
            self.location = ":memory:"
        self.mode = "server" if url is not None else "local"
        self.collection = collection
        self.m, self.ef_construct = int(m), int(ef_construct)
        self.quantization, self.quantile, self.always_ram = quantization, quantile, bool(always_ram)
        self.on_disk, self.batch_size = bool(on_disk), int(batch_size)
        self.prefer_grpc, self.timeout = bool(prefer_grpc), timeout
        self.hnsw_ef, self.rescore, self.oversampling, self.exact = int(hnsw_ef), bool(rescore), oversampling, exact
        if url is not None:
            self._client = QdrantClient(url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout)
        elif self.path is not None:
            self._client = QdrantClient(path=self.path)
        else:
            self._client = QdrantClient(location=self.location)
        self._params = self._make_search_params()
        self._readonly = False
        self._ensure_collection(recreate)

    def _ensure_collection(self, recreate: bool) -> None:
        exists = self._client.collection_exists(self.collection)
        if exists and recreate:
            self._client.delete_collection(self.collection)
            exists = False
        if exists:
            info = self._client.get_collection(self.collection)
            params = info.config.params.vectors
            size = getattr(params, "size", None)
            if size is not None and int(size) != self.dim:
                raise DimensionMismatchError(
                    f"qdrant collection {self.collection!r} holds {size}-d vectors, not {self.dim}-d"
                )
            return
        quant = None
        if self.quantization == "int8":
            quant = models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=self.quantile, always_ram=self.always_ram
                )
            )
        self._client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(
                size=self.dim,
                distance=models.Distance.COSINE if self.metric == "cosine" else models.Distance.DOT,
                on_disk=self.on_disk,
            ),
            hnsw_config=models.HnswConfigDiff(m=self.m, ef_construct=self.ef_construct),
            quantization_config=quant,
        )

    def _make_search_params(self) -> models.SearchParams | None:
        if self.mode != "server":
            return None  # local mode is brute force and warns about any search params
        quant = None
        if self.quantization is not None:
            quant = models.QuantizationSearchParams(rescore=self.rescore, oversampling=self.oversampling)
        return models.SearchParams(hnsw_ef=self.hnsw_ef, exact=bool(self.exact), quantization=quant)

    def set_search_params(self, **params: Any) -> None:
        """Change hnsw_ef / rescore / oversampling / exact (they have no effect in the client's local mode)."""
        apply_search_params(self, self.search_params, params, QDRANT_SEARCH_PARAM_CASTS)
        self._params = self._make_search_params()

    def __len__(self) -> int:
        return int(self._client.count(self.collection, exact=True).count)

    def add(self, ids: Any, vectors: Any) -> None:
        check_writable(self)
        vecs = as_vectors(vectors, self.dim)
        new_ids = as_ids(ids, vecs.shape[0])
        for start in range(0, new_ids.size, self.batch_size):
            stop = start + self.batch_size
            batch = models.Batch(ids=new_ids[start:stop].tolist(), vectors=vecs[start:stop].tolist())
            self._client.upsert(self.collection, points=batch, wait=True)

    def remove(self, ids: Any) -> None:
        check_writable(self)
        drop = np.asarray(ids, dtype=np.int64).reshape(-1)
        if drop.size:
            point_ids: list[Any] = drop.tolist()
            self._client.delete(self.collection, points_selector=models.PointIdsList(points=point_ids), wait=True)

    def _raw_search(self, q: FloatArray, kk: int, flt: models.Filter | None = None) -> list[Any]:
        """The client call itself (what a benchmark times as the raw library)."""
        requests = [models.QueryRequest(query=row.tolist(), limit=kk, params=self._params, filter=flt) for row in q]
        return self._client.query_batch_points(self.collection, requests=requests)

    def contains(self, ids: Any) -> BoolArray:
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        if wanted.size == 0:
            return np.zeros(0, dtype=bool)
        point_ids: list[Any] = np.unique(wanted).tolist()
        found = {int(r.id) for r in self._client.retrieve(self.collection, ids=point_ids, with_payload=False,
                                                           with_vectors=False)}
        return np.fromiter((int(i) in found for i in wanted.tolist()), dtype=bool, count=wanted.size)

    def search(self, queries: Any, k: int, *, allowed: Any = None) -> tuple[IdArray, FloatArray]:
        """``allowed``: Qdrant's own filtered search, a ``HasIdCondition`` over those ids (the server plans it: a
        full scan of the matching points when few, a filtered HNSW walk otherwise)."""
        q = as_query(queries, self.dim)
        n = q.shape[0]
        flt = None
        if allowed is not None:
            ids_allowed = check_allowed(allowed)
            if ids_allowed.size == 0:
                return pad_results(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32), k)
            point_ids: list[Any] = ids_allowed.tolist()
            flt = models.Filter(must=[models.HasIdCondition(has_id=point_ids)])
        if k <= 0 or n == 0:
            return pad_results(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32), k)
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        counts = self._fill(ids, scores, np.arange(n), self._raw_search(q, k, flt))
        if self.mode == "server" and (counts < k).any():  # an HNSW walk can stop short of k: re-ask exactly
            reachable = len(self) if flt is None else self._client.count(self.collection, count_filter=flt,
                                                                         exact=True).count
            short = np.flatnonzero(counts < min(k, reachable))
            if short.size:
                exact = models.SearchParams(exact=True)
                requests = [models.QueryRequest(query=q[i].tolist(), limit=k, params=exact, filter=flt)
                            for i in short]
                self._fill(ids, scores, short, self._client.query_batch_points(self.collection, requests=requests))
        return ids, scores

    @staticmethod
    def _fill(ids: IdArray, scores: FloatArray, rows: np.ndarray, responses: list[Any]) -> np.ndarray:
        """Write each response's points into its row; returns how many points each row got."""
        counts = np.zeros(len(rows), dtype=np.int64)
        for j, (row, response) in enumerate(zip(rows.tolist(), responses, strict=True)):
            points = response.points
            if points:
                ids[row, : len(points)] = [int(p.id) for p in points]
                scores[row, : len(points)] = [p.score for p in points]
                counts[j] = len(points)
        return counts

    def _all_points(self) -> tuple[IdArray, FloatArray]:
        ids: list[int] = []
        vecs: list[list[float]] = []
        offset = None
        while True:
            records, offset = self._client.scroll(
                self.collection, limit=_SCROLL_PAGE, offset=offset, with_vectors=True, with_payload=False
            )
            for rec in records:
                ids.append(int(rec.id))
                vecs.append(rec.vector)  # type: ignore[arg-type]
            if offset is None:
                break
        return np.asarray(ids, dtype=np.int64), np.asarray(vecs, dtype=np.float32).reshape(-1, self.dim)

    def _config(self) -> dict[str, Any]:
        return {
            "backend": self.name, "dim": self.dim, "metric": self.metric, "mode": self.mode, "url": self.url,
            "collection": self.collection, "m": self.m, "ef_construct": self.ef_construct, "hnsw_ef": self.hnsw_ef,
            "quantization": self.quantization, "quantile": self.quantile, "always_ram": self.always_ram,
            "rescore": self.rescore, "oversampling": self.oversampling, "exact": self.exact, "on_disk": self.on_disk,
            "batch_size": self.batch_size, "prefer_grpc": self.prefer_grpc, "timeout": self.timeout,
        }

    def save(self, path: Path) -> None:
        check_writable(self)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.mode == "local":
            ids, vecs = self._all_points()
            np.save(path / "ids.npy", ids)
            np.save(path / "vectors.npy", vecs)
        (path / "meta.json").write_text(json.dumps(self._config()))

    @classmethod
    def load(cls, path: Path, *, api_key: str | None = None, location: str | None = None,
             local_path: str | Path | None = None, readonly: bool = False, **_: Any) -> QdrantIndex:
        """Reconnect to the server collection, or rebuild a local-mode index (in memory unless ``local_path``).

        ``readonly``: refuse later changes; a local-mode index is then always in memory (``local_path`` is an
        ``InvalidInputError``: a reader writes nowhere).
        """
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        mode = meta.pop("mode")
        meta.pop("backend")
        url = meta.pop("url")
        if mode == "server":
            index = cls(**meta, url=url, api_key=api_key)
        else:
            if readonly and local_path is not None:
                raise InvalidInputError("qdrant: a read-only load keeps the local-mode index in memory; "
                                        "drop local_path")
            index = cls(**meta, path=local_path, location=None if local_path else (location or ":memory:"),
                        recreate=True)
            index.add(np.load(path / "ids.npy"), np.load(path / "vectors.npy", mmap_mode="r"))
        index._readonly = readonly
        return index

    def memory_bytes(self) -> int:
        """An estimate from the point count (the client reports no memory figure): float32 vectors + ids, plus in
        server mode the INT8 copy and the HNSW links (2m per point, 4 bytes each, at level 0)."""
        n = len(self)
        total = n * (self.dim * 4 + 8)
        if self.mode == "server":
            total += n * (2 * self.m * 4)
            if self.quantization == "int8":
                total += n * self.dim
        return total

    def close(self) -> None:
        self._client.close()

    @property
    def raw_index(self) -> Any:
        return self._client
