"""Writes deploy/grafana/inference.json, the Grafana dashboard of the service (run after changing a panel).

    python deploy/grafana/build_dashboard.py

Every query uses the metric names the service really exports (Ray's ``ray_`` prefix) and two variables:
``$cluster`` (the ``ray_io_cluster`` label: the PodMonitor sets it from the RayCluster's name, the local scrape
config to ``local``) and ``$model``. tests/test_monitoring.py runs every query against a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path

SEL = 'ray_io_cluster=~"$cluster", model=~"$model"'
RATE = "$__rate_interval"


def quantiles(metric: str, by: str, qs=(0.5, 0.95, 0.99)) -> list[dict]:
    return [{"expr": f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
             "legendFormat": f"p{int(q * 100)} " + " ".join("{{" + b.strip() + "}}" for b in by.split(","))} for q in qs]


PANELS = [
    ("Requests per second", "reqps", [{"expr": f"sum by (model, protocol) (rate(ray_inference_requests_total{{{SEL}}}[{RATE}]))",
                                      "legendFormat": "{{model}} {{protocol}}"}]),
    ("Errors per second by code", "reqps", [{"expr": f"sum by (model, code) (rate(ray_inference_errors_total{{{SEL}}}[{RATE}]))",
                                            "legendFormat": "{{model}} {{code}}"}]),
    # HAProxy's count of every HTTP inference call (no model label: it sees routes), the only count of what no replica
    # answered (502: a replica died mid-request; 503 beyond the replicas' refusals: no replica)
    ("HTTP answers at the ingress (HAProxy) by status", "reqps", [{
        "expr": f'sum by (status_code) (rate(ray_serve_num_http_requests_total{{ray_io_cluster=~"$cluster", method="POST", application!=""}}[{RATE}]))',
        "legendFormat": "{{status_code}}"}]),
    ("End-to-end latency (p50 / p95 / p99)", "s", quantiles("ray_inference_request_duration_seconds", "model, protocol")),
    ("Queue time (p50 / p99)", "s", quantiles("ray_inference_queue_duration_seconds", "model", (0.5, 0.99))),
    ("Compute time per stage (p50 / p99)", "s", quantiles("ray_inference_compute_duration_seconds", "model, stage", (0.5, 0.99))),
    ("Mean batch size per stage", "none", [{
        "expr": f"sum by (model, stage) (rate(ray_inference_batch_size_sum{{{SEL}}}[{RATE}])) / sum by (model, stage) (rate(ray_inference_batch_size_count{{{SEL}}}[{RATE}]))",
        "legendFormat": "{{model}} {{stage}}"}]),
    ("Batch size distribution", "heatmap", [{"expr": f"sum by (le) (rate(ray_inference_batch_size_bucket{{{SEL}}}[{RATE}]))",
                                            "legendFormat": "{{le}}", "format": "heatmap"}]),
    ("Time to first token (p50 / p99)", "s", quantiles("ray_generation_time_to_first_token_seconds", "model", (0.5, 0.99))),
    ("Time per output token (p50 / p99)", "s", quantiles("ray_generation_time_per_output_token_seconds", "model", (0.5, 0.99))),
    ("Generated tokens per second", "short", [{"expr": f"sum by (model) (rate(ray_generation_tokens_total{{{SEL}}}[{RATE}]))",
                                              "legendFormat": "{{model}}"}]),
    ("Requests in flight", "short", [{"expr": f"sum by (model) (ray_inference_requests_in_flight{{{SEL}}})", "legendFormat": "{{model}}"}]),
    ("Rejected requests per second", "reqps", [{"expr": f"sum by (model, reason) (rate(ray_inference_rejected_total{{{SEL}}}[{RATE}]))",
                                               "legendFormat": "{{model}} {{reason}}"}]),
    ("Healthy replicas", "short", [{"expr": 'sum by (deployment) (ray_serve_deployment_replica_healthy{ray_io_cluster=~"$cluster"})',
                                   "legendFormat": "{{deployment}}"}]),
    ("GPU utilisation", "percent", [{"expr": 'avg by (ip, GpuIndex) (ray_node_gpus_utilization{ray_io_cluster=~"$cluster"})',
                                     "legendFormat": "{{ip}} GPU {{GpuIndex}}"}]),
    ("GPU memory used", "decmbytes", [{"expr": 'sum by (ip, GpuIndex) (ray_node_gram_used{ray_io_cluster=~"$cluster"})',
                                       "legendFormat": "{{ip}} GPU {{GpuIndex}}"}]),
]

# Series only GPU nodes export: the monitoring test checks these queries run, not that they return data.
GPU_ONLY_METRICS = ("ray_node_gpus_utilization", "ray_node_gram_used")


def panel(i: int, title: str, unit: str, targets: list[dict]) -> dict:
    kind = "heatmap" if unit == "heatmap" else "timeseries"
    out = {
        "id": i + 1, "type": kind, "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "targets": [{"refId": chr(65 + j), "datasource": {"type": "prometheus", "uid": "${datasource}"}, **t} for j, t in enumerate(targets)],
    }
    if kind == "timeseries":
        out["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    else:
        out["options"] = {"calculate": False, "yAxis": {"unit": "short"}}
    return out


def variable(name: str, query: str, label: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "includeAll": True,
            "allValue": ".*", "multi": True, "current": {"text": "All", "value": "$__all"}, "sort": 1}


def dashboard() -> dict:
    return {
        "uid": "attention-serving", "title": "attention-serving: inference", "schemaVersion": 39, "version": 1,
        "tags": ["ray-serve", "inference"], "timezone": "browser", "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {"text": "Prometheus", "value": "prometheus"}},
            variable("cluster", "label_values(ray_inference_requests_total, ray_io_cluster)", "Cluster"),
            variable("model", 'label_values(ray_inference_requests_total{ray_io_cluster=~"$cluster"}, model)', "Model"),
        ]},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    path = Path(__file__).with_name("inference.json")
    path.write_text(render())
    print(f"wrote {path}")
