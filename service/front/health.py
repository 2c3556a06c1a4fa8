"""Health and readiness: ``/healthz`` (the process is up), ``/readyz`` (every model answers), and the standard gRPC
``grpc.health.v1.Health`` service (``""`` or a gRPC service name: every model; a model's name: that model).

The models run in this process, so readiness is their own answer (``Models.ready``): an ORT session that runs, a
decode loop that is alive, and, where a GPU was asked for, the provider that was asked for.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.front import models

router = APIRouter()
SERVICES = {"", "inference.v1.Inference", "inference.GRPCInferenceService"}
WATCH_INTERVAL_S = 1.0


def model_ready(name: str) -> bool:
    try:
        return bool(models().ready(name))
    except Exception:  # noqa: BLE001 - a model that cannot say is not ready
        return False


def names() -> tuple[str, ...]:
    """Every model served here: the shipped three and the repository's imported ones."""
    return tuple(models().contract.models)


def readiness() -> dict[str, bool]:
    return {name: model_ready(name) for name in names()}


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz() -> JSONResponse:
    ok = readiness()
    ready = all(ok.values())
    body = {"ready": ready, "models": ok}
    if not ready:
        body["reasons"] = {name: models().unready_reason(name) for name, good in ok.items() if not good}
    return JSONResponse(body, status_code=200 if ready else 503)


def status(service: str):
    """The health status of ``service``, or None for a service this server does not know."""
    from grpc_health.v1 import health_pb2

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    if service in names():
        return serving if model_ready(service) else not_serving
    if service in SERVICES:
        return serving if all(readiness().values()) else not_serving
    return None


async def Check(request, context):
    import grpc
    from grpc_health.v1 import health_pb2

    found = status(request.service)
    if found is None:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details(f"unknown service '{request.service}'")
        return health_pb2.HealthCheckResponse()
    return health_pb2.HealthCheckResponse(status=found)


async def Watch(request, context):
    """The current status, then every change (checked each second), until the client leaves."""
    from grpc_health.v1 import health_pb2

    last = None
    while True:
        found = status(request.service)
        if found is None:
            found = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        if found != last:
            yield health_pb2.HealthCheckResponse(status=found)
            last = found
        await asyncio.sleep(WATCH_INTERVAL_S)
