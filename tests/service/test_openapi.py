"""Schemathesis over the service's OpenAPI schema: at least 50 generated requests per operation (valid and invalid
ones), each answer checked against the schema (status documented, body matching its response model, content
type) and never a 5xx. The admin key is sent, so the admin routes are exercised too."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from conftest import API_KEY, Models, service_settings
from hypothesis import HealthCheck, settings

from img_search.service.app import create_app
from img_search.service.schemas import UPLOAD_PATH
from img_search.settings import load_settings

EXAMPLES_PER_OPERATION = 50
CALLS: Counter[str] = Counter()



class _AppProxy:
    """The ASGI app schemathesis calls: forwards to the app of the running test (set by ``_serve``). Needed
    because schemathesis' fixture-based loader does not run under pytest 9, and the schema is loaded at import,
    before the session's index exists."""

    def __init__(self) -> None:
        self.target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.target is None:  # only while the schema is fetched at import: the routes, no index behind them
            self.target = create_app(load_settings(Path(tempfile.gettempdir()) / "img-search-openapi-none"))
        await self.target(scope, receive, send)


_PROXY = _AppProxy()
schema = schemathesis.openapi.from_asgi("/openapi.json", _PROXY)


@pytest.fixture(autouse=True)
def _serve(indexed: tuple[Path, Path], models: Models, tmp_path: Path) -> None:
    import shutil

    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # the one started while the schema was fetched: the next call starts this app's
    # a private copy: valid POST /api/v1/admin/reembed requests really re-embed, and the shared index stays as it is
    index_dir = Path(shutil.copytree(indexed[1], tmp_path / "index"))
    _PROXY.target = create_app(service_settings(index_dir, models), opener=models.opener())


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_every_operation_conforms_and_never_fails(case: schemathesis.Case) -> None:
    # An upload the schema allows (any bytes) is refused with 422 when the bytes are not an image: a rule no
    # OpenAPI schema can state, so that one operation skips the "valid data is accepted" check.
    # Likewise filter values of the right shape but out of range (2023-13-45, a latitude of 95, before <= after: the
    # patterns in the schema state the shapes) are 422s with the reason, on the operations that take filters.
    takes_filters = case.operation.path in {UPLOAD_PATH, "/api/v1/search", "/api/v1/images/{image_id}/similar"}
    excluded = [schemathesis.checks.positive_data_acceptance] if takes_filters else []
    CALLS[case.operation.label] += 1
    # POST /api/v1/map fits UMAP on its first call (numba compiles for tens of seconds): more than the default 10 s
    slow = {"timeout": 600} if case.operation.label == "POST /api/v1/map" else {}
    case.call_and_validate(headers={"X-API-Key": API_KEY}, excluded_checks=excluded, **slow)


def test_at_least_50_examples_per_operation() -> None:
    """Counts what the test above sent (it runs first, in file order). GET /api/v1/health takes no input at all:
    hypothesis stops after the one request there is to make."""
    operations = {f"{m.upper()} {p}" for p, item in schema.raw_schema["paths"].items() for m in item}
    if set(CALLS) != operations:
        pytest.skip("the schemathesis test did not run for every operation in this session")
    assert all(n >= EXAMPLES_PER_OPERATION for op, n in CALLS.items() if op != "GET /api/v1/health"), CALLS


def test_the_schema_is_complete(indexed: tuple[Path, Path], models: Models) -> None:
    from fastapi.testclient import TestClient

    app = create_app(service_settings(indexed[1], models), opener=models.opener())
    doc = TestClient(app).get("/openapi.json").json()
    operations = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert operations == {
        ("/api/v1/search", "post"), ("/api/v1/search/image", "post"), ("/api/v1/images/{image_id}/similar", "get"),
        ("/api/v1/images/{image_id}", "get"), ("/api/v1/images/{image_id}/thumbnail", "get"),
        ("/api/v1/health", "get"), ("/api/v1/admin/rollout", "get"), ("/api/v1/admin/rollout", "post"),
        ("/api/v1/admin/reembed", "post"), ("/api/v1/admin/index", "post"), ("/api/v1/admin/siglip/status", "get"),
        ("/api/v1/admin/jobs/status", "get"), ("/api/v1/admin/jobs/{run_id}", "get"),
        ("/api/v1/map", "get"), ("/api/v1/map", "post"), ("/api/v1/duplicates", "get"),
    }
    for path, method in operations:
        op = doc["paths"][path][method]
        assert op.get("summary") and op.get("description"), (path, method)
        assert {"200", "202"} & set(op["responses"]), (path, method)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in op["responses"], (path, method)
        for status, response in op["responses"].items():
            if not status.startswith("2"):
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"}, (path, method, status)
    assert "examples" in doc["components"]["schemas"]["SearchRequest"]
    assert doc["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
