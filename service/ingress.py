"""HTTP ingress (FastAPI inside Ray Serve): validation, limits, deadlines, and the error format of the API.

(No ``from __future__ import annotations`` here: FastAPI must see the real request-model classes, and
Ray Serve rebuilds the class where string annotations cannot be resolved. For the same reason everything the
``Ingress`` class uses is defined above it: Serve captures the class when it is decorated.)

Every error is ``{"error": {"code": str, "message": str}}`` naming the offending field: 400 bad input,
413 over a size limit, 422 schema violation, 503 overloaded (with ``Retry-After``), 504 deadline exceeded.
Nothing a client sends produces a 500.
"""


import asyncio
import base64
import binascii
import collections
import json
import math
import re
import time
from pathlib import Path

import grpc
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import oip
from service.config import default_repository
from service.decoding import DecodingOptions
from service.deployments import DeadlineExceeded, DecodingFailed, Overloaded, Refused
from service.grpc_lenient import Undecodable
from service.images import MAX_SIDE, BadImage, digit_array, digit_input, scene_input
from service.metrics import metrics

MAX_TEXT_CHARS, MAX_ITEMS = 512, 64
GRPC_SERVICERS = [  # the generated registrations, wrapped so an unparsable message becomes INVALID_ARGUMENT
    "service.grpc_lenient.add_InferenceServicer_to_server",
    "service.grpc_lenient.add_GRPCInferenceServiceServicer_to_server",
    "service.grpc_lenient.add_HealthServicer_to_server",
]
HEALTH_SERVICES = {"", "inference.v1.Inference", "inference.GRPCInferenceService"}
TIMEOUT_HEADER = "X-Request-Timeout-Ms"

class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: the task API's ``{"error": {"code", "message"}}``, or the Open Inference Protocol's
    ``{"error": "message"}``."""

    error: ErrorDetail | str


ERRORS = {
    400: {"model": ErrorBody, "description": "malformed request (JSON, base64, image bytes, header, tensor)"},
    404: {"model": ErrorBody, "description": "unknown model or version (Open Inference Protocol)"},
    413: {"model": ErrorBody, "description": "over a size limit"},
    422: {"model": ErrorBody, "description": "a field out of its range"},
    503: {"model": ErrorBody, "description": "overloaded or not ready: retry after Retry-After seconds"},
    504: {"model": ErrorBody, "description": "the request's deadline (X-Request-Timeout-Ms) passed"},
}

app = FastAPI(
    title="attention-serving",
    version="0.1.0",
    description="EN→FR translation (narrow CLDR/num2words domain), ViT digit classification and digit-scene captioning.",
    responses=ERRORS,  # documented on every route (the fuzzing test holds every answer to this document)
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class StreamRefused(Exception):
    """Ends a gRPC stream with the status code already set on its context."""


GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.RESOURCE_EXHAUSTED,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    500: grpc.StatusCode.INTERNAL,
}


def error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# Load shedding at the door. Under overload most requests are refused, and each refusal that reaches a model replica
# costs two cross-process calls and takes the GIL from its decoding loop: measured at 10× capacity, such refusals took
# p50 18 ms / p99 75-200 ms against 5 / 20-95 ms at the door, and admitted requests slowed 2-3× (RELIABILITY.md,
# overload). So each ingress replica learns how many concurrent calls a model takes from it, and refuses the rest
# itself, before FastAPI parses them: a concurrency limit learned from the model's own refusals (additive increase
# on success once the model has not refused for a while, reset to what was in flight on a "busy" refusal, as TCP's
# congestion window or Envoy's adaptive concurrency filter do). The model still decides: the door only refuses what
# the model would have refused.
READY_TIMEOUT_S = 2.0  # a replica's ready() answers in milliseconds: no answer this soon means it is gone or wedged
REPLICAS_TTL_S = 1.0  # how old the controller's replica counts may be when a probe uses them
GATE_MAX_S = 0.05  # closed this long after a refusal with nothing of this replica's in flight (other replicas filled it)
PROBE_AFTER_S = 0.5  # the limit grows (probes for room) only once the model has gone this long without a busy
# refusal. A probe that finds no room is refused by the model, a cross-process call (p50 13-30 ms against 5 ms here);
# growing on every success sent about one such probe per success at 10× capacity, growing only after this ~4× fewer
LIMIT_TTL_S = 2.0  # a learned limit is forgotten this long after the model last refused as busy (a burst a few
# seconds later, perhaps after a reconfigure, is not held to what an earlier overload left); under steady overload
# the next probe's refusal comes well within it
IDLE_FORGET_S = 0.25  # nor is a burst held to it once nothing of this replica's has been in flight this long: the
# model has had room since, perhaps more than when it refused (redeployed with more slots, a replica added), and under
# overload this replica never goes so long without a call in flight


class Door:
    """One model's gate in this ingress replica: its calls in flight, and the limit learned from its refusals."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.limit: float | None = None  # None: no refusal seen lately, no limit
        self.refused_at = -math.inf
        self.closed_until = 0.0
        self.idle_since = -math.inf  # when in_flight last fell to 0

    def entered(self) -> None:
        self.in_flight += 1

    def left(self, now: float) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle_since = now

    def shut(self, now: float) -> str | None:
        """Why a request arriving now is refused here, or None to let it through."""
        if self.in_flight == 0 and now - self.idle_since >= IDLE_FORGET_S:
            self.limit = None
        if now < self.closed_until:
            return f"no free slot expected for {(self.closed_until - now) * 1e3:.0f} ms"
        if self.limit is not None and now - self.refused_at < LIMIT_TTL_S and self.in_flight >= self.limit:
            return f"{self.in_flight} requests in flight, as many as it took lately"
        return None

    def refused(self, now: float, others: int) -> None:
        """The model refused a call as busy while ``others`` calls of this replica were in flight besides it."""
        self.refused_at = now
        if others == 0:  # full of other replicas' calls: nothing here will tell when a slot frees
            self.closed_until = now + GATE_MAX_S
        self.limit = max(1.0, float(others))

    def succeeded(self, now: float) -> None:
        self.closed_until = 0.0
        if self.limit is not None and now - self.refused_at >= PROBE_AFTER_S:
            self.limit += 1.0 / self.limit  # probe for room: about one more per limit's worth of successes


_doors: collections.defaultdict[str, Door] = collections.defaultdict(Door)


def shed(model: str) -> None:
    """503 at once while ``model`` is not expected to take another call from this ingress replica (``Door``)."""
    if (why := _doors[model].shut(time.monotonic())) is not None:
        metrics().inc("inference_rejected_total", model=model, reason="expected_wait")
        raise ApiError(503, "overloaded", f"{model}: {why}; retry later", {"Retry-After": "1"})


ROUTE_MODELS = {"/v1/translate": "translator", "/v1/classify": "classifier", "/v1/caption": "captioner"}
STREAM_ROUTES = {"/v1/translate/stream": "translator"}  # a started stream counts itself (service.ingress._stream)


def record(model: str, protocol: str, method: str, code: str, ok: bool, seconds: float) -> None:
    m = metrics()
    m.observe("inference_request_duration_seconds", seconds, model=model, protocol=protocol, method=method, outcome="success" if ok else "error")
    m.inc("inference_requests_total", model=model, protocol=protocol, code=code)
    if not ok:
        m.inc("inference_errors_total", model=model, protocol=protocol, code=code)


OIP_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")


def route_model(path: str) -> tuple[str | None, str]:
    """(the model label, the method label) of an inference route; (None, "") for everything else."""
    if path in ROUTE_MODELS:
        return ROUTE_MODELS[path], path.rsplit("/", 1)[-1]
    match = OIP_INFER.match(path)
    if match and match.group(1) in oip.MODELS:
        return match.group(1), "ModelInfer"
    return None, ""


class ObserveMiddleware:
    """Request metrics of every inference route (status, latency, in flight), as a plain ASGI middleware.

    Plain ASGI rather than ``@app.middleware("http")``: Starlette's ``BaseHTTPMiddleware`` runs each request in an
    extra task group and re-wraps the response; profiled under load it was the largest single cost of the ingress.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        model, method = route_model(path)
        stream_model = STREAM_ROUTES.get(path) if model is None else None
        if model is None and stream_model is None:
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), ["500"]

        async def observed_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
                if stream_model is not None and message["status"] != 200:  # a stream refused before it started
                    record(stream_model, "http", "translate_stream", status[0], False, time.monotonic() - started)
            await send(message)

        app = self.app
        try:  # shed before FastAPI parses anything: under overload this is most requests (``shed``)
            shed(model or stream_model)
        except ApiError as e:
            app = await (_api_error(Request(scope), e))
        if stream_model is not None:
            return await app(scope, receive, observed_send)
        metrics().add_gauge("inference_requests_in_flight", 1, model=model)
        try:
            await app(scope, receive, observed_send)
        finally:
            metrics().add_gauge("inference_requests_in_flight", -1, model=model)
            record(model, "http", method, status[0], status[0] == "200", time.monotonic() - started)


app.add_middleware(ObserveMiddleware)


@app.exception_handler(ApiError)
async def _api_error(request: Request, e: ApiError) -> JSONResponse:
    if request.url.path.startswith("/v2"):  # the Open Inference Protocol's error body
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
    return error(e.status, e.code, e.message, e.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (a body it cannot parse, an unknown path, a wrong method) in the API's error shape."""
    code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, f"http_{e.status_code}")
    return error(e.status_code, code, str(e.detail), getattr(e, "headers", None))


@app.exception_handler(oip.ProtocolError)
async def _protocol_error(_: Request, e: oip.ProtocolError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.status)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0] if e.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "json_invalid":
        return error(400, "invalid_json", f"request body is not valid JSON: {first.get('msg', '')}")
    return error(422, "invalid_field", f"{field}: {first.get('msg', 'invalid')}")


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None
    beam_size: int = Field(1, ge=1, le=8)
    max_new_tokens: int = Field(128, ge=1, le=256)
    return_attention: bool = False


class TranslateStreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    max_new_tokens: int = Field(128, ge=1, le=256)
    beam_size: int = Field(1, ge=1, le=1, description="streaming decodes greedily")


class AttentionMap(BaseModel):
    """Cross-attention of one output (last decoder layer, heads averaged): ``weights[i][j]`` is how much output
    token ``i`` looked at source token / image patch ``j``; each row sums to 1."""

    target_tokens: list[str]
    source_tokens: list[str] | None = None  # translator
    grid: list[int] | None = None  # captioner: columns are patches in reading order on a rows × cols grid
    weights: list[list[float]]


class TranslateResponse(BaseModel):
    translations: list[str]
    model: str = "translator"
    tokens: list[int]
    attention: list[AttentionMap] | None = None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str | None = None
    images: list[str] | None = None
    top_k: int = Field(5, ge=1, le=10)


class Prediction(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    predictions: list[list[Prediction]]
    model: str = "classifier"


class CaptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str
    beam_size: int = Field(1, ge=1, le=8)
    max_new_tokens: int = Field(40, ge=1, le=256)
    return_attention: bool = False


class CaptionResponse(BaseModel):
    captions: list[str]
    model: str = "captioner"
    attention: list[AttentionMap] | None = None


def counted(items: list, field: str) -> list:
    """``items`` if there are 1..MAX_ITEMS of them (422 for none, 413 for too many)."""
    if not items:
        raise ApiError(422, "invalid_field", f"{field}: must not be empty")
    if len(items) > MAX_ITEMS:
        raise ApiError(413, "too_many_items", f"{field}: {len(items)} items; the limit is {MAX_ITEMS}")
    return items


def one_or_many(single, many, field: str) -> list:
    if (single is None) == (many is None):
        raise ApiError(422, "invalid_field", f"send exactly one of '{field}' and '{field}s'")
    return counted([single] if many is None else many, f"{field}s")


def b64(data: str, field: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{field}: not valid base64") from None


class Timeout(float):
    """A request's ``X-Request-Timeout-Ms``, remembering when the ingress read it: ``left()`` is what remains now. A
    model call is given what remains when it is made, so time the request spent before it (parsing, image decoding,
    the ingress's own queue) counts against its deadline there too; given the whole timeout, the decoder kept
    requests whose deadline the ingress had already answered 504 (measured under overload: 25-45 % of admitted
    translations decoded for a client that had been told 504)."""

    since: float

    def __new__(cls, ms: float) -> "Timeout":
        value = super().__new__(cls, ms)
        value.since = time.monotonic()
        return value

    def left(self) -> float:
        return max(1.0, float(self) - (time.monotonic() - self.since) * 1000.0)


def left(timeout: float | None) -> float | None:
    """Milliseconds a call made now may take: what remains of a ``Timeout``, a plain number as it is."""
    return timeout.left() if isinstance(timeout, Timeout) else timeout


def timeout_ms(request: Request) -> Timeout | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "invalid_header", f"{TIMEOUT_HEADER}: not a number") from None
    if not value > 0:
        raise ApiError(400, "invalid_header", f"{TIMEOUT_HEADER}: must be positive")
    return Timeout(value)


REPLICA_GONE = (RayActorError, ActorUnavailableError)  # a model replica died or restarted under the call


async def call(handle_call, timeout: float | None, model: str, retries: int = 1):
    """Await a deployment call, mapping its failures onto the API's status codes.

    ``handle_call``: an awaitable, or a function making one; then a call that fails because its replica went away is
    made again (every model call is idempotent) up to ``retries`` times while the deadline allows, and otherwise
    answered 503 with ``Retry-After``. Leaving early (deadline, or the client went away) cancels the call, which
    frees its sequences in the engine.
    """
    if callable(handle_call):  # (a call already made is the caller's to gate, before making it)
        shed(model)
    door = _doors[model]
    door.entered()
    try:
        return await _call(handle_call, timeout, model, retries, door)
    finally:
        door.left(time.monotonic())


async def _call(handle_call, timeout: float | None, model: str, retries: int, door: Door):
    deadline = None if timeout is None else time.monotonic() + left(timeout) / 1000.0 + 0.05
    attempts = retries + 1 if callable(handle_call) else 1
    for attempt in range(attempts):
        awaitable = handle_call() if callable(handle_call) else handle_call
        try:
            if deadline is None:
                result = await awaitable
            else:
                result = await asyncio.wait_for(awaitable, max(0.0, deadline - time.monotonic()))
            if isinstance(result, Refused):
                raise result.exception()
            door.succeeded(time.monotonic())
            return result
        except DecodingFailed as e:  # the model failed on this request alone; its batch-mates were answered
            raise ApiError(500, "decoding_failed", f"{model}: {e}") from None
        except (DeadlineExceeded, asyncio.TimeoutError, TimeoutError):
            raise ApiError(504, "deadline_exceeded", "the request's deadline passed before it finished") from None
        except Overloaded as e:  # refused by the model (counted there)
            if e.busy:  # no slot soon: learn how much it takes from here
                door.refused(time.monotonic(), door.in_flight - 1)
            raise ApiError(503, "overloaded", f"{model}: {e}; retry later", {"Retry-After": "1"}) from None
        except BackPressureError:  # the deployment's max_queued_requests is reached
            door.refused(time.monotonic(), door.in_flight - 1)
            metrics().inc("inference_rejected_total", model=model, reason="queue_full")
            raise ApiError(503, "overloaded", f"{model}: queue full; retry later", {"Retry-After": "1"}) from None
        except REPLICA_GONE:
            metrics().inc("inference_rejected_total", model=model, reason="replica_unavailable")
            if attempt + 1 < attempts and (deadline is None or time.monotonic() < deadline):
                continue
            raise ApiError(503, "unavailable", f"{model}: the replica serving this request went away; retry later",
                           {"Retry-After": "1"}) from None
    raise AssertionError("unreachable")


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, even when the client disconnects while the
    iterator is suspended at a ``yield`` (Starlette then cancels the sending task and leaves the generator to the
    garbage collector, so its ``finally`` - which frees the sequence and settles the metrics - would run late or
    never)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def attention_pb(pb, a: dict):
    weights = a["weights"]
    grid = a.get("grid") or [0, 0]
    return pb.AttentionMap(rows=len(weights), cols=len(weights[0]) if weights else 0, weights=[w for row in weights for w in row],
                           row_tokens=a["target_tokens"], col_tokens=a.get("source_tokens") or [],
                           grid_rows=grid[0], grid_cols=grid[1])


def refused(request, context) -> bool:
    """A request message gRPC could not parse (``service/grpc_lenient.py``): answer INVALID_ARGUMENT, return True."""
    if isinstance(request, Undecodable):
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details(f"the request message could not be parsed: {request.error}")
        return True
    return False


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(app)
class Ingress:
    def __init__(self, translator: DeploymentHandle, classifier: DeploymentHandle, captioner: DeploymentHandle) -> None:
        self.translator, self.classifier, self.captioner = translator, classifier, captioner
        self._replicas: tuple[float, dict[str, int]] | None = None  # (when, RUNNING replicas per deployment)
        self._replicas_task: asyncio.Future | None = None
        for model in oip.MODELS:  # every model's in-flight series exists (at 0) from the start
            metrics().add_gauge("inference_requests_in_flight", 0, model=model)

    async def _translate(self, texts: list[str], beam_size: int, max_new_tokens: int, timeout: float | None,
                         return_attention: bool = False) -> dict:
        for i, t in enumerate(texts):
            self._check_text(t, f"texts[{i}]")
        try:
            options = DecodingOptions(beam_size=beam_size, max_new_tokens=max_new_tokens)
        except ValueError as e:
            raise ApiError(422, "invalid_field", str(e)) from None
        return await call(lambda: self.translator.translate.remote(texts, options, left(timeout), return_attention), timeout, "translator")

    async def _classify(self, payloads: list[bytes], top_k: int, timeout: float | None) -> list:
        if not 1 <= top_k <= 10:
            raise ApiError(422, "invalid_field", f"top_k must be within 1..10, got {top_k}")
        arrays = self._digits(payloads)
        result = await call(lambda: self._scores(arrays), timeout, "classifier")
        labels = result["labels"]
        return [[{"label": labels[i], "score": float(p[i])} for i in np.argsort(-p)[:top_k]] for p in result["probabilities"]]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001, max_concurrent_batches=4)
    async def _scores(self, requests: list[list[np.ndarray]]) -> list[dict]:
        """Classifier calls that arrive together leave together: one hop to the Classifier per batch of requests,
        not per request (the hop, not the model, is what the classifier path costs: BENCHMARKS.md, front-end)."""
        result = await self.classifier.scores.remote([image for images in requests for image in images])
        out, start = [], 0
        for images in requests:
            out.append({"labels": result["labels"], "probabilities": result["probabilities"][start : start + len(images)]})
            start += len(images)
        return out

    @staticmethod
    def _digits(payloads: list[bytes], field: str = "images") -> list:
        arrays = []
        for i, data in enumerate(payloads):
            try:
                arrays.append(digit_input(data))
            except BadImage as e:
                raise ApiError(413 if "limit" in str(e) else 400, "invalid_image", f"{field}[{i}]: {e}") from None
        return arrays

    @staticmethod
    def _scenes(payloads: list[bytes], field: str = "image") -> list:
        arrays = []
        for i, data in enumerate(payloads):
            try:
                arrays.append(scene_input(data))
            except BadImage as e:
                raise ApiError(413 if "limit" in str(e) else 400, "invalid_image", f"{field}[{i}]: {e}") from None
        return arrays

    # ------------------------------------------------------------------ Open Inference Protocol (service/oip.py)

    async def _oip_infer(self, model: str, tensors: list, params: dict, timeout: float | None) -> list:
        """The three models behind the protocol's tensors; the task API's validation and limits apply."""
        oip.metadata(model)  # 404 for an unknown model
        t = oip.only_input(tensors, model)
        n = len(t.data) if isinstance(t.data, list) else t.data.shape[0]
        if model == "classifier":
            if t.name == "images":
                images = t.data
                if images.ndim != 4 or images.shape[1] != 1:
                    raise oip.ProtocolError(f"images: shape must be [N, 1, H, W], got {list(images.shape)}")
                if max(images.shape[2:]) > MAX_SIDE or min(images.shape[2:]) < 1:
                    raise oip.ProtocolError(f"images: {images.shape[2]}×{images.shape[3]}; sides must be 1..{MAX_SIDE}", 413)
                if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
                    raise oip.ProtocolError("images: values must be finite and within [0, 1]")
                arrays = [digit_array(np.asarray(image[0], dtype=np.float32)) for image in images]
            else:
                arrays = self._digits(t.data, "image_bytes")
            result = await call(lambda: self._scores(arrays), timeout, "classifier")
            probs, labels = result["probabilities"], result["labels"]
            top = [labels[i].encode() for i in probs.argmax(-1)]
            return [oip.Output("probabilities", "FP32", [n, probs.shape[1]], probs), oip.Output("label", "BYTES", [n], top)]
        beam = oip.int_parameter(params, "beam_size", 1, 1, 8)
        if model == "translator":
            max_new = oip.int_parameter(params, "max_new_tokens", 128, 1, 256)
            try:
                texts = [x.decode("utf-8") for x in t.data]
            except UnicodeDecodeError:
                raise oip.ProtocolError("text: elements must be UTF-8") from None
            result = await self._translate(texts, beam, max_new, timeout)
            return [oip.Output("translation", "BYTES", [n], [x.encode() for x in result["translations"]]),
                    oip.Output("tokens", "INT32", [n], np.asarray(result["tokens"], dtype=np.int32))]
        max_new = oip.int_parameter(params, "max_new_tokens", 40, 1, 256)
        options = DecodingOptions(beam_size=beam, max_new_tokens=max_new)
        scenes = self._scenes(t.data)
        result = await call(lambda: self.captioner.caption.remote(scenes, options, left(timeout)), timeout, "captioner")
        return [oip.Output("caption", "BYTES", [n], [x.encode() for x in result["captions"]])]

    async def _model_ready(self, name: str) -> bool:
        """Ready: Serve's controller counts a RUNNING replica of the model, and a replica answers ``ready`` within
        READY_TIMEOUT_S. The controller's count shows a replica that died and is being replaced (a probe then answers at
        once, instead of waiting for the replacement); the call shows one the controller has not yet noticed."""
        handle = {"translator": self.translator, "classifier": self.classifier, "captioner": self.captioner}.get(name)
        if handle is None:
            raise oip.ProtocolError(f"unknown model '{name}'; models: {', '.join(oip.MODELS)}", 404)
        running = await self._running_replicas()
        if running is not None and running.get(handle.deployment_name, 0) == 0:
            return False
        try:
            return bool(await asyncio.wait_for(handle.ready.remote(), READY_TIMEOUT_S))
        except Exception:  # a replica down or too slow
            return False

    async def _running_replicas(self) -> dict[str, int] | None:
        """RUNNING replicas per deployment of this application, as Serve's controller sees them, at most
        REPLICAS_TTL_S old; one fetch at a time however many probes arrive. None when the controller does not
        answer: the replicas keep serving without it, so readiness then rests on the replicas' own answers."""
        if self._replicas is not None and time.monotonic() - self._replicas[0] < REPLICAS_TTL_S:
            return self._replicas[1]
        if self._replicas_task is None or self._replicas_task.done():
            self._replicas_task = asyncio.ensure_future(asyncio.to_thread(self._fetch_running_replicas))
            # a fetch that fails after its probe stopped waiting is still looked at: no "exception never retrieved"
            self._replicas_task.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            counts = await asyncio.wait_for(asyncio.shield(self._replicas_task), READY_TIMEOUT_S)
        except Exception:  # the controller is down, restarting or slow
            return None
        self._replicas = (time.monotonic(), counts)
        return counts

    def _fetch_running_replicas(self) -> dict[str, int]:
        app = serve.status().applications[self.classifier.app_name]  # a blocking call: runs in a thread
        return {name: d.replica_states.get("RUNNING", 0) for name, d in app.deployments.items()}

    @app.get("/v2", tags=["open inference protocol"])
    async def oip_server_metadata(self) -> dict:
        return oip.SERVER

    @app.get("/v2/health/live", tags=["open inference protocol"])
    async def oip_live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open inference protocol"])
    async def oip_ready(self) -> JSONResponse:
        ready = all(await asyncio.gather(*(self._model_ready(m) for m in oip.MODELS)))
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{name}", tags=["open inference protocol"])
    @app.get("/v2/models/{name}/versions/{version}", tags=["open inference protocol"])
    async def oip_model_metadata(self, name: str, version: str | None = None) -> dict:
        oip.check_version(version)
        return oip.metadata(name)

    @app.get("/v2/models/{name}/ready", tags=["open inference protocol"])
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["open inference protocol"])
    async def oip_model_ready(self, name: str, version: str | None = None) -> JSONResponse:
        oip.check_version(version)
        ready = await self._model_ready(name)
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @app.post("/v2/models/{name}/infer", tags=["open inference protocol"])
    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["open inference protocol"])
    async def oip_infer(self, name: str, request: Request, version: str | None = None) -> Response:
        oip.check_version(version)
        oip.metadata(name)
        body, header = await request.body(), request.headers.get("Inference-Header-Content-Length")
        head, tensors = oip.parse_http(body, header)
        params = head.get("parameters") or {}
        if not isinstance(params, dict):
            raise oip.ProtocolError("'parameters' must be an object")
        outputs = await self._oip_infer(name, tensors, params, timeout_ms(request))
        content, headers = oip.http_response(name, head, outputs)
        return Response(content, headers=headers, media_type=headers["content-type"])

    # gRPC inference.GRPCInferenceService (proto/open_inference.proto)

    async def ServerLive(self, request, grpc_context):
        from proto import open_inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.ServerLiveResponse()

        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context):
        from proto import open_inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.ServerReadyResponse()

        return pb.ServerReadyResponse(ready=all(await asyncio.gather(*(self._model_ready(m) for m in oip.MODELS))))

    async def ModelReady(self, request, grpc_context):
        from proto import open_inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.ModelReadyResponse()

        async def work():
            oip.check_version(request.version)
            return pb.ModelReadyResponse(ready=await self._model_ready(request.name))

        return await self._grpc(grpc_context, pb.ModelReadyResponse(), work)

    async def ServerMetadata(self, request, grpc_context):
        from proto import open_inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.ServerMetadataResponse()

        return pb.ServerMetadataResponse(**oip.SERVER)

    async def ModelMetadata(self, request, grpc_context):
        from proto import open_inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.ModelMetadataResponse()

        async def work():
            oip.check_version(request.version)
            meta = oip.metadata(request.name)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

        return await self._grpc(grpc_context, pb.ModelMetadataResponse(), work)

    async def ModelInfer(self, request, grpc_context):
        from proto import open_inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.ModelInferResponse()

        model = request.model_name if request.model_name in oip.MODELS else None

        async def work():
            oip.check_version(request.model_version)
            outputs = await self._oip_infer(request.model_name, oip.parse_grpc(request), oip.grpc_parameters(request.parameters), None)
            return oip.grpc_response(pb, request.model_name, request.id, [o.name for o in request.outputs], outputs)

        return await self._grpc(grpc_context, pb.ModelInferResponse(), work, model, "ModelInfer")

    # gRPC grpc.health.v1.Health: service "" (everything), a gRPC service name, or a model name

    async def _health_status(self, service: str):
        from grpc_health.v1 import health_pb2

        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        if service in oip.MODELS:
            return serving if await self._model_ready(service) else not_serving
        if service in HEALTH_SERVICES:
            ready = all(await asyncio.gather(*(self._model_ready(m) for m in oip.MODELS)))
            return serving if ready else not_serving
        return None

    async def Check(self, request, grpc_context):
        from grpc_health.v1 import health_pb2

        if refused(request, grpc_context):
            return health_pb2.HealthCheckResponse()

        status = await self._health_status(request.service)
        if status is None:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service '{request.service}'")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request, grpc_context):
        """The current status, then every change (checked each second), until the client leaves."""
        if refused(request, grpc_context):
            return
        from grpc_health.v1 import health_pb2

        last = None
        while True:
            status = await self._health_status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(1.0)

    async def _caption(self, data: bytes, beam_size: int, max_new_tokens: int, timeout: float | None,
                       return_attention: bool = False) -> dict:
        try:
            image = scene_input(data)
        except BadImage as e:
            raise ApiError(413 if "limit" in str(e) else 400, "invalid_image", f"image: {e}") from None
        try:
            options = DecodingOptions(beam_size=beam_size, max_new_tokens=max_new_tokens)
        except ValueError as e:
            raise ApiError(422, "invalid_field", str(e)) from None
        return await call(lambda: self.captioner.caption.remote([image], options, left(timeout), return_attention), timeout, "captioner")

    @app.post("/v1/translate", response_model=TranslateResponse, response_model_exclude_none=True)
    async def translate(self, body: TranslateRequest, request: Request) -> dict:
        texts = one_or_many(body.text, body.texts, "text")
        result = await self._translate(texts, body.beam_size, body.max_new_tokens, timeout_ms(request), body.return_attention)
        return {**result, "model": "translator"}

    def _check_text(self, text: str, field: str = "text") -> None:
        if len(text) > MAX_TEXT_CHARS:
            raise ApiError(413, "text_too_long", f"{field}: {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        if not text.strip():
            raise ApiError(400, "empty_text", f"{field}: empty")

    async def _stream(self, text: str, max_new_tokens: int, timeout: float | None, protocol: str, method: str):
        """The translator's token stream as dicts. The first item is awaited before anything is yielded, so refusals
        (bad input, queue full, deadline) raise ``ApiError`` and become a status code; the caller counts those.
        Once the first token is out, this counts the request itself (in flight, duration, code)."""
        self._check_text(text)
        shed("translator")
        stream = self.translator.options(stream=True).translate_stream.remote(text, max_new_tokens, left(timeout))
        try:
            first = await call(stream.__anext__(), timeout, "translator")  # (counted in flight by call meanwhile)
        except BaseException:
            stream.cancel()
            raise
        door = _doors["translator"]
        door.entered()  # a started stream holds its slot until it ends
        started, code = time.monotonic(), "200"
        metrics().add_gauge("inference_requests_in_flight", 1, model="translator")
        try:
            yield first
            async for item in stream:
                yield item
        except (DeadlineExceeded, asyncio.TimeoutError, TimeoutError):
            code = "504"
            raise ApiError(504, "deadline_exceeded", "the request's deadline passed before it finished") from None
        except (asyncio.CancelledError, GeneratorExit):
            code = "499"  # the client went away mid-stream
            raise
        finally:
            stream.cancel()  # frees the sequence in the decode loop if it is still running
            door.left(time.monotonic())
            metrics().add_gauge("inference_requests_in_flight", -1, model="translator")
            record("translator", protocol, method, code, code == "200", time.monotonic() - started)

    @app.post("/v1/translate/stream", response_class=StreamingResponse, responses={
        200: {"content": {"text/event-stream": {}}, "description": 'Server-Sent Events: `data: {"token": str}` per token, '
              'then `data: {"done": true, "translation": str, "tokens": int}`; a failure mid-stream is an `event: error`.'}})
    async def translate_stream(self, body: TranslateStreamRequest, request: Request):
        stream = self._stream(body.text, body.max_new_tokens, timeout_ms(request), "http", "translate_stream")
        first = await stream.__anext__()  # refusals before the first token are plain HTTP errors (counted by _observe)

        async def events():
            yield f"data: {json.dumps(first, ensure_ascii=False)}\n\n"
            try:
                async for item in stream:
                    yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
            except ApiError as e:
                yield f"event: error\ndata: {json.dumps({'error': {'code': e.code, 'message': e.message}})}\n\n"
            finally:
                await stream.aclose()

        return ClosingStreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(self, request: Request) -> dict:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(422, "invalid_field", "image: a file field named 'image' is required")
            payloads, top_k = [await upload.read()], 5
        else:
            try:
                body = ClassifyRequest.model_validate_json(await request.body())
            except ValueError as e:
                raise RequestValidationError(getattr(e, "errors", lambda: [])()) from None
            items = one_or_many(body.image, body.images, "image")
            payloads, top_k = [b64(x, f"images[{i}]") for i, x in enumerate(items)], body.top_k
        predictions = await self._classify(payloads, top_k, timeout_ms(request))
        return {"predictions": predictions, "model": "classifier"}

    @app.post("/v1/caption", response_model=CaptionResponse, response_model_exclude_none=True)
    async def caption(self, body: CaptionRequest, request: Request) -> dict:
        result = await self._caption(b64(body.image, "image"), body.beam_size, body.max_new_tokens, timeout_ms(request),
                                     body.return_attention)
        return {"captions": result["captions"], "model": "captioner", "attention": result.get("attention")}

    # gRPC: inference.v1.Inference (proto/inference.proto). Ray Serve routes each RPC to the method of the
    # same name; errors become INVALID_ARGUMENT / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED, never INTERNAL.

    async def _grpc(self, context, empty, work, model: str | None = None, method: str | None = None):
        """Run one unary RPC: refusals become their status codes (never INTERNAL); a call naming a known model is
        counted in the metrics (in flight, duration, code)."""
        started, code = time.monotonic(), grpc.StatusCode.OK
        tracked = model in oip.MODELS and method is not None
        if tracked:
            metrics().add_gauge("inference_requests_in_flight", 1, model=model)
        try:
            return await work()
        except oip.ProtocolError as e:
            code = grpc.StatusCode.NOT_FOUND if e.status == 404 else GRPC_CODES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT)
            context.set_code(code)
            context.set_details(str(e))
            return empty
        except ApiError as e:
            code = GRPC_CODES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT)
            context.set_code(code)
            context.set_details(e.message)
            return empty
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            if tracked:
                metrics().add_gauge("inference_requests_in_flight", -1, model=model)
                record(model, "grpc", method, code.name, code == grpc.StatusCode.OK, time.monotonic() - started)

    async def Translate(self, request, grpc_context):
        from proto import inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.TranslateResponse()

        async def work():
            texts = counted(list(request.texts), "texts")
            beam = request.beam_size if request.HasField("beam_size") else 1
            max_new = request.max_new_tokens if request.HasField("max_new_tokens") else 128
            result = await self._translate(texts, beam, max_new, None, request.return_attention)
            return pb.TranslateResponse(translations=result["translations"], tokens=result["tokens"], model="translator",
                                        attention=[attention_pb(pb, a) for a in result.get("attention", [])])

        return await self._grpc(grpc_context, pb.TranslateResponse(), work, "translator", "Translate")

    async def TranslateStream(self, request, grpc_context):
        if refused(request, grpc_context):
            return
        from proto import inference_pb2 as pb

        started = time.monotonic()
        try:
            if len(request.texts) != 1:
                raise ApiError(422, "invalid_field", f"texts: a stream translates exactly one text, got {len(request.texts)}")
            if request.HasField("beam_size") and request.beam_size != 1:
                raise ApiError(422, "invalid_field", "beam_size: streaming decodes greedily (1)")
            if request.return_attention:
                raise ApiError(422, "invalid_field", "return_attention: not available on a stream")
            max_new = request.max_new_tokens if request.HasField("max_new_tokens") else 128
            if not 1 <= max_new <= 256:
                raise ApiError(422, "invalid_field", f"max_new_tokens must be within 1..256, got {max_new}")
            stream = self._stream(request.texts[0], max_new, None, "grpc", "TranslateStream")
            first = await stream.__anext__()
        except ApiError as e:  # refused before the stream started
            code = GRPC_CODES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_code(code)
            grpc_context.set_details(e.message)
            record("translator", "grpc", "TranslateStream", code.name, False, time.monotonic() - started)
            # A stream that yielded nothing carries its status only on an exception (Serve keeps the code set here).
            raise StreamRefused(e.message) from None
        try:
            item = first
            while True:
                yield pb.TranslateChunk(done=True, translation=item["translation"]) if item.get("done") else pb.TranslateChunk(token=item["token"])
                item = await stream.__anext__()
        except StopAsyncIteration:
            pass
        except ApiError as e:
            grpc_context.set_code(GRPC_CODES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT))
            grpc_context.set_details(e.message)
            raise StreamRefused(e.message) from None
        finally:
            await stream.aclose()

    async def Classify(self, request, grpc_context):
        from proto import inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.ClassifyResponse()

        async def work():
            images = counted(list(request.images), "images")
            top_k = request.top_k if request.HasField("top_k") else 5
            preds = await self._classify(images, top_k, None)
            return pb.ClassifyResponse(
                predictions=[pb.Predictions(predictions=[pb.Prediction(**p) for p in row]) for row in preds], model="classifier")

        return await self._grpc(grpc_context, pb.ClassifyResponse(), work, "classifier", "Classify")

    async def Caption(self, request, grpc_context):
        from proto import inference_pb2 as pb

        if refused(request, grpc_context):
            return pb.CaptionResponse()

        async def work():
            beam = request.beam_size if request.HasField("beam_size") else 1
            max_new = request.max_new_tokens if request.HasField("max_new_tokens") else 40
            result = await self._caption(request.image, beam, max_new, None, request.return_attention)
            return pb.CaptionResponse(captions=result["captions"], model="captioner",
                                      attention=[attention_pb(pb, a) for a in result.get("attention", [])])

        return await self._grpc(grpc_context, pb.CaptionResponse(), work, "captioner", "Caption")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self) -> JSONResponse:
        ok = dict(zip(oip.MODELS, await asyncio.gather(*(self._model_ready(m) for m in oip.MODELS))))
        ready = all(ok.values())
        return JSONResponse({"ready": ready, "models": ok}, status_code=200 if ready else 503)


class AppArgs(BaseModel):
    """``args`` of the application in the serve config."""

    model_config = ConfigDict(extra="forbid")
    repository: str = Field(default_factory=default_repository, description="the ONNX model repository (python -m export)")


def build_app(args: AppArgs):
    """The application graph: the ingress bound to one deployment per model (``import_path`` of the serve config).

    Deployment options (batching, queue bounds, GPUs) come from the serve config, not from here.
    """
    from service.deployments import Captioner, Classifier, Translator

    repository = str(Path(args.repository).resolve())
    return Ingress.bind(Translator.bind(repository), Classifier.bind(repository), Captioner.bind(repository))
