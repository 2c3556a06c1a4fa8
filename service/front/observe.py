"""Request metrics, recorded once per request by the adapter that received it: duration, count and error count by
(model, protocol, method, code), and the in-flight gauge (``inference_requests_in_flight``)."""

from __future__ import annotations

import time

from service.metrics import metrics


def record(model: str, protocol: str, method: str, code: str, ok: bool, seconds: float) -> None:
    m = metrics()
    m.observe("inference_request_duration_seconds", seconds, model=model, protocol=protocol, method=method,
              outcome="success" if ok else "error")
    m.inc("inference_requests_total", model=model, protocol=protocol, code=code)
    if not ok:
        m.inc("inference_errors_total", model=model, protocol=protocol, code=code)


class Observed:
    """One request's metrics: ``with Observed(model, protocol, method) as o: ...; o.code = "503"``. The code is
    "200" / "OK" unless set; an exception that escapes sets "500" / "INTERNAL"."""

    __slots__ = ("model", "protocol", "method", "code", "started")

    def __init__(self, model: str, protocol: str, method: str) -> None:
        self.model, self.protocol, self.method = model, protocol, method
        self.code = "200" if protocol == "http" else "OK"
        self.started = time.monotonic()

    def __enter__(self) -> "Observed":
        metrics().add_gauge("inference_requests_in_flight", 1, model=self.model)
        return self

    def attribute(self, model: str) -> None:
        """The request turned out to be for ``model`` (a task route's ``"model"`` field): count it there."""
        if model != self.model:
            metrics().add_gauge("inference_requests_in_flight", -1, model=self.model)
            metrics().add_gauge("inference_requests_in_flight", 1, model=model)
            self.model = model

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None and self.code in ("200", "OK"):
            http = self.protocol == "http"
            if kind.__name__ in ("CancelledError", "GeneratorExit"):  # the client went away
                self.code = "499" if http else "CANCELLED"
            else:
                self.code = "500" if http else "INTERNAL"
        metrics().add_gauge("inference_requests_in_flight", -1, model=self.model)
        record(self.model, self.protocol, self.method, self.code, self.code in ("200", "OK"),
               time.monotonic() - self.started)
