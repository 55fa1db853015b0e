"""Property-based API test (schemathesis over the app's own OpenAPI schema): no generated request
gets a 5xx, and every response has a declared status, content type and the declared shape."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

from crossfuse.serve import create_app  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.slow
def test_no_server_errors_and_responses_match_the_schema(served):
    app = create_app(served["fusion"], served["indexes"])
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=CHECKS)

        check()
        tested.append(operation.label)
    assert {"POST /v1/predict", "POST /v1/search", "GET /v1/model", "GET /health",
            "GET /v1/items/{index}/{item}/thumbnail"} <= set(tested), tested
