"""deploy/serve_config.yaml: valid for Serve, consistent with the code, and deployable by Ray's own `serve run`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from service import config as serve_config
from tests.servicekit import child_env, free_port

ROOT = Path(__file__).resolve().parents[1]


def test_the_file_is_a_valid_serve_deploy_config():
    schema = serve_config.validate(serve_config.load())
    (app,) = schema.applications
    assert app.name == serve_config.APP_NAME and app.route_prefix == "/" and app.import_path == "service.server:build_app"
    assert {d.name for d in app.deployments} == {"Server"}  # the ingress runs the models: one hop (service/server.py)
    assert app.logging_config.enable_access_log is False  # a log line per request is CPU at these rates
    assert schema.http_options.port == 8000 and schema.grpc_options.port == 9000


def test_grpc_servicers_and_batching_limits_agree_with_the_code():
    from service.contract import MAX_ITEMS
    from service.server import GRPC_SERVICERS

    config = serve_config.load()
    assert config["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICERS
    server = serve_config.deployment(config, "Server")
    settings = server["user_config"]
    assert set(settings) == {"classifier", "translator", "captioner"}
    assert settings["classifier"]["max_queue"] >= MAX_ITEMS * 2  # a request of MAX_ITEMS images always fits
    for name in ("translator", "captioner"):
        assert settings[name]["max_queue"] >= MAX_ITEMS  # a request of MAX_ITEMS texts always fits
    # requests wait in the models' queues, whose admission sees them, not in front of Serve's bound
    assert server["max_ongoing_requests"] >= sum(s["max_queue"] for s in settings.values())
    assert server["ray_actor_options"]["num_gpus"] == 1  # a replica holds the three models and one GPU


def test_localize_drops_gpu_requests_only_without_a_gpu():
    config = serve_config.load()
    cpu, notes = serve_config.localize(config, repository="/x", host="127.0.0.1", http_port=1, grpc_port=2, gpus=0)
    assert len(notes) == 1 and all("num_gpus" in n for n in notes)
    assert all("num_gpus" not in d.get("ray_actor_options", {}) for d in cpu["applications"][0]["deployments"])
    assert cpu["applications"][0]["args"] == {"repository": "/x"} and cpu["http_options"]["port"] == 1
    gpu, notes = serve_config.localize(config, gpus=1)
    assert not notes and gpu == config
    one, notes = serve_config.localize(config, gpus=1, single_node=True)
    assert len(notes) == 1 and all(d["autoscaling_config"]["max_replicas"] == 1 for d in one["applications"][0]["deployments"])
    assert serve_config.deployment(config, "Server")["autoscaling_config"]["max_replicas"] == 4
    assert "num_gpus" in serve_config.deployment(config, "Server")["ray_actor_options"]  # the input is untouched


def test_on_one_machine_without_a_gpu_the_replicas_follow_the_cpus():
    """A replica runs its Python on one core: `make run` starts as many as the CPUs hold (num_cpus 1 each), within
    the file's min..max replicas; with a GPU, min_replicas (a replica takes a whole GPU)."""
    config = serve_config.load()

    def replicas(**kw) -> int:
        local, _ = serve_config.localize(config, single_node=True, **kw)
        scaling = serve_config.deployment(local, "Server")["autoscaling_config"]
        assert scaling["min_replicas"] == scaling["max_replicas"]
        return scaling["max_replicas"]

    assert replicas(gpus=0, cpus=2) == 2 and replicas(gpus=0, cpus=3) == 3 and replicas(gpus=0, cpus=64) == 4
    assert replicas(gpus=0, cpus=1) == 1 and replicas(gpus=0) == 1 and replicas(gpus=1, cpus=16) == 1


def test_the_builder_takes_the_files_args():
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    from service.server import build_app

    assert isinstance(call_user_app_builder_with_args_if_necessary(build_app, {}), Application)
    assert isinstance(call_user_app_builder_with_args_if_necessary(build_app, {"repository": "/models"}), Application)
    with pytest.raises(Exception, match="repositry"):
        call_user_app_builder_with_args_if_necessary(build_app, {"repositry": "/models"})


def test_each_instance_gets_haproxy_side_ports_outside_the_ranges_ray_binds_from():
    """HAProxy's stats and metrics ports are chosen per instance, free, and never in the kernel's ephemeral range or
    Ray's worker range, where Ray's processes bind port 0 between the choice and HAProxy's start."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for instance in ("a", "b"):
        env = serve_config.serve_environment(instance)
        ports = [int(env[k]) for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")]
        assert len(set(ports)) == 2 and all(20000 <= p < low for p in ports), ports
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"  # HAProxy's 5xx are counted (RELIABILITY.md runbook)
        assert env["RAY_SERVE_HAPROXY_RETRY_ON"] == "conn-failure empty-response"


def test_ray_serve_run_deploys_the_file(repo, tmp_path):
    """`serve run` (Ray's CLI) on the file, localized for this GPU-less machine: the routes answer."""
    port, grpc_port = free_port(), free_port()
    config, _ = serve_config.localize(serve_config.load(), repository=str(repo), host="127.0.0.1", http_port=port,
                                      grpc_port=grpc_port, gpus=0, single_node=True)
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = Path(sys.executable).parent / "serve"
    # HAProxy's files and side ports of its own (Ray's defaults are one fixed directory and ports 8404/9101), so that
    # the cleanup below can find its HAProxy by that directory. After one CI run whose `serve run` took 60 s to stop
    # (and was killed), its HAProxy was still running, orphaned, holding 8404/9101: HAProxy is not in the group killed.
    haproxy = serve_config.serve_environment(f"r{port}")  # short: HAProxy caps socket paths at 97 characters
    # With the HAProxy ingress, Serve drains an ingress replica for at least 30 s at shutdown (for load balancers to
    # notice); nothing here needs that, and it made the stop take 33 s of this test.
    env = child_env(RAY_USAGE_STATS_ENABLED="0", **haproxy)  # haproxy: LOCAL_DRAINING too
    log = tmp_path / "serve_run.log"  # a file, not a pipe that nobody reads while it runs (64 KiB, then it blocks)
    with open(log, "w") as out:
        proc = subprocess.Popen([str(serve), "run", str(path)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=out, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            raise AssertionError("serve run did not become ready")
        r = requests.post(f"http://127.0.0.1:{port}/v1/translate", json={"text": "Friday, March 14, 2025"}, timeout=60)
        assert r.status_code == 200 and r.json()["translations"] == ["vendredi 14 mars 2025"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
        time.sleep(1)
        leftover = subprocess.run(["pkill", "-f", haproxy["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]]).returncode == 0
    # A clean stop (Ctrl-C) leaves nothing behind; after a kill, the HAProxy it left was stopped above.
    assert killed or not leftover, "serve run stopped cleanly but left its HAProxy running"
