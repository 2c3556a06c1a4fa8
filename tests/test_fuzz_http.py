"""HTTP fuzzing: schemathesis generates requests for every route of the service's own OpenAPI document.

The document is the server's FastAPI app's (the one the service serves at ``/openapi.json``; the first test checks they are
the same), loaded when the tests are collected so that each route is its own test case.

Every answer must be free of 5xx and conform to the document (status code, content type, headers, body schema).
Not checked: that every schema-valid request is accepted. The document cannot say "exactly one of text and texts"
or "base64 of a decodable image", and the service rightly answers such requests with a documented 4xx.
The number of examples per route is bounded for CI (``FUZZ_EXAMPLES``, default 20); derandomized, so a failure
reproduces. Every request carries a 3 s deadline: a fuzzer-chosen request for 64 texts × 8 beams × 256 tokens must
come back as a documented 504, not hold a worker for minutes.
"""

import os

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra: `make test` installs it")
from hypothesis import HealthCheck, settings

from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


from service.front.http import app  # noqa: E402

schema = schemathesis.openapi.from_dict(app.openapi())


def test_the_served_document_is_the_apps(url):
    assert requests.get(f"{url}/openapi.json", timeout=30).json() == app.openapi()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_route_answers_within_its_schema(case, url):
    case.call_and_validate(base_url=url, headers={"X-Request-Timeout-Ms": "3000"}, timeout=30, checks=CHECKS)


def test_the_service_still_serves_after_the_fuzzing(url):
    assert requests.get(f"{url}/readyz", timeout=30).status_code == 200
    r = requests.post(f"{url}/v1/translate", json={"text": "I have three cats."}, timeout=60)
    assert r.status_code == 200 and r.json()["translations"][0]
