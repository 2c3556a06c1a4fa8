"""`make run`'s entry point: starts, serves, and stops cleanly on Ctrl-C."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.servicekit import child_env, free_ports

ROOT = Path(__file__).resolve().parents[1]


def test_make_run_serves_and_stops_cleanly_on_ctrl_c(repo):
    port, grpc_port, metrics_port = free_ports(3)
    env = child_env(SERVE_HTTP_PORT=str(port), SERVE_GRPC_PORT=str(grpc_port), METRICS_PORT=str(metrics_port), MODEL_REPOSITORY=str(repo))
    proc = subprocess.Popen([sys.executable, "-m", "service.app"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 240
        while not any("ready in" in line for line in lines):  # make run announces readiness itself
            assert proc.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        r = requests.post(f"http://127.0.0.1:{port}/v1/translate", json={"text": "Friday, March 14, 2025"}, timeout=30)
        assert r.json()["translations"] == ["vendredi 14 mars 2025"]
        import grpc

        from proto import inference_pb2, inference_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = inference_pb2_grpc.InferenceStub(channel).Translate(inference_pb2.TranslateRequest(texts=["nine"]), timeout=60)
        assert list(reply.translations) == ["neuf"]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
        out = "".join(lines)
        assert proc.returncode == 0, out[-3000:]
        assert "curl" in out and "shutting down" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_repository_is_a_clear_error(tmp_path):
    env = child_env(MODEL_REPOSITORY=str(tmp_path / "nowhere"))
    proc = subprocess.run([sys.executable, "-m", "service.app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "python -m export" in proc.stderr


def test_broken_serve_config_is_a_clear_error(repo, tmp_path):
    bad = tmp_path / "serve_config.yaml"
    bad.write_text("applications:\n  - name: inference\n    import_path: service.server:build_app\n    deployments:\n"
                   "      - name: Server\n        max_ongoing_requests: -3\n")
    env = child_env(MODEL_REPOSITORY=str(repo), SERVE_CONFIG=str(bad))
    proc = subprocess.run([sys.executable, "-m", "service.app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "serve config" in proc.stderr and "max_ongoing_requests" in proc.stderr, proc.stderr


def test_make_observe_runs_prometheus_beside_the_service_and_stops_both(repo):
    from tests.test_deploy import prometheus_tool

    prometheus_tool("prometheus")
    port, grpc_port, metrics_port, prom_port = free_ports(4)
    env = child_env(SERVE_HTTP_PORT=str(port), SERVE_GRPC_PORT=str(grpc_port), METRICS_PORT=str(metrics_port), PROMETHEUS_PORT=str(prom_port), MODEL_REPOSITORY=str(repo))
    proc = subprocess.Popen([sys.executable, "-m", "service.observe"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        deadline = time.time() + 240
        while not any("ready in" in line for line in lines):
            assert proc.poll() is None and time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        targets = requests.get(f"http://127.0.0.1:{prom_port}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert [t["scrapeUrl"] for t in targets] == [f"http://127.0.0.1:{metrics_port}/metrics"]
        assert any(f"http://127.0.0.1:{prom_port}" in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        assert proc.returncode == 0, "".join(lines)[-3000:]
        try:
            requests.get(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2)
            raise AssertionError("Prometheus still running after make observe stopped")
        except requests.ConnectionError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
