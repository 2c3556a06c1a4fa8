"""A real Prometheus scrapes the running service with the shipped config; every dashboard query and every rule
is run through its HTTP API and must return data (GPU-only series aside: no GPU here)."""

import json
import re
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.servicekit import NUMBER_TEXT, free_port, reconfigured, stats, wait_for
from tests.test_deploy import prometheus_tool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "grafana"))


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory):
    from service.observe import start_prometheus

    prometheus_tool("prometheus")  # skip or fail clearly when it is missing
    port = free_port()
    proc = start_prometheus(tmp_path_factory.mktemp("prometheus"), service.metrics_port, port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def query(base: str, expr: str) -> list:
    r = requests.get(base + "/api/v1/query", params={"query": expr}, timeout=30).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def traffic(service, url):
    """Something for every panel: all three models over HTTP and gRPC, a stream, errors and a refusal."""
    from proto import inference_pb2 as pb
    from tests.test_service import png_b64
    from models.data import digits as D

    import grpc
    from proto import inference_pb2_grpc

    test = D.digit_splits()["test"]
    image = png_b64((test.images[0] * 255).round())
    canvases, _, _ = D.make_scenes(test, 1, seed=3)
    for _ in range(3):
        assert requests.post(url + "/v1/translate", json={"texts": ["Friday, March 14, 2025", "nine"]}).status_code == 200
        assert requests.post(url + "/v1/classify", json={"images": [image] * 4}).status_code == 200
        assert requests.post(url + "/v1/caption", json={"image": png_b64(canvases[0])}).status_code == 200
    with requests.post(url + "/v1/translate/stream", json={"text": NUMBER_TEXT, "max_new_tokens": 64}, stream=True) as r:
        assert r.status_code == 200 and b"done" in r.content
    assert requests.post(url + "/v1/translate", json={"text": "x" * 600}).status_code == 413
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        assert inference_pb2_grpc.InferenceStub(channel).Translate(pb.TranslateRequest(texts=["nine"]), timeout=30).translations
    with reconfigured(service, "translator", {"max_batch_size": 32, "max_queue": 0}):
        wait_for(lambda: stats("translator")["max_queue"] == 0, what="the new queue bound")
        assert requests.post(url + "/v1/translate", json={"text": "nine"}).status_code == 503


def test_counters_exist_at_zero_before_any_event(service, prometheus):
    """The error and rejection counters the rules divide by and the panels plot are exported at 0 from a replica's
    start, not missing until their first event (``service.metrics.zero_counters``). These series have had no event
    in the test session (the service is shared: a classifier never refuses for an expected wait, and no request
    here fails with INTERNAL or 500)."""
    wanted = ['ray_inference_errors_total{model="classifier",protocol="grpc",code="INTERNAL"}',
              'ray_inference_errors_total{model="translator",protocol="http",code="500"}',
              'ray_inference_errors_total{model="captioner",protocol="grpc",code="INTERNAL"}',
              'ray_inference_rejected_total{model="classifier",reason="expected_wait"}',
              'ray_inference_rejected_total{model="classifier",reason="queue_timeout"}']
    deadline = time.monotonic() + 60
    while True:
        found = {w: query(prometheus, w) for w in wanted}
        if all(found.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    for expr, result in found.items():
        assert result and float(result[0]["value"][1]) == 0.0, (expr, result)


def substitute(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$model", ".*").replace("$cluster", ".*")


def test_every_panel_and_rule_returns_data(service, url, prometheus):
    import build_dashboard
    import yaml

    traffic(service, url)
    board = json.loads(build_dashboard.render())
    panels = [(p["title"], substitute(t["expr"])) for p in board["panels"] for t in p["targets"]]
    gpu_only = lambda expr: any(m in expr for m in build_dashboard.GPU_ONLY_METRICS)
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    recorded = [r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r]
    alerts = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"] if "alert" in r]

    def empty():
        missing = [t for t, e in panels if not gpu_only(e) and not query(prometheus, e)]
        missing += [r for r in recorded if not query(prometheus, r)]
        return missing

    deadline, missing = time.time() + 150, None
    while time.time() < deadline:  # Ray exports every ~10 s, Prometheus scrapes every 5 s and evaluates rules every 5 s
        missing = empty()
        if not missing:
            break
        time.sleep(5)
    assert not missing, f"no data for: {missing}"
    for title, expr in panels:  # GPU panels: the query is valid; data needs GPU nodes
        query(prometheus, expr)
    for name, expr in alerts:  # valid, evaluated by Prometheus without error
        query(prometheus, expr)
    loaded = requests.get(prometheus + "/api/v1/rules", timeout=30).json()["data"]["groups"]
    states = {r["name"]: (r["health"], r.get("lastError", "")) for g in loaded for r in g["rules"]}
    assert set(states) == set(recorded) | {a for a, _ in alerts}
    assert all(h == "ok" for h, _ in states.values()), states


def test_every_metric_named_by_dashboards_and_rules_is_exported(service, prometheus):
    """Checked against what Prometheus really scraped from the service (waits for the traffic above)."""
    import build_dashboard
    import yaml

    board = json.loads(build_dashboard.render())
    text = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    text += " " + " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    named = set(re.findall(r"\b(ray_[a-z_]+)\b(?!\s*(?:=|!=|=~|!~))", text))  # not label matchers
    named = {re.sub(r"_(bucket|sum|count)$", "", m) if m.endswith(("_bucket", "_sum", "_count")) else m for m in named}
    exported = set(requests.get(prometheus + "/api/v1/label/__name__/values", timeout=30).json()["data"])
    families = {re.sub(r"_(bucket|sum|count)$", "", m) for m in exported} | exported
    missing = sorted(m for m in named - families if m not in build_dashboard.GPU_ONLY_METRICS)
    assert not missing, missing
