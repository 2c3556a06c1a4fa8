"""The Open Inference Protocol (KServe v2) over HTTP (``/v2/...``) and gRPC (``inference.GRPCInferenceService``).

The tensors are decoded by ``service.oip`` (the transport-free codec); the models' jobs come from the same contract as
the task routes, so the same limits hold: ``beam_size`` and ``max_new_tokens`` request parameters, 64 items,
image sizes, text lengths.
"""

from __future__ import annotations

import re

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service import oip as codec
from service.contract import Deadline, TIMEOUT_HEADER
from service.front import health, models
from service.front.grpc import unary
from service.front.offload import built

router = APIRouter(tags=["open inference protocol"])
INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


def infer_route(path: str) -> tuple[str, str] | None:
    """(model, method) of an infer route for the request metrics, None for anything else."""
    match = INFER.match(path)
    return (match.group(1), "ModelInfer") if match and match.group(1) in codec.MODELS else None


async def infer(model: str, tensors: list, params: dict, deadline: Deadline | None) -> list:
    codec.metadata(model)  # 404 for an unknown model
    t = codec.only_input(tensors, model)
    n = len(t.data) if isinstance(t.data, list) else t.data.shape[0]
    m = models()
    if m.contract.model(model).task == "classification":
        if t.name == "images":
            job = m.contract.classify_array(t.data, model=model, deadline=deadline)
        else:
            job = await built(m.contract.classify, t.data, model=model, deadline=deadline, field="image_bytes")
        probs = await m.host(model).probabilities(job)
        labels = m.host(model).labels
        top = [labels[i].encode() for i in probs.argmax(-1)]
        return [codec.Output("probabilities", "FP32", [n, probs.shape[1]], probs), codec.Output("label", "BYTES", [n], top)]
    beam, max_new = params.get("beam_size"), params.get("max_new_tokens")
    if m.contract.model(model).task == "translation":
        try:
            texts = [x.decode("utf-8") for x in t.data]
        except UnicodeDecodeError:
            raise codec.ProtocolError("text: elements must be UTF-8") from None
        job = m.contract.translate(texts, beam_size=beam, max_new_tokens=max_new, model=model, deadline=deadline, field="text")
        result = await m.host(model).translate(job)
        return [codec.Output("translation", "BYTES", [n], [x.encode() for x in result["translations"]]),
                codec.Output("tokens", "INT32", [n], np.asarray(result["tokens"], dtype=np.int32))]
    job = await built(m.contract.caption, t.data, beam_size=beam, max_new_tokens=max_new, model=model, deadline=deadline)
    result = await m.host(model).caption(job)
    return [codec.Output("caption", "BYTES", [n], [x.encode() for x in result["captions"]])]


def metadata(name: str) -> dict:
    """The protocol's model metadata, plus what a client may send (``parameters``: the contract's limits)."""
    meta = codec.metadata(name)
    return {**meta, "parameters": models().contract.limits().get(name, {})}


# ------------------------------------------------------------------------------------------------ HTTP


@router.get("/v2")
async def server_metadata() -> dict:
    return codec.SERVER


@router.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready() -> JSONResponse:
    ok = all(health.readiness().values())
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.post("/v2/repository/index")
async def repository_index() -> list[dict]:
    """Every model served, ready or not (Triton's repository index, read-only: models are loaded at start)."""
    ok = health.readiness()
    return [{"name": name, "version": codec.VERSION, "state": "READY" if ok.get(name) else "UNAVAILABLE"} for name in codec.MODELS]


@router.get("/v2/models/{name}")
@router.get("/v2/models/{name}/versions/{version}")
async def model_metadata(name: str, version: str | None = None) -> dict:
    codec.check_version(version)
    return metadata(name)


@router.get("/v2/models/{name}/ready")
@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(name: str, version: str | None = None) -> JSONResponse:
    codec.check_version(version)
    codec.metadata(name)
    ok = health.model_ready(name)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@router.post("/v2/models/{name}/infer")
@router.post("/v2/models/{name}/versions/{version}/infer")
async def http_infer(name: str, request: Request, version: str | None = None) -> Response:
    codec.check_version(version)
    codec.metadata(name)
    deadline = Deadline.from_header(request.headers.get(TIMEOUT_HEADER))
    head, tensors = codec.parse_http(await request.body(), request.headers.get("Inference-Header-Content-Length"), name)
    params = head.get("parameters") or {}
    if not isinstance(params, dict):
        raise codec.ProtocolError("'parameters' must be an object")
    outputs = await infer(name, tensors, params, deadline)
    content, headers = codec.http_response(name, head, outputs)
    return Response(content, headers=headers, media_type=headers["content-type"])


# ------------------------------------------------------------------------------------------------ gRPC


async def ServerLive(pb, request, context):
    return pb.ServerLiveResponse(live=True)


async def ServerReady(pb, request, context):
    return pb.ServerReadyResponse(ready=all(health.readiness().values()))


async def ServerMetadata(pb, request, context):
    return pb.ServerMetadataResponse(**codec.SERVER)


async def ModelReady(pb, request, context):
    async def work():
        codec.check_version(request.version)
        codec.metadata(request.name)
        return pb.ModelReadyResponse(ready=health.model_ready(request.name))

    return await unary(context, pb.ModelReadyResponse(), work)


async def ModelMetadata(pb, request, context):
    async def work():
        codec.check_version(request.version)
        meta = codec.metadata(request.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

    return await unary(context, pb.ModelMetadataResponse(), work)


async def ModelInfer(pb, request, context, deadline: Deadline | None = None):
    async def work():
        codec.check_version(request.model_version)
        params = codec.grpc_parameters(request.parameters)
        outputs = await infer(request.model_name, codec.parse_grpc(request), params, deadline)
        return codec.grpc_response(pb, request.model_name, request.id, [o.name for o in request.outputs], outputs)

    model = request.model_name if request.model_name in codec.MODELS else None
    return await unary(context, pb.ModelInferResponse(), work, model, "ModelInfer")
