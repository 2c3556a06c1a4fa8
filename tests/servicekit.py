"""Shared by the tests that talk to the running service (the fixtures themselves are in conftest.py)."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import time
import typing

from service import config as serve_config

LONG_TEXT = "The meetings are on Wednesday, September 27, 2084 and on Thursday, April 12, 1973. " * 6  # ≤ 512 chars
# The shipped translator loops on this one until max_new_tokens (a long decode, on purpose).
LOOPING_TEXT = "nine hundred ninety-nine thousand nine hundred ninety-nine, " * 8


class Service(typing.NamedTuple):
    url: str
    grpc_port: int
    metrics_port: int
    config: dict  # the serve config as deployed (deploy/serve_config.yaml, localized)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def stats(name: str) -> dict:
    """A deployment's ``stats()``."""
    import asyncio

    from ray import serve

    async def ask() -> dict:
        return await asyncio.wait_for(serve.get_deployment_handle(name, app_name=serve_config.APP_NAME).stats.remote(), 30)

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
def redeployed(service: Service, name: str, **fields):
    """Redeploy the serve config with one deployment's entry changed, as an operator would; restore it after."""
    from ray import serve

    config = copy.deepcopy(service.config)
    serve_config.deployment(config, name).update(fields)
    serve_config.deploy(config)
    try:
        yield
    finally:
        serve_config.deploy(service.config)
        wait_for(lambda: serve.status().applications[serve_config.APP_NAME].status == "RUNNING", what="the app to run")


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
