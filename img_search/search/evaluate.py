"""Retrieval evaluation harness: ANN backends side by side on precomputed gallery and query embeddings.

Entry point (Hydra; configs in ``img_search/config/search_eval``)::

    python -m img_search.search.evaluate image_dataset=inquire_siglip query_dataset=inquire_siglip evaluation=faiss_only

For every method of ``evaluation.methods`` (then ``evaluation.extra_methods``), after an exact baseline, it reports
build time (training included), index memory, batch throughput (queries/s, the best of ``throughput_repeats``
full-batch searches), single-query latency p50/p99 (one query per call), ANN recall@k against the exact
baseline, and retrieval quality against the relevance labels (recall@k, AP@50, nDCG@50, MRR; see ``metrics.py``).
The results table goes to stdout (Rich), logs go to stderr, rows to ``evaluation.output_path`` (CSV) and, in sweep
mode, recall-vs-queries/s curves to a PNG. ``docs/EVALUATION.md`` documents every option.

Library functions raise typed errors (``DimensionMismatchError``, ``EmbeddingDatasetError``,
``EvaluationConfigError``); only ``main`` turns them into a logged message and exit status 2.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from img_search.data.embeddings import EmbeddingDatasetSpec, EmbeddingTable, load_gallery, load_queries
from img_search.errors import DimensionMismatchError, ImgSearchError, InvalidInputError, UnknownNameError
from img_search.index import BACKENDS, BackendUnavailableError, VectorIndex, create_index
from img_search.search.metrics import (
    DEFAULT_CUTOFF,
    RetrievalScores,
    ann_recall_at_k,
    normalize_id,
    retrieval_scores,
)
from img_search.wording import count, noun

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "search_eval"
CONFIG_NAME = "config"

EXACT_BACKEND = "exact"
# names a method's `backend` may use -> index registry names; other names go to the registry unchanged
BACKEND_ALIASES: dict[str, str] = {
    "brute_force": EXACT_BACKEND,
    "bruteforce": EXACT_BACKEND,
    "numpy": EXACT_BACKEND,
    "faiss_cpu": "faiss",
    "qdrant-edge": "qdrant_edge",
    "qdrantedge": "qdrant_edge",
}
# method keys the harness reads itself; everything else is a backend parameter
_RESERVED_KEYS = frozenset({"backend", "name", "label", "metric", "sweep"})
# a `method` key is passed on only to backends that take one (faiss); elsewhere it is part of the label
_METHOD_KEY = "method"

EXIT_CONFIG_ERROR = 2


class EvaluationConfigError(InvalidInputError):
    """The evaluation section of the config is invalid (bad k, unknown key, malformed method)."""


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class MethodSpec:
    """One index configuration: a registry backend, its constructor parameters, and an optional sweep."""

    backend: str
    metric: str
    params: dict[str, Any]
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    # the user's label (`name:` in the method, or its key in extra_methods); None: derived from the parameters
    name: str | None = None
    # the backend name as the config wrote it (before aliases), used in derived labels
    config_backend: str | None = None

    @property
    def label(self) -> str:
        return self.label_without(None)

    def label_without(self, param: str | None) -> str:
        """The label; a derived one leaves out ``param`` (the swept parameter, whose build-time value is moot)."""
        if self.name:
            return self.name
        return _default_label(self.config_backend or self.backend, {k: v for k, v in self.params.items() if k != param})

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], *, default_metric: str, label: str | None = None) -> MethodSpec:
        if not isinstance(raw, Mapping) or not raw.get("backend"):
            raise EvaluationConfigError(
                f"a method must be a mapping with a `backend` key, e.g. {{backend: faiss, method: hnsw}}; got {raw!r}"
            )
        config_backend = str(raw["backend"])
        sweep = raw.get("sweep") or {}
        if not isinstance(sweep, Mapping) or not all(
            isinstance(v, Sequence) and not isinstance(v, str) for v in sweep.values()
        ):
            raise EvaluationConfigError(f"`sweep` of method {raw!r} must map a parameter to a list of values")
        name = raw.get("name") or raw.get("label") or label
        return cls(
            backend=BACKEND_ALIASES.get(config_backend, config_backend),
            metric=str(raw.get("metric") or default_metric),
            params={str(k): v for k, v in raw.items() if k not in _RESERVED_KEYS},
            sweep={str(k): list(v) for k, v in sweep.items()},
            name=str(name) if name else None,
            config_backend=config_backend,
        )


def _default_label(backend: str, params: Mapping[str, Any]) -> str:
    method = params.get(_METHOD_KEY)
    head = f"{backend}-{method}" if method else backend
    rest = " ".join(f"{k}={v}" for k, v in params.items() if k != _METHOD_KEY)
    return f"{head} {rest}".strip()


@dataclass(frozen=True)
class SweepConfig:
    """Sweep mode: rebuild nothing, vary one search parameter per method, plot recall against queries/s."""

    enabled: bool = False
    # search parameter -> values; each method sweeps the first listed parameter its backend can change
    values: dict[str, list[Any]] = field(default_factory=dict)
    plot_path: str | None = None

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> SweepConfig:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {"enabled", "values", "plot_path"})
        if unknown:
            raise EvaluationConfigError(
                f"unknown sweep {noun(len(unknown), 'key')} {', '.join(unknown)}; valid: enabled, values, plot_path"
            )
        values = raw.get("values") or {}
        return cls(
            enabled=bool(raw.get("enabled", False)),
            values={str(k): list(v) for k, v in values.items()},
            plot_path=raw.get("plot_path"),
        )


@dataclass(frozen=True)
class EvaluationConfig:
    methods: tuple[MethodSpec, ...] = ()
    recall_at: tuple[int, ...] = (1, 5, 10, 50)
    # neighbours retrieved per query; every metric is computed from these lists
    top_k: int = 100
    # cut-off of AP, nDCG and MRR (INQUIRE scores the top 50)
    cutoff: int = DEFAULT_CUTOFF
    # k of the headline ANN recall (table, sweep plot); the CSV also has ANN recall at every recall_at
    ann_recall_k: int = 10
    metric: str = "cosine"
    throughput_repeats: int = 3
    latency_queries: int = 1000
    output_path: str | None = None
    # a method whose backend raises is recorded as failed and the run goes on, unless fail_fast
    fail_fast: bool = False
    # cap on BLAS / OpenMP thread pools while building and measuring (threadpoolctl); None leaves them alone
    threads: int | None = None
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        if not self.recall_at or min(self.recall_at) < 1:
            raise EvaluationConfigError(f"recall_at must list positive cut-offs, got {list(self.recall_at)}")
        if min(self.cutoff, self.ann_recall_k, self.throughput_repeats) < 1 or self.latency_queries < 0:
            raise EvaluationConfigError(
                "cutoff, ann_recall_k and throughput_repeats must be >= 1 and latency_queries >= 0"
            )
        if self.threads is not None and self.threads < 1:
            raise EvaluationConfigError(f"threads must be >= 1 (or null), got {self.threads}")
        deepest = max(*self.recall_at, self.cutoff, self.ann_recall_k)
        if self.top_k < deepest:
            raise EvaluationConfigError(
                f"top_k={self.top_k} retrieves fewer neighbours than the metrics read (recall_at "
                f"{list(self.recall_at)}, cutoff {self.cutoff}, ann_recall_k {self.ann_recall_k}); raise "
                f"evaluation.top_k to >= {deepest} or lower those"
            )

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> EvaluationConfig:
        raw = dict(raw)
        valid = {
            "methods", "extra_methods", "recall_at", "top_k", "cutoff", "ann_recall_k", "metric",
            "throughput_repeats", "latency_queries", "output_path", "fail_fast", "sweep", "threads",
        }  # fmt: skip
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise EvaluationConfigError(
                f"unknown evaluation {noun(len(unknown), 'key')} {', '.join(unknown)}; "
                f"valid keys: {', '.join(sorted(valid))}"
            )
        metric = str(raw.pop("metric", "cosine"))
        methods = [MethodSpec.from_config(m, default_metric=metric) for m in _as_method_list(raw.pop("methods", None))]
        methods += [
            MethodSpec.from_config(m, default_metric=metric, label=label)
            for label, m in _as_named_methods(raw.pop("extra_methods", None))
        ]
        recall_at = raw.pop("recall_at", cls.recall_at)
        recall_at = [recall_at] if isinstance(recall_at, int) else recall_at
        ints = {k: int(raw.pop(k)) for k in _INT_KEYS if raw.get(k) is not None}
        output_path = raw.pop("output_path", None)
        return cls(
            methods=tuple(methods),
            recall_at=tuple(sorted({int(k) for k in recall_at})),
            metric=metric,
            output_path=str(output_path) if output_path else None,
            fail_fast=bool(raw.pop("fail_fast", False)),
            sweep=SweepConfig.from_config(raw.pop("sweep", None)),
            **ints,
        )


_INT_KEYS = ("top_k", "cutoff", "ann_recall_k", "throughput_repeats", "latency_queries", "threads")


def _as_method_list(raw: Any) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    if isinstance(raw, Mapping):  # `methods` written as a mapping name -> method: keep config order
        return [{"name": k, **v} if isinstance(v, Mapping) and "name" not in v else v for k, v in raw.items()]
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise EvaluationConfigError(f"evaluation.methods must be a list of methods, got {raw!r}")
    # `evaluation.methods.N=null` blanks an entry: skip it
    return [m for m in raw if m is not None]


def _as_named_methods(raw: Any) -> list[tuple[str | None, Mapping[str, Any]]]:
    """``extra_methods`` is a mapping label -> method (what `+evaluation.extra_methods.NAME=...` builds) or a list."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return [(str(k), v) for k, v in raw.items() if v is not None]
    return [(None, m) for m in _as_method_list(raw)]


# ---------------------------------------------------------------------------------------------------------------
# results


@dataclass
class ResultRow:
    """One measured configuration (a method, or one point of a method's sweep)."""

    method: str
    backend: str
    params: dict[str, Any]
    status: str = "ok"
    message: str = ""
    sweep_param: str | None = None
    sweep_value: Any = None
    build_s: float = math.nan
    memory_mb: float = math.nan
    qps: float = math.nan
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    ann_recall: dict[int, float] = field(default_factory=dict)
    quality: RetrievalScores | None = None


@dataclass
class EvaluationReport:
    rows: list[ResultRow]
    config: EvaluationConfig
    n_gallery: int
    n_queries: int
    dim: int
    model_name: str | None

    def measured(self) -> list[ResultRow]:
        return [r for r in self.rows if r.status == "ok"]


# ---------------------------------------------------------------------------------------------------------------
# evaluation


def check_compatible(gallery: EmbeddingTable, queries: EmbeddingTable) -> None:
    """Refuse to compare vectors of different dimensions or from different models."""
    if gallery.dim != queries.dim:
        raise DimensionMismatchError(
            f"gallery vectors have {gallery.dim} dimensions ({gallery.source}, model {gallery.model_name or '?'}) "
            f"but query vectors have {queries.dim} ({queries.source}, model {queries.model_name or '?'}); "
            "embed both with the same model"
        )
    if gallery.model_name and queries.model_name and gallery.model_name != queries.model_name:
        raise DimensionMismatchError(
            f"gallery vectors come from {gallery.model_name!r} but query vectors from {queries.model_name!r}; "
            "scores across models are meaningless: embed the queries with the gallery's model "
            "(or fix image_dataset.model_name / query_dataset.model_name if a name is wrong)"
        )


@dataclass(frozen=True)
class _Problem:
    """The shared inputs of every measurement."""

    gallery_vectors: NDArray[np.float32]
    queries: NDArray[np.float32]
    gallery_keys: NDArray[np.object_]  # normalised gallery ids by index position
    relevant: list[set[str]]
    ground_truth: NDArray[np.int64]  # exact top_k positions (filled in after the baseline ran)


def run_evaluation(
    gallery: EmbeddingTable,
    queries: EmbeddingTable,
    config: EvaluationConfig,
    *,
    index_factory: Callable[..., VectorIndex] = create_index,
) -> EvaluationReport:
    """Measure the exact baseline and every configured method on ``gallery`` x ``queries``."""
    with thread_limits(config.threads):
        return _run_evaluation(gallery, queries, config, index_factory)


@contextmanager
def thread_limits(threads: int | None) -> Iterator[None]:
    """Cap every BLAS / OpenMP pool at ``threads``. On few cores, numpy's OpenBLAS threads spinning after the
    baseline's matrix product and faiss' OpenMP threads starve each other, inflating latencies by orders of
    magnitude (docs/EVALUATION.md)."""
    if threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as exc:
        raise EvaluationConfigError("evaluation.threads needs threadpoolctl: pip install threadpoolctl") from exc
    with threadpool_limits(limits=threads):
        logger.info("BLAS / OpenMP thread pools limited to %s", count(threads, "thread"))
        yield


def _run_evaluation(
    gallery: EmbeddingTable,
    queries: EmbeddingTable,
    config: EvaluationConfig,
    index_factory: Callable[..., VectorIndex],
) -> EvaluationReport:
    check_compatible(gallery, queries)
    if queries.relevant is None:
        raise EvaluationConfigError("the query table carries no relevance labels (set query_dataset.relevance_column)")
    keys = np.array([normalize_id(i) for i in gallery.ids], dtype=object)
    relevant = [{normalize_id(i) for i in rel} for rel in queries.relevant]
    _check_relevance_coverage(keys, relevant)
    problem = _Problem(
        gallery_vectors=gallery.vectors,
        queries=np.ascontiguousarray(queries.vectors, dtype=np.float32),
        gallery_keys=keys,
        relevant=relevant,
        ground_truth=np.empty((0, 0), dtype=np.int64),
    )
    baseline = MethodSpec(backend=EXACT_BACKEND, metric=config.metric, params={}, name="exact (baseline)")
    index, build_s = _build(baseline, problem, index_factory)
    exact_row, exact_ids = _measure(baseline, index, build_s, problem, config)
    problem = replace(problem, ground_truth=exact_ids)
    exact_row.ann_recall = _ann_recalls(exact_ids, exact_ids, config)
    rows = [exact_row]
    del index
    for method in config.methods:
        rows += _evaluate_method(method, problem, config, index_factory)
    return EvaluationReport(
        rows=rows,
        config=config,
        n_gallery=len(gallery),
        n_queries=len(queries),
        dim=gallery.dim,
        model_name=gallery.model_name or queries.model_name,
    )


def validate_methods(config: EvaluationConfig) -> None:
    """Fail before any data is read when a method names an unregistered backend or a parameter it does not take.

    A registered backend whose library is missing is not an error here: its methods are skipped at run time.
    """
    unknown = sorted({m.backend for m in config.methods} - set(BACKENDS))
    if unknown:
        raise EvaluationConfigError(
            f"unknown index {noun(len(unknown), 'backend')} {', '.join(unknown)} in evaluation.methods; "
            "registered backends: "
            f"{', '.join(sorted(BACKENDS))}"
        )
    for method in config.methods:
        try:
            cls = _resolve_backend_class(method.backend)
        except BackendUnavailableError:
            continue
        if cls is None:
            continue
        accepted = _keyword_params(cls)
        if accepted is None:
            continue
        extra = sorted(set(constructor_params(method)) - accepted)
        if extra:
            raise EvaluationConfigError(
                f"method {method.label}: backend {method.backend} takes no {noun(len(extra), 'parameter')} "
                f"{', '.join(extra)} "
                f"(it takes: {', '.join(sorted(accepted - {'dim', 'metric'}))}). If the method came from "
                "`+evaluation.methods.N=...`, Hydra merged it into entry N and that entry's other keys survived: "
                "append with `+evaluation.extra_methods.NAME=...` instead (docs/EVALUATION.md)"
            )


def _keyword_params(cls: type) -> set[str] | None:
    """Names the constructor accepts, None when it takes ``**kwargs``."""
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def _check_relevance_coverage(keys: NDArray[np.object_], relevant: list[set[str]]) -> None:
    labelled = set().union(*relevant) if relevant else set()
    if not labelled:
        logger.warning("no query has relevant gallery ids: retrieval-quality metrics will be empty")
        return
    present = labelled & set(keys.tolist())
    if not present:
        sample = ", ".join(sorted(labelled)[:3])
        raise EvaluationConfigError(
            f"none of the {len(labelled)} relevant ids of the queries (e.g. {sample}) is a gallery id (e.g. "
            f"{', '.join(keys[:3].tolist())}): the query and gallery datasets do not belong together, or "
            "id_column / relevance_column point at the wrong columns"
        )
    if len(present) < len(labelled):
        logger.warning(
            "%d of %d relevant ids are not in the gallery; they count as missed in recall, AP and nDCG",
            len(labelled) - len(present),
            len(labelled),
        )
    if len(set(keys.tolist())) < len(keys):
        logger.warning("the gallery repeats ids (after extension normalisation); duplicates count once per ranking")


def _evaluate_method(
    method: MethodSpec,
    problem: _Problem,
    config: EvaluationConfig,
    index_factory: Callable[..., VectorIndex],
) -> list[ResultRow]:
    logger.info(
        "method %s: backend %s, metric %s, params %s", method.label, method.backend, method.metric, method.params
    )
    try:
        index, build_s = _build(method, problem, index_factory)
        sweep_param, values = _sweep_plan(method, index, config.sweep)
        if sweep_param is None:
            row, _ = _measure(method, index, build_s, problem, config)
            return [row]
        rows = []
        for value in values:
            index.set_search_params(**{sweep_param: value})
            row, _ = _measure(method, index, build_s, problem, config)
            row.method = method.label_without(sweep_param)
            row.params[sweep_param] = value
            row.sweep_param, row.sweep_value = sweep_param, value
            rows.append(row)
        return rows
    except BackendUnavailableError as exc:
        logger.warning("skipping method %s: %s", method.label, exc)
        return [ResultRow(method.label, method.backend, method.params, status="skipped", message=str(exc))]
    except (EvaluationConfigError, DimensionMismatchError, UnknownNameError):
        raise
    except Exception as exc:  # a backend library's own error: record it and go on with the other methods
        if config.fail_fast:
            raise
        logger.exception("method %s failed", method.label)
        return [ResultRow(method.label, method.backend, method.params, status="failed", message=repr(exc))]


def _sweep_plan(method: MethodSpec, index: VectorIndex, sweep: SweepConfig) -> tuple[str | None, list[Any]]:
    """The search parameter to vary and its values: the method's own `sweep`, else the global one in sweep mode.

    ``search_params`` may be a union over a backend's variants (faiss lists nprobe and ef_search), so a global
    sweep probes each candidate with ``set_search_params``, which raises ``ValueError`` for a parameter the built
    index cannot change, and takes the first one accepted.
    """
    tunable = tuple(getattr(index, "search_params", ()))
    if method.sweep:
        if len(method.sweep) != 1:
            raise EvaluationConfigError(f"method {method.label}: sweep one parameter at a time, got {method.sweep}")
        ((param, values),) = method.sweep.items()
        if param not in tunable:
            raise EvaluationConfigError(
                f"method {method.label}: backend {method.backend} cannot change {param!r} after building "
                f"(search parameters: {', '.join(tunable) or 'none'})"
            )
        return param, values
    if not sweep.enabled:
        return None, []
    for param, values in sweep.values.items():
        if param not in tunable or not values:
            continue
        try:
            index.set_search_params(**{param: values[0]})
        except ValueError:
            continue
        return param, values
    logger.info("method %s has none of the swept parameters (%s): one point", method.label, ", ".join(sweep.values))
    return None, []


def _resolve_backend_class(name: str) -> type | None:
    """The backend's class (to read its constructor signature), None when the name is not registered."""
    target = BACKENDS.get(name)
    if target is None:
        return None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(f"index backend {name!r} needs a library that is not installed ({exc})") from exc
    cls = getattr(module, cls_name)
    return cls if isinstance(cls, type) else None


def constructor_params(method: MethodSpec) -> dict[str, Any]:
    """The method's parameters minus a ``method`` key its backend does not take (hnswlib, scann: a label only)."""
    params = dict(method.params)
    if _METHOD_KEY not in params:
        return params
    cls = _resolve_backend_class(method.backend)
    accepted = _keyword_params(cls) if cls is not None else None
    if accepted is not None and _METHOD_KEY not in accepted:
        logger.info("backend %s takes no `method`; %r is kept as a label only", method.backend, params[_METHOD_KEY])
        del params[_METHOD_KEY]
    return params


def _build(
    method: MethodSpec, problem: _Problem, index_factory: Callable[..., VectorIndex]
) -> tuple[VectorIndex, float]:
    dim = int(problem.gallery_vectors.shape[1])
    params = constructor_params(method)
    start = time.perf_counter()
    index = index_factory(method.backend, dim=dim, metric=method.metric, **params)
    index.add(np.arange(problem.gallery_vectors.shape[0], dtype=np.int64), problem.gallery_vectors)
    build_s = time.perf_counter() - start
    logger.info("built %s over %d vectors in %.2f s", method.label, len(index), build_s)
    return index, build_s


def _measure(
    method: MethodSpec, index: VectorIndex, build_s: float, problem: _Problem, config: EvaluationConfig
) -> tuple[ResultRow, NDArray[np.int64]]:
    queries, k = problem.queries, config.top_k
    ids, qps = _batch_search(index, queries, k, config.throughput_repeats)
    p50, p99 = _single_query_latency(index, queries, k, config.latency_queries)
    rankings = [[problem.gallery_keys[p] if p >= 0 else None for p in row] for row in ids.tolist()]
    quality = retrieval_scores(rankings, problem.relevant, recall_at=config.recall_at, cutoff=config.cutoff)
    row = ResultRow(
        method=method.label,
        backend=method.backend,
        params=dict(method.params, metric=method.metric),
        build_s=build_s,
        memory_mb=index.memory_bytes() / 2**20,
        qps=qps,
        latency_p50_ms=p50,
        latency_p99_ms=p99,
        quality=quality,
    )
    if problem.ground_truth.size:
        row.ann_recall = _ann_recalls(ids, problem.ground_truth, config)
    return row, ids


def _ann_recalls(ids: NDArray[np.int64], truth: NDArray[np.int64], config: EvaluationConfig) -> dict[int, float]:
    ks = sorted({*config.recall_at, config.ann_recall_k})
    return {k: ann_recall_at_k(ids, truth, k) for k in ks}


def _batch_search(
    index: VectorIndex, queries: NDArray[np.float32], k: int, repeats: int
) -> tuple[NDArray[np.int64], float]:
    """All queries in one call, ``repeats`` times; throughput of the fastest run (the first one warms caches)."""
    best = math.inf
    ids = np.empty((0, k), dtype=np.int64)
    for _ in range(repeats):
        start = time.perf_counter()
        ids, _scores = index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return np.asarray(ids, dtype=np.int64), queries.shape[0] / best if best > 0 else math.inf


def _single_query_latency(index: VectorIndex, queries: NDArray[np.float32], k: int, limit: int) -> tuple[float, float]:
    """p50 and p99 (ms) of one-query searches over the first ``limit`` queries, after one warm-up call."""
    n = min(limit, queries.shape[0])
    if n == 0:
        return math.nan, math.nan
    index.search(queries[:1], k)
    times = np.empty(n, dtype=np.float64)
    for i in range(n):
        start = time.perf_counter()
        index.search(queries[i : i + 1], k)
        times[i] = time.perf_counter() - start
    p50, p99 = np.percentile(times * 1e3, [50, 99])
    return float(p50), float(p99)


# ---------------------------------------------------------------------------------------------------------------
# output: table, CSV, sweep plot


def result_columns(config: EvaluationConfig) -> list[str]:
    ks = sorted({*config.recall_at, config.ann_recall_k})
    c = config.cutoff
    return [
        "method", "backend", "status", "params", "sweep_param", "sweep_value", "n_gallery", "n_queries", "dim",
        "build_s", "memory_mb", "qps", "latency_p50_ms", "latency_p99_ms",
        *[f"ann_recall@{k}" for k in ks], *[f"recall@{k}" for k in config.recall_at],
        f"ap@{c}", f"ndcg@{c}", f"mrr@{c}", "message",
    ]  # fmt: skip


def report_records(report: EvaluationReport) -> list[dict[str, Any]]:
    """One flat dict per row, keyed by ``result_columns``."""
    config, c = report.config, report.config.cutoff
    records = []
    for row in report.rows:
        record: dict[str, Any] = {
            "method": row.method,
            "backend": row.backend,
            "status": row.status,
            "params": json.dumps(row.params, sort_keys=True, default=str),
            "sweep_param": row.sweep_param or "",
            "sweep_value": "" if row.sweep_value is None else row.sweep_value,
            "n_gallery": report.n_gallery,
            "n_queries": report.n_queries,
            "dim": report.dim,
            "build_s": row.build_s,
            "memory_mb": row.memory_mb,
            "qps": row.qps,
            "latency_p50_ms": row.latency_p50_ms,
            "latency_p99_ms": row.latency_p99_ms,
            "message": row.message,
        }
        record.update({f"ann_recall@{k}": v for k, v in row.ann_recall.items()})
        q = row.quality
        record.update({f"recall@{k}": (q.recall[k] if q else math.nan) for k in config.recall_at})
        record[f"ap@{c}"] = q.average_precision if q else math.nan
        record[f"ndcg@{c}"] = q.ndcg if q else math.nan
        record[f"mrr@{c}"] = q.mrr if q else math.nan
        records.append(record)
    return records


def write_csv(report: EvaluationReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = result_columns(report.config)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        for record in report_records(report):
            writer.writerow({k: _csv_value(v) for k, v in record.items()})
    logger.info("wrote %d rows to %s", len(report.rows), path)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def render_table(report: EvaluationReport) -> Any:
    """A Rich table of the report (returned, not printed, so callers choose the console)."""
    from rich.table import Table

    config, c, k = report.config, report.config.cutoff, report.config.ann_recall_k
    title = (
        f"{report.n_gallery:,} gallery x {report.n_queries:,} queries, {report.dim} dims"
        + (f", {report.model_name}" if report.model_name else "")
        + f", top_k={config.top_k}"
    )
    table = Table(title=title)
    headers = ["method", "build s", "mem MB", "QPS", "p50 ms", "p99 ms", f"ANN R@{k}"]
    headers += [f"R@{r}" for r in config.recall_at] + [f"AP@{c}", f"nDCG@{c}", "MRR"]
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row, record in zip(report.rows, report_records(report), strict=True):
        label = point_label(row)
        if row.status != "ok":
            table.add_row(f"{label} [dim]({row.status})[/dim]", *["-"] * (len(headers) - 1))
            continue
        cells = [
            f"{row.build_s:.2f}", f"{row.memory_mb:.1f}", f"{row.qps:,.0f}",
            f"{row.latency_p50_ms:.3f}", f"{row.latency_p99_ms:.3f}", _fmt(row.ann_recall.get(k)),
            *[_fmt(record[f"recall@{r}"]) for r in config.recall_at],
            _fmt(record[f"ap@{c}"]), _fmt(record[f"ndcg@{c}"]), _fmt(record[f"mrr@{c}"]),
        ]  # fmt: skip
        table.add_row(label, *cells)
    return table


def point_label(row: ResultRow) -> str:
    return row.method + (f" {row.sweep_param}={row.sweep_value}" if row.sweep_param else "")


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def plot_sweep(report: EvaluationReport, path: Path) -> None:
    """ann-benchmarks style: ANN recall@k on x, queries/s (log) on y, one line per method through its sweep."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = report.config.ann_recall_k
    curves: dict[str, list[ResultRow]] = {}
    for row in report.measured():
        curves.setdefault(row.method, []).append(row)
    figure = Figure(figsize=(8, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, rows in curves.items():
        # in sweep order, so the line follows the parameter (recall is not always monotonic in it)
        points = [(r.ann_recall.get(k, math.nan), r.qps, r.sweep_value) for r in rows]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        axes.plot(xs, ys, marker="o" if len(points) > 1 else "*", markersize=6 if len(points) > 1 else 12, label=label)
        for x, y, value in points:
            if value is not None:
                axes.annotate(str(value), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    axes.set_yscale("log")
    axes.set_xlabel(f"Recall@{k} (vs exact)")
    axes.set_ylabel("Queries per second (1/s)")
    axes.set_title(f"{report.n_gallery:,} vectors, {report.dim} dims, {report.n_queries:,} queries")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    logger.info("wrote the sweep plot to %s", path)


def sweep_plot_path(config: EvaluationConfig) -> Path:
    if config.sweep.plot_path:
        return Path(config.sweep.plot_path)
    if config.output_path:
        out = Path(config.output_path)
        return out.with_name(f"{out.stem}-sweep.png")
    return Path("search_eval_sweep.png")


# ---------------------------------------------------------------------------------------------------------------
# entry point


def compose_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config the entry point would see for ``overrides`` (Hydra's compose API, no run directory)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None, job_name="search_eval"):
        cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
    return _config_container(cfg)


def evaluate_from_config(cfg: Mapping[str, Any]) -> EvaluationReport:
    """Load both datasets named by a resolved config (plain dict) and run the evaluation."""
    for group in ("image_dataset", "query_dataset", "evaluation"):
        if not isinstance(cfg.get(group), Mapping):
            raise EvaluationConfigError(f"the config has no `{group}` section")
    evaluation = EvaluationConfig.from_config(cfg["evaluation"])
    validate_methods(evaluation)
    gallery_spec = EmbeddingDatasetSpec.from_config(cfg["image_dataset"])
    query_spec = EmbeddingDatasetSpec.from_config(cfg["query_dataset"])
    gallery = load_gallery(gallery_spec)
    queries = load_queries(query_spec)
    return run_evaluation(gallery, queries, evaluation)


def publish(report: EvaluationReport) -> None:
    """Print the table to stdout, write the CSV and (in sweep mode) the plot."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 200  # a pipe or file would otherwise get 80 columns and wrapped cells
    console.print(render_table(report))
    config = report.config
    if config.output_path:
        write_csv(report, Path(config.output_path))
    swept = any(r.sweep_param for r in report.rows)
    if config.sweep.enabled or swept:
        plot_sweep(report, sweep_plot_path(config))


def _config_container(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return {str(k): v for k, v in container.items()}


def _main(cfg: Any) -> None:
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        report = evaluate_from_config(_config_container(cfg))
        publish(report)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or "?"
        logger.error("the config value %s is required: set it on the command line, e.g. %s=...", key, key)
        sys.exit(EXIT_CONFIG_ERROR)
    except (ImgSearchError, OmegaConfBaseException) as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        sys.exit(EXIT_CONFIG_ERROR)


def main() -> None:
    import hydra

    hydra.main(version_base=None, config_path=str(CONFIG_DIR), config_name=CONFIG_NAME)(_main)()


if __name__ == "__main__":
    # run through the package module, not `__main__`, so logger names and error classes are the importable ones
    from img_search.search.evaluate import main as _package_main

    _package_main()
