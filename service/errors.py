"""One error taxonomy for every protocol: what went wrong, and how each wire format says it.

A ``ServiceError`` is raised wherever a request is refused (the contract, the model hosts, the engine's admission)
and crosses no process boundary: the adapter that received the request turns it into its own answer.

| kind          | HTTP | gRPC                | task-API body                          | Open Inference Protocol body |
|---------------|------|---------------------|----------------------------------------|------------------------------|
| invalid       | 400  | INVALID_ARGUMENT    | ``{"error": {"code", "message"}}``     | ``{"error": message}``       |
| not_found     | 404  | NOT_FOUND           |                                        |                              |
| too_large     | 413  | INVALID_ARGUMENT    |                                        |                              |
| out_of_range  | 422  | INVALID_ARGUMENT    |                                        |                              |
| overloaded    | 503  | RESOURCE_EXHAUSTED  | + ``Retry-After``                      |                              |
| unavailable   | 503  | UNAVAILABLE         | + ``Retry-After``                      |                              |
| deadline      | 504  | DEADLINE_EXCEEDED   |                                        |                              |
| failed        | 500  | INTERNAL            | the model failed on this request alone |                              |

Nothing a client sends is ``failed``: that kind is for a model run that failed while its batch-mates were answered.
"""

from __future__ import annotations

import enum
import json

RETRY_AFTER_S = 1


class Kind(enum.Enum):
    INVALID = (400, "INVALID_ARGUMENT")
    NOT_FOUND = (404, "NOT_FOUND")
    TOO_LARGE = (413, "INVALID_ARGUMENT")
    OUT_OF_RANGE = (422, "INVALID_ARGUMENT")
    OVERLOADED = (503, "RESOURCE_EXHAUSTED")
    UNAVAILABLE = (503, "UNAVAILABLE")
    DEADLINE = (504, "DEADLINE_EXCEEDED")
    FAILED = (500, "INTERNAL")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def grpc_name(self) -> str:
        """The ``grpc.StatusCode`` member's name (this module does not import grpc)."""
        return self.value[1]


class ServiceError(Exception):
    """A refused request: ``kind`` decides the status on every protocol, ``code`` is the task API's short name, and
    ``message`` names the offending field or the reason."""

    def __init__(self, kind: Kind, code: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message

    @property
    def status(self) -> int:
        return self.kind.status

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(RETRY_AFTER_S)} if self.kind in (Kind.OVERLOADED, Kind.UNAVAILABLE) else None

    def body(self, protocol: str = "task") -> bytes:
        """The JSON body: the task API's ``{"error": {"code", "message"}}`` or the OIP's ``{"error": message}``."""
        error = self.message if protocol == "oip" else {"code": self.code, "message": self.message}
        # backslashreplace: a message quoting a client's lone surrogate still encodes (as JSON's own \udXXX escape)
        return json.dumps({"error": error}, ensure_ascii=False).encode("utf-8", "backslashreplace")

    def __repr__(self) -> str:
        return f"ServiceError({self.kind.name}, {self.code!r}, {self.message!r})"


def invalid(code: str, message: str) -> ServiceError:
    return ServiceError(Kind.INVALID, code, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(Kind.NOT_FOUND, "not_found", message)


def too_large(code: str, message: str) -> ServiceError:
    return ServiceError(Kind.TOO_LARGE, code, message)


def out_of_range(message: str, code: str = "invalid_field") -> ServiceError:
    return ServiceError(Kind.OUT_OF_RANGE, code, message)


def overloaded(message: str) -> ServiceError:
    return ServiceError(Kind.OVERLOADED, "overloaded", f"{message}; retry later")


def unavailable(message: str) -> ServiceError:
    return ServiceError(Kind.UNAVAILABLE, "unavailable", message)


def deadline(message: str = "the request's deadline passed before it finished") -> ServiceError:
    return ServiceError(Kind.DEADLINE, "deadline_exceeded", message)


def failed(message: str) -> ServiceError:
    return ServiceError(Kind.FAILED, "decoding_failed", message)
