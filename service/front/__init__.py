"""Protocol adapters: each maps one wire format onto the request contract (``service.contract``) and the models'
answers back, in the process that runs the models. No adapter imports torch or ONNX Runtime.

* ``http``: the task routes (``/v1/...``) and the FastAPI application every HTTP route belongs to;
* ``oip``: the Open Inference Protocol over HTTP (``/v2/...``) and gRPC (``inference.GRPCInferenceService``);
* ``grpc``: the task gRPC service ``inference.v1.Inference``;
* ``health``: ``/healthz``, ``/readyz`` and ``grpc.health.v1.Health``;
* ``observe``: the request metrics every adapter records once per request.

``bind`` hands them the serving process's models (``service.server.Models``, or any object with the same
attributes: the adapters' tests bind one without Ray).
"""

from __future__ import annotations

_models = None


def bind(models) -> None:
    global _models
    _models = models
    from service import oip

    oip.register(models.contract)  # the Open Inference Protocol lists and serves every model of the repository


def models():
    if _models is None:
        raise RuntimeError("service.front: no models bound (service.server binds them when a replica starts)")
    return _models
