"""Property-based API test: schemathesis generates requests from /openapi.json; no answer may be a 5xx.

Valid and invalid requests for every operation, a bounded number of examples each so the whole run stays well
under a minute. (Driven through schemathesis' Python API with Hypothesis directly: its lazy pytest fixture
loader does not work with the pytest this project pins.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from helpers.web import make_app

OPERATIONS = [
    ("GET", "/api/stats"),
    ("POST", "/api/search"),
    ("GET", "/api/search"),
    ("POST", "/api/compare"),
    ("GET", "/api/dupes"),
    ("POST", "/api/dupes/scan"),
    ("GET", "/api/images/{image_id}/thumbnail"),
    ("GET", "/api/session"),
    ("GET", "/api/images"),
    ("GET", "/api/folders"),
    ("GET", "/api/images/{image_id}"),
    ("GET", "/api/images/{image_id}/original"),
    ("POST", "/api/actions"),
    ("POST", "/api/undo"),
]
NO_INPUT = ("/api/stats", "/api/session", "/api/dupes")
EXAMPLES = 25


@pytest.fixture(scope="module")
def api_schema(gallery, tmp_path_factory):
    app = make_app(gallery, tmp_path_factory.mktemp("web_schema"), max_upload_bytes=2_000_000)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_schema_lists_exactly_these_operations(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {label}")
    for method, path in OPERATIONS
    for mode, label in ((GenerationMode.POSITIVE, "valid"), (GenerationMode.NEGATIVE, "invalid"))
    if not (path in NO_INPUT and mode == GenerationMode.NEGATIVE)  # no input, so no invalid request
]


@pytest.mark.parametrize("method, path, mode", CASES)
def test_no_server_errors(api_schema, method, path, mode):
    operation = api_schema[path][method]
    statuses = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same examples on every run: a failure is reproducible, not flaky
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call_and_validate(checks=[not_a_server_error])
        statuses.append(response.status_code)

    run()
    assert statuses and all(s < 500 for s in statuses)
    print(f"{method} {path}: {len(statuses)} requests, statuses {sorted(set(statuses))}")
