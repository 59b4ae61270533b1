"""The evaluation harness end to end: `python -m img_search.search.evaluate` on small local Parquet shards."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from search_eval_data import DIM, MODEL, N_GALLERY, N_QUERIES, EntryResult, EvalShards

from img_search.data.embeddings import EmbeddingTable
from img_search.errors import DimensionMismatchError
from img_search.index import BACKENDS, available_backends
from img_search.index.exact import ExactIndex
from img_search.search.evaluate import (
    EvaluationConfig,
    EvaluationConfigError,
    MethodSpec,
    compose_config,
    constructor_params,
    plot_sweep,
    run_evaluation,
    validate_methods,
    write_csv,
)

REPO = Path(__file__).resolve().parents[2]
needs_faiss = pytest.mark.skipif("faiss" not in available_backends(), reason="faiss backend not installed")
SEED_IVF_PQ = "{backend: faiss, method: ivf_pq, metric: cosine, nlist: 2048, nprobe: 32}"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _expected_quality(shards: EvalShards, split: str, k: int = 10) -> tuple[float, float]:
    """recall@k and MRR@50 of exact cosine search, computed here without the harness."""
    g = shards.gallery / np.linalg.norm(shards.gallery, axis=1, keepdims=True)
    q = shards.queries[split] / np.linalg.norm(shards.queries[split], axis=1, keepdims=True)
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    recalls, rrs = [], []
    for ranked, rel in zip(order, shards.relevant[split], strict=True):
        wanted = {r.removesuffix(".jpg") for r in rel}
        names = [shards.gallery_ids[i] for i in ranked[:50]]
        recalls.append(len(wanted & set(names[:k])) / len(wanted))
        rrs.append(next((1 / (i + 1) for i, n in enumerate(names) if n in wanted), 0.0))
    return float(np.mean(recalls)), float(np.mean(rrs))


def _tables(shards: EvalShards, *, query_dim: int = DIM, query_model: str | None = None) -> tuple[Any, Any]:
    gallery = EmbeddingTable(ids=shards.gallery_ids, vectors=shards.gallery, model_name=MODEL, source="gallery")
    vectors = shards.queries["test"] if query_dim == DIM else np.ones((N_QUERIES, query_dim), np.float32)
    queries = EmbeddingTable(
        ids=[str(i) for i in range(N_QUERIES)],
        vectors=vectors,
        model_name=query_model,
        source="queries",
        relevant=shards.relevant["test"],
    )
    return gallery, queries


def test_module_entry_point_baseline_only(eval_shards: EvalShards, tmp_path: Path) -> None:
    """The real `python -m` command: table on stdout, logs on stderr, CSV where asked (relative to the cwd)."""
    args = [*eval_shards.local_args(), "evaluation.methods=[]", "evaluation.output_path=results/eval.csv"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "img_search.search.evaluate", *args, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exact (baseline)" in proc.stdout
    assert f"loaded {N_GALLERY} vectors of {DIM} dims" in proc.stderr
    assert "loaded" not in proc.stdout
    rows = _rows(tmp_path / "results" / "eval.csv")  # hydra.job.chdir=false: relative to where we ran
    assert [r["method"] for r in rows] == ["exact (baseline)"]
    row = rows[0]
    recall10, mrr = _expected_quality(eval_shards, "test")
    assert float(row["recall@10"]) == pytest.approx(recall10, abs=1e-5)
    assert float(row["mrr@50"]) == pytest.approx(mrr, abs=1e-5)
    assert float(row["ann_recall@10"]) == 1.0
    assert int(row["n_gallery"]) == N_GALLERY and int(row["n_queries"]) == N_QUERIES and int(row["dim"]) == DIM
    for column in ("build_s", "memory_mb", "qps", "latency_p50_ms", "latency_p99_ms", "ap@50", "ndcg@50"):
        assert float(row[column]) > 0, column
    assert float(row["latency_p99_ms"]) >= float(row["latency_p50_ms"])


@needs_faiss
def test_faiss_preset_with_the_seeds_plus_methods_override(
    eval_shards: EvalShards, run_entry: Callable[..., EntryResult], tmp_path: Path
) -> None:
    """`+evaluation.methods.1=...` (the seed's form) lands on entry 1 of faiss_only, its IVF method."""
    out = tmp_path / "faiss.csv"
    result = run_entry(
        *eval_shards.local_args(),
        "evaluation=faiss_only",
        f"+evaluation.methods.1={SEED_IVF_PQ}",
        "evaluation.recall_at=[1,10]",
        "evaluation.top_k=60",
        "evaluation.latency_queries=5",
        f"evaluation.output_path={out}",
    )
    assert result.code == 0, result.err
    rows = _rows(out)
    assert [r["method"] for r in rows] == [
        "exact (baseline)",
        "faiss-flat",
        "faiss-ivf_pq nlist=2048 nprobe=32",
        "faiss-hnsw M=32 ef_construction=200 ef_search=128",
    ]
    assert all(r["status"] == "ok" for r in rows)
    assert "recall@10" in rows[0] and "recall@5" not in rows[0]  # recall_at override
    flat = rows[1]
    assert float(flat["ann_recall@10"]) == pytest.approx(1.0)
    assert float(flat["recall@10"]) == pytest.approx(float(rows[0]["recall@10"]))
    assert "faiss-flat" in result.out


def test_plus_methods_index_semantics_in_hydra(tmp_path: Path) -> None:
    """What `+evaluation.methods.N=` really does: merge into entry N, or fail past the end; never append."""
    from hydra.errors import ConfigCompositionException

    default = compose_config([f"+evaluation.methods.1={SEED_IVF_PQ}"])["evaluation"]["methods"]
    assert len(default) == 5
    assert default[1] == {"backend": "faiss", "method": "ivf_pq", "metric": "cosine", "nlist": 2048, "nprobe": 32}
    # merged, not replaced: keys of the entry that the new dict does not set survive
    merged = compose_config(["evaluation=hnswlib", f"+evaluation.methods.0={SEED_IVF_PQ}"])["evaluation"]
    assert merged["methods"][0]["ef"] == 64 and merged["methods"][0]["method"] == "ivf_pq"
    for overrides in (
        [f"+evaluation.methods.5={SEED_IVF_PQ}"],
        ["evaluation.methods=[]", "+evaluation.methods.0={backend: exact}"],
    ):
        with pytest.raises(ConfigCompositionException, match="Error merging override") as info:
            compose_config(overrides)
        assert "list index out of range" in str(info.value.__cause__)
    # the leaked `ef` is caught before any data is read, with the way out in the message
    if "faiss" in BACKENDS and "faiss" in available_backends():
        with pytest.raises(EvaluationConfigError, match=r"takes no parameter ef.*extra_methods"):
            validate_methods(EvaluationConfig.from_config(merged))


def test_methods_empty_and_extra_methods_append(
    eval_shards: EvalShards, run_entry: Callable[..., EntryResult], tmp_path: Path
) -> None:
    out = tmp_path / "extra.csv"
    result = run_entry(
        *eval_shards.local_args(),
        "evaluation.methods=[]",
        "+evaluation.extra_methods.exact_ip={backend: exact, metric: ip}",
        "+evaluation.extra_methods.brute={backend: brute_force}",
        "evaluation.latency_queries=3",
        f"evaluation.output_path={out}",
    )
    assert result.code == 0, result.err
    rows = _rows(out)
    assert [r["method"] for r in rows] == ["exact (baseline)", "exact_ip", "brute"]
    assert [r["backend"] for r in rows] == ["exact", "exact", "exact"]
    assert '"metric": "ip"' in rows[1]["params"]
    # the same exact search under another name reproduces the baseline
    assert rows[2]["recall@10"] == rows[0]["recall@10"] and float(rows[2]["ann_recall@10"]) == 1.0
    # `+evaluation.methods.0` on a one-entry list merges into that entry
    out2 = tmp_path / "merged.csv"
    result = run_entry(
        *eval_shards.local_args(),
        "evaluation.methods=[{backend: exact}]",
        "+evaluation.methods.0={backend: exact, metric: ip, name: merged}",
        "evaluation.latency_queries=3",
        f"evaluation.output_path={out2}",
    )
    assert result.code == 0, result.err
    assert [r["method"] for r in _rows(out2)] == ["exact (baseline)", "merged"]


@pytest.mark.parametrize("split", ["val", "validation"])
def test_val_and_validation_select_the_same_queries(
    eval_shards: EvalShards, run_entry: Callable[..., EntryResult], tmp_path: Path, split: str
) -> None:
    out = tmp_path / f"{split}.csv"
    result = run_entry(
        *eval_shards.local_args(),
        "evaluation=exact",
        f"query_dataset.split={split}",
        "evaluation.latency_queries=0",
        f"evaluation.output_path={out}",
    )
    assert result.code == 0, result.err
    (row,) = _rows(out)
    recall10, mrr = _expected_quality(eval_shards, "validation")
    assert float(row["recall@10"]) == pytest.approx(recall10, abs=1e-5)
    assert float(row["mrr@50"]) == pytest.approx(mrr, abs=1e-5)
    assert row["latency_p50_ms"] == ""  # latency_queries=0 switches the single-query loop off


def test_dimension_and_model_mismatch_exit_cleanly(
    eval_shards: EvalShards, run_entry: Callable[..., EntryResult]
) -> None:
    result = run_entry(*eval_shards.local_args("queries16"), "evaluation=exact")
    assert result.code == 2
    assert "DimensionMismatchError" in result.err and "32 dimensions" in result.err and "16" in result.err
    assert "Traceback" not in result.err
    result = run_entry(*eval_shards.local_args(), "evaluation=exact", "query_dataset.model_name=other/model")
    assert result.code == 2
    assert f"gallery vectors come from '{MODEL}' but query vectors from 'other/model'" in result.err


def test_library_raises_dimension_mismatch(eval_shards: EvalShards) -> None:
    gallery, queries = _tables(eval_shards, query_dim=16)
    with pytest.raises(DimensionMismatchError, match="32 dimensions"):
        run_evaluation(gallery, queries, EvaluationConfig())
    gallery, queries = _tables(eval_shards, query_model="another")
    with pytest.raises(DimensionMismatchError, match="another"):
        run_evaluation(gallery, queries, EvaluationConfig())


def test_config_errors_exit_2_before_loading(eval_shards: EvalShards, run_entry: Callable[..., EntryResult]) -> None:
    result = run_entry(*eval_shards.local_args(), "evaluation.methods=[{backend: nope}]")
    assert result.code == 2 and "unknown index backend nope" in result.err and "exact" in result.err
    assert "loaded" not in result.err
    result = run_entry(*eval_shards.local_args(), "evaluation=exact", "evaluation.top_k=10")
    assert result.code == 2 and "top_k=10" in result.err
    result = run_entry("image_dataset=inquire_local", "evaluation=exact")
    assert result.code == 2 and "image_dataset.data_files is required" in result.err


def test_unavailable_backend_is_skipped(
    eval_shards: EvalShards,
    run_entry: Callable[..., EntryResult],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(BACKENDS, "ghost", "img_search.index._not_installed_anywhere:GhostIndex")
    out = tmp_path / "skip.csv"
    result = run_entry(
        *eval_shards.local_args(),
        "evaluation.methods=[{backend: ghost, M: 8}]",
        "evaluation.latency_queries=2",
        f"evaluation.output_path={out}",
    )
    assert result.code == 0, result.err
    rows = _rows(out)
    assert [(r["method"], r["status"]) for r in rows] == [("exact (baseline)", "ok"), ("ghost M=8", "skipped")]
    assert "not installed" in rows[1]["message"]
    assert "skipping method ghost M=8" in result.err


class _ToyProbeIndex:
    """Exact search restricted to the first ``probe``/4 of the gallery: recall grows with the search parameter."""

    name: ClassVar[str] = "toy"
    supports_remove: ClassVar[bool] = False
    search_params: ClassVar[tuple[str, ...]] = ("probe",)

    def __init__(self, *, dim: int, metric: str = "cosine", probe: int = 4) -> None:
        self.dim, self.metric, self.probe = dim, metric, probe
        self._ids = np.empty(0, np.int64)
        self._vectors = np.empty((0, dim), np.float32)

    def add(self, ids: Any, vectors: Any) -> None:
        self._ids, self._vectors = np.asarray(ids, np.int64), np.asarray(vectors, np.float32)

    def set_search_params(self, **params: Any) -> None:
        if set(params) - {"probe"}:
            raise ValueError(f"toy: cannot set {sorted(params)}")
        self.probe = int(params["probe"])

    def search(self, queries: Any, k: int) -> tuple[Any, Any]:
        n = max(1, len(self._ids) * self.probe // 4)
        exact = ExactIndex(dim=self.dim, metric=self.metric)
        exact.add(self._ids[:n], self._vectors[:n])
        return exact.search(queries, k)

    def memory_bytes(self) -> int:
        return int(self._vectors.nbytes)

    def __len__(self) -> int:
        return len(self._ids)


def test_sweep_varies_one_search_parameter_and_plots(eval_shards: EvalShards, tmp_path: Path) -> None:
    def factory(name: str, **kwargs: Any) -> Any:
        return _ToyProbeIndex(**kwargs) if name == "toy" else ExactIndex(**kwargs)

    config = EvaluationConfig.from_config(
        {
            "methods": [{"backend": "toy", "probe": 2}, {"backend": "exact", "name": "plain exact"}],
            "latency_queries": 2,
            "throughput_repeats": 1,
            "sweep": {"enabled": True, "values": {"nprobe": [1, 2], "probe": [1, 2, 4]}},
        }
    )
    report = run_evaluation(*_tables(eval_shards), config, index_factory=factory)
    toy = [r for r in report.rows if r.backend == "toy"]
    assert [r.sweep_value for r in toy] == [1, 2, 4]
    assert {r.sweep_param for r in toy} == {"probe"}
    assert {r.method for r in toy} == {"toy"}  # the build-time probe=2 is left out of the curve's label
    recalls = [r.ann_recall[10] for r in toy]
    assert recalls == sorted(recalls) and recalls[-1] == pytest.approx(1.0) and recalls[0] < 1.0
    assert [r.method for r in report.rows if r.backend == "exact"] == ["exact (baseline)", "plain exact"]
    png, out = tmp_path / "sweep.png", tmp_path / "sweep.csv"
    plot_sweep(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_csv(report, out)
    assert [(r["sweep_param"], r["sweep_value"]) for r in _rows(out)][1:4] == [
        ("probe", "1"),
        ("probe", "2"),
        ("probe", "4"),
    ]
    # a per-method sweep of a parameter the backend cannot change is a config error
    bad = EvaluationConfig.from_config({"methods": [{"backend": "exact", "sweep": {"nprobe": [1, 2]}}]})
    with pytest.raises(EvaluationConfigError, match="cannot change 'nprobe'"):
        run_evaluation(*_tables(eval_shards), bad, index_factory=factory)


@needs_faiss
def test_sweep_mode_through_the_entry_point(
    eval_shards: EvalShards, run_entry: Callable[..., EntryResult], tmp_path: Path
) -> None:
    out = tmp_path / "sweep" / "ivf.csv"
    result = run_entry(
        *eval_shards.local_args(),
        "evaluation.methods=[{backend: faiss, method: ivf, nlist: 4, nprobe: 2}, {backend: faiss, method: flat}]",
        "evaluation.sweep.enabled=true",
        "evaluation.sweep.values={nprobe: [1, 4]}",
        "evaluation.latency_queries=2",
        "evaluation.threads=1",
        f"evaluation.output_path={out}",
    )
    assert result.code == 0, result.err
    rows = _rows(out)
    ivf = [r for r in rows if r["sweep_param"] == "nprobe"]
    assert [r["sweep_value"] for r in ivf] == ["1", "4"]
    assert {r["method"] for r in ivf} == {"faiss-ivf nlist=4"}
    assert float(ivf[1]["ann_recall@10"]) == pytest.approx(1.0)  # all 4 lists probed: exact
    assert float(ivf[0]["ann_recall@10"]) <= float(ivf[1]["ann_recall@10"])
    assert [r["method"] for r in rows if not r["sweep_param"]] == ["exact (baseline)", "faiss-flat"]
    assert (out.parent / "ivf-sweep.png").stat().st_size > 0


def test_failed_method_is_recorded_unless_fail_fast(eval_shards: EvalShards) -> None:
    def factory(name: str, **kwargs: Any) -> Any:
        if name == "broken":
            raise RuntimeError("library exploded")
        return ExactIndex(**kwargs)

    methods = [{"backend": "broken"}, {"backend": "exact", "name": "after"}]
    report = run_evaluation(
        *_tables(eval_shards), EvaluationConfig.from_config({"methods": methods}), index_factory=factory
    )
    assert [(r.method, r.status) for r in report.rows] == [
        ("exact (baseline)", "ok"),
        ("broken", "failed"),
        ("after", "ok"),
    ]
    assert "library exploded" in report.rows[1].message
    with pytest.raises(RuntimeError, match="library exploded"):
        run_evaluation(
            *_tables(eval_shards),
            EvaluationConfig.from_config({"methods": methods, "fail_fast": True}),
            index_factory=factory,
        )


def test_relevance_labels_must_reach_the_gallery(eval_shards: EvalShards) -> None:
    gallery, queries = _tables(eval_shards)
    unrelated = EmbeddingTable(
        ids=queries.ids,
        vectors=queries.vectors,
        model_name=None,
        source="q",
        relevant=[["elsewhere.jpg"]] * N_QUERIES,
    )
    with pytest.raises(EvaluationConfigError, match="none of the 1 relevant ids"):
        run_evaluation(gallery, unrelated, EvaluationConfig())


def test_method_key_is_a_label_for_backends_without_one() -> None:
    if "hnswlib" not in available_backends():
        pytest.skip("hnswlib backend not installed")
    spec = MethodSpec.from_config({"backend": "hnswlib", "method": "hnsw", "M": 8}, default_metric="cosine")
    assert constructor_params(spec) == {"M": 8}
    assert spec.label == "hnswlib-hnsw M=8"
    validate_methods(EvaluationConfig(methods=(spec,)))  # `method` is not an unknown parameter here


def test_evaluation_config_validation() -> None:
    with pytest.raises(EvaluationConfigError, match="unknown evaluation key"):
        EvaluationConfig.from_config({"method": []})
    with pytest.raises(EvaluationConfigError, match="`backend` key"):
        EvaluationConfig.from_config({"methods": [{"nlist": 3}]})
    with pytest.raises(EvaluationConfigError, match="recall_at"):
        EvaluationConfig.from_config({"recall_at": [0, 5]})
    config = EvaluationConfig.from_config({"recall_at": 5, "top_k": "60", "methods": [None, {"backend": "exact"}]})
    assert config.recall_at == (5,) and config.top_k == 60 and len(config.methods) == 1


@needs_faiss
def test_smoke_script(eval_shards: EvalShards, tmp_path: Path) -> None:
    script = REPO / "scripts" / "run_search_eval.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(
        [
            sys.executable,
            str(script),
            *eval_shards.local_args(),
            "evaluation.methods.1.nlist=4",
            "evaluation.latency_queries=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "smoke test passed" in ok.stderr and "3 FAISS configurations" in ok.stderr
    bad = subprocess.run(
        [sys.executable, str(script), *eval_shards.local_args("queries16")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "smoke test failed: DimensionMismatchError" in bad.stderr
