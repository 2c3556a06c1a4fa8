"""Every metric of the API, declared once per process with fixed label sets; the request path only observes.

Exported through Ray's metrics agent (``ray.init(_metrics_export_port=…)``, port 8080 under ``make run``),
which prefixes custom metrics with ``ray_``. All durations are in seconds. Outside a Ray worker (unit tests
of the engine) a no-op recorder stands in, so the serving code never branches on where it runs.
"""

from __future__ import annotations

import threading
import time

LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
# Queue waits are bounded in milliseconds and a GPU decoder step is sub-millisecond: their histograms start at 0.1 ms.
QUEUE_BUCKETS = [0.0001, 0.00025, 0.0005] + LATENCY_BUCKETS
TOKEN_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]
GAUGE_PUBLISH_S = 1.0  # gauges are published this often (Ray exports every 10 s; a set per request was CPU for nothing)
# Decoder steps are observed in the step-time and batch-size histograms one in this many, drawn at random by
# the engine (unbiased: quantiles and means hold; the counts are 1/16 of the steps; generation_tokens_total counts
# every token). Ray's metrics agent, a nice-0 process, replays every histogram observation one by one at each 10 s
# export: with every step of a CPU decoder recorded (~1,800 observations a second under load) it took ~0.5 s of
# CPU in a burst every 10 s, and the ingress (nice 15) waited for a CPU meanwhile (RELIABILITY.md, overload).
DECODER_STEP_SAMPLE = 16

# name: (kind, description, label names, buckets)
SPEC = {
    "inference_request_duration_seconds": ("histogram", "End-to-end request latency at the ingress", ("model", "protocol", "method", "outcome"), LATENCY_BUCKETS),
    "inference_queue_duration_seconds": ("histogram", "Time a request waited before its model started on it", ("model",), QUEUE_BUCKETS),
    "inference_compute_duration_seconds": ("histogram", f"Model execution time per stage (encoder, decoder_step: one step in {DECODER_STEP_SAMPLE}, sampled; batch)", ("model", "stage"), LATENCY_BUCKETS),
    "inference_batch_size": ("histogram", f"Items per model execution (decoder_step: one step in {DECODER_STEP_SAMPLE}, sampled)", ("model", "stage"), BATCH_BUCKETS),
    "inference_requests_total": ("counter", "Requests answered, by status code", ("model", "protocol", "code"), None),
    "inference_errors_total": ("counter", "Requests answered with an error, by status code", ("model", "protocol", "code"), None),
    "inference_requests_in_flight": ("gauge", "Requests being handled at the ingress", ("model",), None),
    "inference_execution_provider": ("gauge", "1 for the ONNX Runtime execution provider each model runs on, per replica",
                                     ("model", "provider"), None),
    "inference_rejected_total": ("counter", "Requests refused before running (queue full, deadline passed)", ("model", "reason"), None),
    "generation_time_to_first_token_seconds": ("histogram", "Submit to first generated token", ("model",), LATENCY_BUCKETS),
    "generation_time_per_output_token_seconds": ("histogram", "Mean time per output token after the first", ("model",), TOKEN_BUCKETS),
    "generation_tokens_total": ("counter", "Generated tokens", ("model",), None),
}


class _NoOp:
    def observe(self, *a, **k) -> None: ...
    def inc(self, *a, **k) -> None: ...
    def set(self, *a, **k) -> None: ...


class Metrics:
    def __init__(self) -> None:
        self._made: dict[str, object] = {}
        self._gauges: dict[tuple, float] = {}
        self._lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        try:
            import ray

            self._ray = ray.is_initialized()
        except ImportError:
            self._ray = False
        if self._ray:
            from ray.util.metrics import Counter, Gauge, Histogram

            for name, (kind, desc, labels, buckets) in SPEC.items():
                if kind == "histogram":
                    self._made[name] = Histogram(name, description=desc, boundaries=buckets, tag_keys=labels)
                elif kind == "counter":
                    self._made[name] = Counter(name, description=desc, tag_keys=labels)
                else:
                    self._made[name] = Gauge(name, description=desc, tag_keys=labels)

    def _metric(self, name: str):
        return self._made.get(name, _NoOp())

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._metric(name).observe(value, tags=labels)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        if value > 0:
            self._metric(name).inc(value, tags=labels)

    def zero(self, name: str, **labels: str) -> None:
        """Make a counter's series exist at 0 (``Counter.inc`` refuses 0): a counter that appears only at its first
        event leaves rates, ratios and dashboard panels empty, not 0, until then. Uses ``Metric._record``, the
        method ``inc`` records through (Ray 2.60, the pinned version)."""
        metric = self._metric(name)
        record = getattr(metric, "_record", None)
        if record is not None:
            record(0.0, tags=labels)

    def add_gauge(self, name: str, delta: float, **labels: str) -> None:
        """Move a gauge; the value is published within GAUGE_PUBLISH_S (``_publish``), not on every call."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            new = key not in self._gauges
            self._gauges[key] = self._gauges.get(key, 0.0) + delta
            if new:  # a series exists (at its value) from its first use
                self._metric(name).set(self._gauges[key], tags=labels)
            if self._ray and self._refresher is None:
                self._refresher = threading.Thread(target=self._publish, name="gauge-publish", daemon=True)
                self._refresher.start()

    def _publish(self) -> None:
        """Set every known gauge to its current value every GAUGE_PUBLISH_S. Also keeps idle series alive: Ray's
        exporter forgets a gauge series ~20 s after its last ``set``, and an idle service should show 0 in flight."""
        while True:
            time.sleep(GAUGE_PUBLISH_S)
            with self._lock:
                for (name, labels), value in self._gauges.items():
                    self._metric(name).set(value, tags=dict(labels))


# The counters' series that exist at 0 from a replica's start (service.server): the codes and reasons the rules and
# the dashboard divide or alert by.
ZERO_CODES = {"http": ("200", "500", "503"), "grpc": ("OK", "INTERNAL", "RESOURCE_EXHAUSTED")}
ZERO_REASONS = ("queue_full", "expected_wait", "queue_timeout", "deadline")


def zero_counters(metrics: Metrics, models: tuple[str, ...]) -> None:
    for model in models:
        for protocol, codes in ZERO_CODES.items():
            for code in codes:
                metrics.zero("inference_requests_total", model=model, protocol=protocol, code=code)
                if code not in ("200", "OK"):
                    metrics.zero("inference_errors_total", model=model, protocol=protocol, code=code)
        for reason in ZERO_REASONS:
            metrics.zero("inference_rejected_total", model=model, reason=reason)


_instance: Metrics | None = None


def metrics() -> Metrics:
    """The process's metrics (created on first use, after Ray has started in this process)."""
    global _instance
    if _instance is None:
        _instance = Metrics()
    return _instance
