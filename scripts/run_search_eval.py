"""Smoke test of an embedding dataset layout: parse the search_eval configs, load vectors, run FAISS.

    python scripts/run_search_eval.py [HYDRA OVERRIDES ...]
    python scripts/run_search_eval.py image_dataset=inquire_local image_dataset.data_files='out/hf/*.parquet' \\
        query_dataset=inquire_local query_dataset.data_files='out/queries/{split}/*.parquet'

It composes the same config as ``python -m img_search.search.evaluate`` (defaults: the hosted INQUIRE SigLIP
presets and ``evaluation=faiss_only``), loads gallery and queries, checks that ids and embeddings are present,
that both sides have the same dimension (and model, when known) and that the relevance labels point at gallery
ids, then runs the exact baseline and at least one FAISS method (``faiss flat`` is added when the evaluation lists
none) and prints the results table. Any problem stops it with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from img_search.errors import ImgSearchError
from img_search.index import BACKENDS, available_backends
from img_search.search.evaluate import compose_config, evaluate_from_config, publish
from img_search.wording import count

FAISS_BACKEND = "faiss"
FALLBACK_FAISS_METHOD: dict[str, Any] = {"backend": FAISS_BACKEND, "method": "flat", "name": "faiss-flat (smoke)"}
DEFAULT_OVERRIDES = ["evaluation=faiss_only"]

logger = logging.getLogger("run_search_eval")


def _with_faiss_method(cfg: dict[str, Any]) -> dict[str, Any]:
    evaluation = cfg["evaluation"]
    methods = list(evaluation.get("methods") or [])
    extra = evaluation.get("extra_methods") or {}
    extra_list = list(extra.values()) if isinstance(extra, dict) else list(extra)
    if not any(m and m.get("backend") == FAISS_BACKEND for m in methods + extra_list):
        logger.info("the evaluation lists no FAISS method: adding %s", FALLBACK_FAISS_METHOD)
        evaluation["methods"] = [*methods, FALLBACK_FAISS_METHOD]
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m img_search.search.evaluate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    if FAISS_BACKEND not in BACKENDS or FAISS_BACKEND not in available_backends():
        print("smoke test failed: the faiss index backend is not available (pip install faiss-cpu)", file=sys.stderr)
        return 1
    overrides = list(args.overrides)
    if not any(o.lstrip("+~").startswith("evaluation=") for o in overrides):
        overrides = DEFAULT_OVERRIDES + overrides
    try:
        cfg = _with_faiss_method(compose_config(overrides))
        cfg["evaluation"]["fail_fast"] = True  # a smoke test stops at the first broken method
        report = evaluate_from_config(cfg)
    except (ImgSearchError, HydraException, OmegaConfBaseException) as exc:
        print(f"smoke test failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    publish(report)
    not_ok = [r for r in report.rows if r.status != "ok"]
    if not_ok:
        for row in not_ok:
            print(f"smoke test failed: method {row.method} {row.status}: {row.message}", file=sys.stderr)
        return 1
    faiss_rows = [r for r in report.rows if r.backend == FAISS_BACKEND]
    print(
        f"smoke test passed: {report.n_gallery} gallery and {report.n_queries} query vectors of {report.dim} dims, "
        f"{count(len(faiss_rows), 'FAISS configuration')} run",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
