"""The error taxonomy (service/errors.py): every kind's HTTP status, gRPC code and bodies."""

import grpc

from service import errors
from service.errors import Kind


def test_every_kind_maps_onto_every_protocol():
    expected = {Kind.INVALID: (400, "INVALID_ARGUMENT"), Kind.NOT_FOUND: (404, "NOT_FOUND"),
                Kind.TOO_LARGE: (413, "INVALID_ARGUMENT"), Kind.OUT_OF_RANGE: (422, "INVALID_ARGUMENT"),
                Kind.OVERLOADED: (503, "RESOURCE_EXHAUSTED"), Kind.UNAVAILABLE: (503, "UNAVAILABLE"),
                Kind.DEADLINE: (504, "DEADLINE_EXCEEDED"), Kind.FAILED: (500, "INTERNAL")}
    assert {k: (k.status, k.grpc_name) for k in Kind} == expected
    assert all(isinstance(getattr(grpc.StatusCode, k.grpc_name), grpc.StatusCode) for k in Kind)


def test_bodies_and_headers():
    e = errors.overloaded("translator: busy")
    assert e.headers == {"Retry-After": "1"} and errors.unavailable("x").headers == {"Retry-After": "1"}
    assert errors.deadline().headers is None and errors.invalid("c", "m").headers is None
    assert e.body() == b'{"error": {"code": "overloaded", "message": "translator: busy; retry later"}}'
    assert e.body("oip") == b'{"error": "translator: busy; retry later"}'
    assert errors.out_of_range("beam_size: é").body() == '{"error": {"code": "invalid_field", "message": "beam_size: é"}}'.encode()


def test_nothing_a_client_sends_is_a_server_error():
    client_kinds = [errors.invalid("c", "m"), errors.not_found("m"), errors.too_large("c", "m"), errors.out_of_range("m"),
                    errors.overloaded("m"), errors.unavailable("m"), errors.deadline()]
    assert all(e.status != 500 and e.kind.grpc_name not in ("INTERNAL", "UNKNOWN") for e in client_kinds)
    assert errors.failed("decoder").status == 500  # only a model run that failed for this request alone
