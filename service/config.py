"""The serve config (``deploy/serve_config.yaml``): loading it, adapting it to this machine, deploying it.

``make run``, ``serve run deploy/serve_config.yaml`` and a KubeRay RayService all deploy the same file. ``make run``
goes through the very code path ``serve run`` uses (the controller's ``apply_config``), so the per-deployment
options in the file (``user_config``, ``max_ongoing_requests``, ``max_queued_requests``, ``num_gpus``) are applied by
Serve itself rather than re-implemented here. Redeploying a changed ``user_config`` reconfigures the running replicas
in place (``reconfigure``), without restarting them.
"""

from __future__ import annotations

import copy
import os
import random
import socket
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "deploy" / "serve_config.yaml"
APP_NAME = "inference"

# Serve's fastest ingress here, measured against the default by tests/benchmarks/frontend_bench.py (BENCHMARKS.md):
# HAProxy in front of the replicas instead of Serve's Python proxy, Serve's throughput preset (user code on the
# replica's event loop, buffered request logs) and the controller's loop every 0.5 s instead of 0.1 s (background CPU
# that showed up per request at these rates). HAProxy's request metrics stay on (Serve's default): HAProxy logs every
# HTTP request to a Python actor, so what HAProxy answers itself (502 for a replica that died mid-request, 503 with
# no replica) is counted, and those counters outlive HAProxy's reloads (its own reset on every replica change).
# A request whose replica dies before answering anything is tried again on another replica (`empty-response`,
# beside Serve's `conn-failure`): inference requests have no side effects. Three retries, HAProxy's default: HAProxy
# balances by least connections and marks a dead server down only after 3 layer-4 errors, so with one retry a call
# could go to the dead replica twice (2 × 500 in one kill of six with one retry). The price: a request that itself
# kills replicas can take down up to four before it fails; requests are validated and bounded before they reach a
# model. Read by Ray when it starts, so they are environment variables: `make run` and the container image set them;
# a value already set wins (RAY_SERVE_ENABLE_HA_PROXY=0 brings Serve's own proxy back).
SERVE_ENVIRONMENT = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                     "RAY_SERVE_HAPROXY_METRICS_ENABLED": "1", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
                     "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response", "RAY_SERVE_HAPROXY_RETRIES": "3"}
# HAProxy's files and side ports default to fixed places (/tmp/haproxy-serve, ports 8404 and 9101): two instances
# on one machine would fight over them, so every instance gets its own.
HAPROXY_INSTANCE_VARIABLES = ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                              "RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
                              "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", "RAY_SERVE_HAPROXY_STATS_PORT",
                              "RAY_SERVE_HAPROXY_METRICS_PORT")

# A stopping ingress replica stays in draining mode at least this long (Serve's default: 30 s), so that an outside load
# balancer notices before it goes. A single-machine instance has none, and the default made every Ctrl-C of
# `make run` take 32 s; the RayService keeps Serve's default.
LOCAL_DRAINING = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


_RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default min/max_worker_port


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now, outside the ranges Ray takes its own ports from when the service starts.

    A port the OS hands out for port 0 is in its ephemeral range, where Ray's raylet and agents also bind
    port 0 a moment later: a fresh-clone CI run once lost every service test to a raylet that took the HTTP port
    chosen for HAProxy, and a benchmark's service once failed to start on HAProxy's stats port (chosen that way,
    "Address already in use"). Ports between Ray's worker range and the ephemeral range are left alone by both."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    pool = list(range(_RAY_WORKER_PORTS.stop, ephemeral_low))
    random.shuffle(pool)
    ports: list[int] = []
    for port in pool:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # HAProxy binds its side ports on every address
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports between {_RAY_WORKER_PORTS.stop} and {ephemeral_low}")


def serve_environment(instance: str) -> dict[str, str]:
    """What to put in the environment before a single-machine ``ray.init``: SERVE_ENVIRONMENT, LOCAL_DRAINING and
    HAProxy's per-instance places."""
    base = Path(tempfile.gettempdir()) / f"haproxy-serve-{instance}"
    stats_port, metrics_port = free_ports(2)
    return dict(SERVE_ENVIRONMENT) | LOCAL_DRAINING | {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
    }


def apply_serve_environment(instance: str | None = None) -> dict[str, str]:
    """Set ``serve_environment`` in ``os.environ`` (what is already set wins); returns what is in effect."""
    for key, value in serve_environment(instance or str(os.getpid())).items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in (*SERVE_ENVIRONMENT, *LOCAL_DRAINING, *HAPROXY_INSTANCE_VARIABLES)}


def default_repository() -> str:
    return str(Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository")).resolve())


def load(path: str | Path | None = None) -> dict:
    """The serve config as a plain dict (``SERVE_CONFIG`` overrides the default file)."""
    path = Path(path or os.environ.get("SERVE_CONFIG", DEFAULT_CONFIG))
    with open(path) as f:
        return yaml.safe_load(f)


def deployment(config: dict, name: str, app: str = APP_NAME) -> dict:
    """The entry of one deployment in ``config`` (created if the file does not list it)."""
    application = next(a for a in config["applications"] if a["name"] == app)
    entries = application.setdefault("deployments", [])
    for entry in entries:
        if entry["name"] == name:
            return entry
    entries.append({"name": name})
    return entries[-1]


def localize(config: dict, *, repository: str | None = None, host: str | None = None, http_port: int | None = None,
             grpc_port: int | None = None, gpus: float | None = None, single_node: bool = False,
             cpus: float | None = None) -> tuple[dict, list[str]]:
    """A copy of ``config`` for this machine, and what was changed (to tell the user).

    ``gpus``: the GPUs Ray sees here; with none, every deployment's ``num_gpus`` is dropped so the models run on CPU.
    ``single_node``: no machine to scale onto: autoscaling is pinned to a fixed number of replicas, ``min_replicas``,
    or, given ``cpus`` (the CPUs Ray sees) and no GPU, as many replicas as the CPUs hold at the replica's ``num_cpus``
    (within min_replicas..max_replicas). A replica runs its Python on one core (one GIL: its event loop and decode
    loops take turns), so on CPUs the replicas are what uses the machine: two on two vCPUs served 1.8× the
    translations of one (BENCHMARKS.md).
    """
    config, notes = copy.deepcopy(config), []
    if host is not None:
        config.setdefault("http_options", {})["host"] = host
    if http_port is not None:
        config.setdefault("http_options", {})["port"] = http_port
    if grpc_port is not None:
        config.setdefault("grpc_options", {})["port"] = grpc_port
    for application in config["applications"]:
        if repository is not None:
            application.setdefault("args", {})["repository"] = repository
        for entry in application.get("deployments", []):
            actor = entry.get("ray_actor_options", {})
            if not gpus and actor.get("num_gpus"):
                notes.append(f"{entry['name']}: num_gpus {actor.pop('num_gpus')} dropped (Ray sees no GPU here)")
            scaling = entry.get("autoscaling_config")
            if single_node and scaling:
                low, high = scaling.get("min_replicas", 1), scaling.get("max_replicas", 1)
                fixed = low
                if cpus and not gpus:
                    fixed = max(low, min(high, int(cpus // max(actor.get("num_cpus", 1), 1e-9))))
                if (low, high) != (fixed, fixed):
                    scaling["min_replicas"] = scaling["max_replicas"] = fixed
                    notes.append(f"{entry['name']}: autoscaling pinned to {fixed} replica(s) on one machine")
    return config, notes


def validate(config: dict):
    """Ray's own schema for ``serve deploy`` / serveConfigV2; raises on anything Serve would refuse."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(config)


def deploy(config: dict, blocking: bool = False) -> None:
    """Start Serve (proxies with the file's HTTP/gRPC options) and apply the config, as ``serve run FILE`` does.

    Needs ``ray.init`` first. Calling it again with a changed config updates the running application in place.
    """
    from ray.serve._private import api as serve_api  # what `serve run FILE` calls; ray is pinned (pyproject)
    from ray.serve.config import gRPCOptions

    schema = validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
        proxy_location=schema.proxy_location,
    )
    client.deploy_apps(schema, _blocking=blocking)
