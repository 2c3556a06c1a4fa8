"""An Open Inference Protocol model that returns its input: what the serving path costs without a model.

Deploy it as a second application next to the models (``tests/benchmarks/frontend_bench.py`` does) to measure
the front-end alone, as Triton's identity models are used with perf_analyzer:

    applications:
      - name: echo
        route_prefix: /echo
        import_path: service.echo:build_app

HTTP: ``POST /echo/v2/models/echo/infer``; gRPC: ``inference.GRPCInferenceService/ModelInfer`` with the call
metadata ``application: echo``. The topology is the models': one deployment parses the request with the same codec
(``service/oip.py``) and answers with the tensor in the same process, no second hop. It reserves no CPU, so adding
the probe never keeps a model replica from being scheduled.

(No ``from __future__ import annotations``: FastAPI must see the real ``Request`` annotation.)
"""

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from ray import serve

from service import oip

app = FastAPI(title="echo")


@app.exception_handler(oip.ProtocolError)
async def _protocol_error(_: Request, e: oip.ProtocolError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=e.status)


def echo(tensors: list[oip.Tensor]) -> list[oip.Output]:
    if len(tensors) != 1 or tensors[0].datatype == "BYTES":
        raise oip.ProtocolError("echo takes one numeric tensor")
    t = tensors[0]
    return [oip.Output("y", t.datatype, list(t.data.shape), t.data)]


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request) -> Response:
    if name != "echo":
        raise oip.ProtocolError(f"unknown model '{name}'; models: echo", 404)
    head, tensors = oip.parse_http(await request.body(), request.headers.get("Inference-Header-Content-Length"))
    content, headers = oip.http_response(name, head, echo(tensors))
    return Response(content, headers=headers, media_type=headers["content-type"])


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Echo:
    async def ModelInfer(self, request, grpc_context):
        import grpc

        from proto import open_inference_pb2 as pb

        try:
            outputs = echo(oip.parse_grpc(request))
            return oip.grpc_response(pb, request.model_name, request.id, [o.name for o in request.outputs], outputs)
        except oip.ProtocolError as e:
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(e.message)
            return pb.ModelInferResponse()


def build_app(args: dict):
    """``import_path`` target; ``args`` (a ``repository`` set for every application) are not needed."""
    return Echo.bind()
