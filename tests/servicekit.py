"""Shared by the tests that talk to the running service (the fixtures themselves are in conftest.py)."""

from __future__ import annotations

import contextlib
import copy
import os
import time
import typing

from service import config as serve_config
from service.config import free_ports  # one place: the service picks HAProxy's side ports with it

LONG_TEXT = "The meetings are on Wednesday, September 27, 2084 and on Thursday, April 12, 1973. " * 5  # ≤ 255 tokens
# One of the longest decodes of the shipped translator (19 tokens and EOS). It once looped until max_new_tokens;
# the retrained model ends it, and the repetition guard ends any loop: a long decode is now many rows (beam 8).
NUMBER_TEXT = "nine hundred ninety-nine thousand nine hundred ninety-nine, " * 8


class Service(typing.NamedTuple):
    url: str
    grpc_port: int
    metrics_port: int
    config: dict  # the serve config as deployed (deploy/serve_config.yaml, localized)


def free_port() -> int:
    return free_ports(1)[0]


_HANDLE_LOOP = None


def _handle_loop():
    """One event loop for the test process's deployment handles, alive for the session: under Serve's throughput
    preset (the service's default) a handle routes on the loop it is first used from, and a blocking ``.result()``
    outside a loop is refused."""
    global _HANDLE_LOOP
    if _HANDLE_LOOP is None:
        import asyncio
        import threading

        _HANDLE_LOOP = asyncio.new_event_loop()
        threading.Thread(target=_HANDLE_LOOP.run_forever, name="serve-handles", daemon=True).start()
    return _HANDLE_LOOP


def rss_mb(pid: int) -> float:
    """A process's resident memory (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def stats(model: str) -> dict:
    """One model's ``stats()`` in the serving replica (``service.server.Server.stats``)."""
    import asyncio

    from ray import serve

    async def ask() -> dict:
        handle = serve.get_deployment_handle("Server", app_name=serve_config.APP_NAME)
        return await asyncio.wait_for(handle.stats.remote(model), 30)

    return asyncio.run_coroutine_threadsafe(ask(), _handle_loop()).result(40)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def redeployed(service: Service, **fields):
    """Redeploy the serve config with the Server deployment's entry changed, as an operator would; restore it after."""
    from ray import serve

    config = copy.deepcopy(service.config)
    serve_config.deployment(config, "Server").update(fields)
    def settled(deployed: dict) -> typing.Callable[[], bool]:  # running as ``deployed``, no extra replica stopping
        replicas = serve_config.deployment(deployed, "Server").get("autoscaling_config", {}).get("min_replicas", 1)

        def check() -> bool:
            app = serve.status().applications[serve_config.APP_NAME]
            return app.status == "RUNNING" and app.deployments["Server"].replica_states == {"RUNNING": replicas}
        return check

    # Serve takes a replica that is being reconfigured out of HAProxy's servers, and sends what arrives meanwhile to
    # its fallback proxy actor, which segfaulted in Serve's gRPC access log (`context.peer()` of a cancelled stream,
    # proxy_request_response.py) and left 500s for later requests: tests start once the replica is routed to again.
    serve_config.deploy(config, blocking=True)
    wait_for(settled(config), 180, what="the app to run as redeployed")
    wait_for(routed_by_haproxy, 30, what="HAProxy to route to the replica again")
    try:
        yield
    finally:
        serve_config.deploy(service.config, blocking=True)
        wait_for(settled(service.config), 120, what="the app to run as deployed")
        wait_for(routed_by_haproxy, 30, what="HAProxy to route to the replica again")


def routed_by_haproxy() -> bool:
    """Whether this machine's HAProxy routes both of the app's backends (HTTP and gRPC) to a replica that is up
    (asked on its admin socket); True where there is no HAProxy to ask."""
    import glob
    import socket

    base = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_SOCKET_PATH", ""))
    sockets = sorted(glob.glob(os.path.join(base, "*", "admin.sock")), key=os.path.getmtime) if base else []
    if not sockets:
        return True
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(sockets[-1])
        s.sendall(b"show servers state\n")
        state = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    up = {f[1] for f in (line.split() for line in state.splitlines() if not line.startswith("#"))
          if len(f) > 5 and f[3].startswith("SERVE_REPLICA") and f[5] == "2"}  # srv_op_state 2: running
    return {f"http-{serve_config.APP_NAME}", f"grpc-{serve_config.APP_NAME}"} <= up


def reconfigured(service: Service, model: str, settings: dict):
    """``redeployed`` with one model's ``user_config`` entry replaced by ``settings`` (applied in place by
    ``reconfigure``: the replica keeps running)."""
    user_config = copy.deepcopy(serve_config.deployment(service.config, "Server")["user_config"])
    user_config[model] = settings
    return redeployed(service, user_config=user_config)


@contextlib.contextmanager
def decoding_to_the_limit(service: Service):
    """The translator's engine with ``ignore_eos`` (every sequence decodes to its max_new_tokens), the rest of its
    settings as deployed. The shipped model's outputs end within ~25 tokens and the repetition guard ends any
    loop, so tests of what happens *during* a long decode (deadlines, cancellation, streams) ask for this."""
    settings = dict(serve_config.deployment(service.config, "Server")["user_config"]["translator"], ignore_eos=True)
    with reconfigured(service, "translator", settings):
        wait_for(lambda: stats("translator")["ignore_eos"], what="ignore_eos in force")
        yield


def scrape(service: Service) -> str:
    import requests

    return requests.get(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The sum of a metric's samples in a scrape over every series whose labels match (e.g. several worker
    processes), or None when there is none."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if (line.startswith(name + "{") or line.startswith(name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items())]
    return sum(values) if values else None


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a service started as a subprocess: this one's, less HAProxy's per-instance places (the
    child picks its own; sharing the session's would make two HAProxy instances fight over one socket)."""
    from service.config import HAPROXY_INSTANCE_VARIABLES

    return {k: v for k, v in os.environ.items() if k not in HAPROXY_INSTANCE_VARIABLES} | extra
