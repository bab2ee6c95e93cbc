"""Property-based API test: schemathesis generates requests from /openapi.json; no answer may be a 5xx.

Bounded to a few dozen examples per operation so the whole run stays well under a minute.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from web_fixtures import gallery, make_app  # noqa: F401


@pytest.fixture(scope="module")
def web_app(gallery, tmp_path_factory):
    return make_app(gallery, tmp_path_factory.mktemp("web_schema"), max_upload_bytes=2_000_000)


@pytest.fixture(scope="module")
def api_schema(web_app):
    return schemathesis.openapi.from_asgi("/openapi.json", web_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure here is reproducible, not flaky
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error])
