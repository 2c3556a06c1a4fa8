"""The Serve application: one deployment, ``Server``, that is the ingress and runs the repository's models in its own process.

A request goes client → (HAProxy) → a ``Server`` replica, which parses it (``service.front``), validates it
(``service.contract``) and runs it on the model in the same process (``service.classifier``,
``service.generator``): no second Serve hop, the way Triton runs models in the serving process. The engines' own
admission answers 503 at once when a request cannot be served within its budget. Replicas hold all three models and
scale as a unit (``autoscaling_config`` in ``deploy/serve_config.yaml``); ``num_gpus`` is the replica's share of a GPU.

Settings that change at run time live in ``user_config``, one entry per model (``reconfigure``):
``{"classifier": {max_batch_size, batch_wait_timeout_s, max_queue}, "translator": {max_batch_size, max_queue,
max_queue_wait_ms, auto_width}, "captioner": {as the translator}}``; ``stats(model)`` reports a model's live settings
and load (tests, operators).

(No ``from __future__ import annotations``: Serve reads ``build_app``'s argument class to validate the file's ``args``.)
"""

import asyncio
import dataclasses
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from service import front
from service.classifier import ClassifierHost
from service.config import default_repository
from service.contract import MODELS, TASK_OF, Contract, repository_models
from service.front import grpc as task_grpc
from service.front import health, oip
from service.front.grpc import opened
from service.front.http import app
from service.generator import CaptionerHost, TranslatorHost
from service.metrics import metrics, zero_counters
from service.providers import gpu_memory_bytes, model_memory_limits, replica_memory_limit
from service.runtime import RuntimeOptions


def _pb(name: str):
    """A generated proto module, imported on first use: tritonclient defines the same protobuf package
    (``inference``), so a process that imports both (the tests) must not get ours by merely importing this one."""
    import importlib

    return importlib.import_module(f"proto.{name}")


GRPC_SERVICERS = [  # the generated registrations, wrapped so an unparsable message becomes INVALID_ARGUMENT
    "service.grpc_lenient.add_InferenceServicer_to_server",
    "service.grpc_lenient.add_GRPCInferenceServiceServicer_to_server",
    "service.grpc_lenient.add_HealthServicer_to_server",
]


def replica_runtime_options() -> RuntimeOptions:
    """ONNX Runtime threads per session: the CPUs Ray gave this replica (``ray_actor_options.num_cpus``, at least one),
    not one per core of the machine. A parallel section waits for its slowest thread, and a replica shares the machine
    with HAProxy, Ray and other replicas: measured on 2 vCPUs (256-token translation, one other busy process), one
    thread 98 ms, two threads 273 ms (RELIABILITY.md)."""
    import ray

    try:
        assigned = ray.get_runtime_context().get_assigned_resources()
    except Exception:  # noqa: BLE001 - not in a Ray worker (a direct construction in a script)
        assigned = {}
    cpus, gpus = assigned.get("CPU", 1.0), assigned.get("GPU", 0.0)
    # GPU memory: the replica's num_gpus share of the device (Models splits it between the three models)
    limit = replica_memory_limit(gpus, gpu_memory_bytes()) if gpus else None
    return RuntimeOptions(intra_op_threads=max(1, int(cpus)), gpu_mem_limit=limit)


# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The decode loops and the
# classifier's batches run on their own threads and release the GIL inside ONNX Runtime; when a run returns, the thread
# waits for the event loop, busy parsing requests under load, to hand the GIL back. With the default that wait is up to
# 5 ms a step, longer than a step itself (1-3 ms here): measured on 2 vCPUs, beam-4 translations fell from 100/s at
# 8 clients to 74/s at 64 as the HTTP load grew.
SWITCH_INTERVAL_S = float(os.environ.get("SERVE_GIL_SWITCH_INTERVAL_S", "0.0005"))


class Models:
    """The models of one repository in this process (the shipped three, and any imported model beside them), and
    the contract their requests are validated by."""

    def __init__(self, repository: str | Path, runtime_options: RuntimeOptions | None = None) -> None:
        repository = Path(repository)
        options = runtime_options or RuntimeOptions()
        self.contract = Contract.from_repository(repository)
        # the replica's GPU memory, split between its models: each task's share (MODEL_SHARE) split evenly between
        # the shipped model of that task and the imported ones, so that imports never over-commit the device
        limits = model_memory_limits(options.gpu_mem_limit)
        shipped = {TASK_OF[m]: m for m in MODELS}
        sharing = Counter(info.task for info in self.contract.models.values())

        def own(name: str) -> RuntimeOptions:
            task = self.contract.models[name].task
            share = limits[shipped[task]]
            self.memory_limits[name] = None if share is None else share // sharing[task]
            return dataclasses.replace(options, gpu_mem_limit=self.memory_limits[name])

        self.memory_limits: dict[str, int | None] = {}

        for name, why in repository_models(repository)[1].items():
            logging.getLogger("ray.serve").warning("model '%s' in %s is not served: %s", name, repository, why)
        self.classifier = ClassifierHost(repository / "classifier" / "1", own("classifier"))
        self.translator = TranslatorHost(repository / "translator" / "1", own("translator"))
        self.captioner = CaptionerHost(repository / "captioner" / "1", own("captioner"))
        self.hosts = {"translator": self.translator, "classifier": self.classifier, "captioner": self.captioner}
        for name, info in self.contract.models.items():  # imported models: each within its task's share of GPU memory
            if name not in self.hosts:
                host = {"classification": ClassifierHost, "translation": TranslatorHost, "captioning": CaptionerHost}[info.task]
                self.hosts[name] = host(repository / name / "1", own(name), name=name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.hosts)

    def host(self, name: str):
        if name not in self.hosts:
            raise KeyError(f"unknown model '{name}'; models: {', '.join(self.hosts)}")
        return self.hosts[name]

    def reconfigure(self, user_config: dict) -> None:
        """Blocking (a decoder's new width is measured before this returns): call it off the event loop. A model without
        an entry of its own (an imported one) runs with the defaults: one model's settings never change another's."""
        if unknown := set(user_config) - set(self.hosts):
            raise ValueError(f"user_config: unknown keys {sorted(unknown)} (one entry per model: {', '.join(self.hosts)})")
        for name, host in self.hosts.items():
            host.reconfigure(dict(user_config.get(name) or {}))

    def stats(self, name: str) -> dict:
        return self.host(name).stats()

    def ready(self, name: str) -> bool:
        return self.host(name).ready()

    def unready_reason(self, name: str) -> str:
        host = self.host(name)
        if host.provider_problem is not None:
            return host.provider_problem
        if hasattr(host, "engine") and not host.ready():
            return "its decode loop is not running"
        return "its ONNX Runtime session did not answer"

    def stop(self) -> None:
        for host in self.hosts.values():
            if hasattr(host, "stop"):
                host.stop()


@serve.deployment(max_ongoing_requests=4096, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class Server:
    def __init__(self, repository: str) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self.models = Models(repository, replica_runtime_options())
        front.bind(self.models)
        zero_counters(metrics(), self.models.names)  # counters the rules and panels use exist at 0 from the start
        for model in self.models.names:  # every model's in-flight series exists (at 0) from the start
            metrics().add_gauge("inference_requests_in_flight", 0, model=model)
            metrics().add_gauge("inference_execution_provider", 1, model=model, provider=self.models.host(model).provider)

    async def reconfigure(self, user_config: dict) -> None:
        """Serve calls it before the replica takes requests (and on every changed ``user_config``); a decoder's width
        calibration (1-3 s on two vCPUs) runs off the event loop, so requests keep flowing during a reconfigure."""
        await asyncio.to_thread(self.models.reconfigure, user_config)

    async def stats(self, model: str) -> dict:
        return self.models.stats(model)

    def check_health(self) -> None:
        """Serve's health check: a replica whose models cannot answer is restarted."""
        broken = [name for name, ok in health.readiness().items() if not ok]
        if broken:
            raise RuntimeError("; ".join(f"{name}: {self.models.unready_reason(name)}" for name in broken))

    def __del__(self) -> None:
        models = getattr(self, "models", None)
        if models is not None:
            models.stop()

    # gRPC inference.v1.Inference: Serve routes each RPC to the method of the same name, and passes the call's context
    # to a parameter named grpc_context. ``opened`` unwraps the message and the call's deadline (service/grpc_lenient.py).
    async def Translate(self, request, grpc_context):
        pb = _pb('inference_pb2')
        request, deadline = opened(request, grpc_context)
        return pb.TranslateResponse() if request is None else await task_grpc.Translate(pb, request, grpc_context, deadline)

    async def TranslateStream(self, request, grpc_context):
        request, deadline = opened(request, grpc_context)
        if request is None:
            return
        async for chunk in task_grpc.TranslateStream(_pb('inference_pb2'), request, grpc_context, deadline):
            yield chunk

    async def Classify(self, request, grpc_context):
        pb = _pb('inference_pb2')
        request, deadline = opened(request, grpc_context)
        return pb.ClassifyResponse() if request is None else await task_grpc.Classify(pb, request, grpc_context, deadline)

    async def Caption(self, request, grpc_context):
        pb = _pb('inference_pb2')
        request, deadline = opened(request, grpc_context)
        return pb.CaptionResponse() if request is None else await task_grpc.Caption(pb, request, grpc_context, deadline)

    # gRPC inference.GRPCInferenceService (the Open Inference Protocol)
    async def ServerLive(self, request, grpc_context):
        pb = _pb('open_inference_pb2')
        request, _ = opened(request, grpc_context)
        return pb.ServerLiveResponse() if request is None else await oip.ServerLive(pb, request, grpc_context)

    async def ServerReady(self, request, grpc_context):
        pb = _pb('open_inference_pb2')
        request, _ = opened(request, grpc_context)
        return pb.ServerReadyResponse() if request is None else await oip.ServerReady(pb, request, grpc_context)

    async def ServerMetadata(self, request, grpc_context):
        pb = _pb('open_inference_pb2')
        request, _ = opened(request, grpc_context)
        return pb.ServerMetadataResponse() if request is None else await oip.ServerMetadata(pb, request, grpc_context)

    async def ModelReady(self, request, grpc_context):
        pb = _pb('open_inference_pb2')
        request, _ = opened(request, grpc_context)
        return pb.ModelReadyResponse() if request is None else await oip.ModelReady(pb, request, grpc_context)

    async def ModelMetadata(self, request, grpc_context):
        pb = _pb('open_inference_pb2')
        request, _ = opened(request, grpc_context)
        return pb.ModelMetadataResponse() if request is None else await oip.ModelMetadata(pb, request, grpc_context)

    async def ModelInfer(self, request, grpc_context):
        pb = _pb('open_inference_pb2')
        request, deadline = opened(request, grpc_context)
        return pb.ModelInferResponse() if request is None else await oip.ModelInfer(pb, request, grpc_context, deadline)

    # gRPC grpc.health.v1.Health
    async def Check(self, request, grpc_context):
        from grpc_health.v1 import health_pb2

        request, _ = opened(request, grpc_context)
        return health_pb2.HealthCheckResponse() if request is None else await health.Check(request, grpc_context)

    async def Watch(self, request, grpc_context):
        request, _ = opened(request, grpc_context)
        if request is None:
            return
        async for status in health.Watch(request, grpc_context):
            yield status


class AppArgs(BaseModel):
    """``args`` of the application in the serve config."""

    model_config = ConfigDict(extra="forbid")
    repository: str = Field(default_factory=default_repository, description="the ONNX model repository (python -m export)")


def build_app(args: AppArgs):
    """The application (``import_path`` of the serve config): one ``Server`` deployment. Its options (replicas,
    user_config, GPUs) come from the serve config, not from here."""
    return Server.bind(str(Path(args.repository).resolve()))
