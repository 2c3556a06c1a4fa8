"""HTTP: the FastAPI application (every HTTP route, documented at ``/docs`` and ``/openapi.json``) and the task routes.

(No ``from __future__ import annotations``: FastAPI reads the request and response models' real classes.)

Handlers are lean: the body is read once and validated by its pydantic model's compiled validator (types only), the
contract checks ranges and limits once (``service.contract``), and answers are written as JSON bytes directly (no
``response_model`` re-validation; the models document the routes). Every error is a ``ServiceError`` turned into
``{"error": {"code", "message"}}`` (``{"error": message}`` under ``/v2``) with its status and headers.
"""

import json

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import contract, errors
from service.contract import BEAM_SIZE, CAPTION_MAX_NEW_TOKENS, TIMEOUT_HEADER, TOP_K, TRANSLATE_MAX_NEW_TOKENS, Deadline
from service.errors import ServiceError
from service.front import health, models, oip
from service.front.observe import Observed
from service.front.offload import built


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


def ranged(r: contract.Range, description: str):
    """An optional integer field documented with its range; the contract checks it (once)."""
    return Field(None, description=f"{description} ({r.low}-{r.high}, default {r.default})",
                 json_schema_extra={"minimum": r.low, "maximum": r.high})


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "3", 2.0, true are not integers; "yes" is not a flag
    text: str | None = Field(None, description=f"one text (≤ {contract.MAX_TEXT_CHARS} characters)")
    texts: list[str] | None = Field(None, description=f"or several (≤ {contract.MAX_ITEMS})")
    beam_size: int | None = ranged(BEAM_SIZE, "1: greedy")
    max_new_tokens: int | None = ranged(TRANSLATE_MAX_NEW_TOKENS, "beyond the decoder's 256 positions: clamped")
    return_attention: bool = False
    model: str | None = Field(None, description="a translation model of the repository (default: the shipped translator)")


class TranslateStreamRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "3", 2.0, true are not integers; "yes" is not a flag
    text: str
    max_new_tokens: int | None = ranged(TRANSLATE_MAX_NEW_TOKENS, "tokens")
    beam_size: int | None = Field(None, description="streaming decodes greedily: 1 only",
                                  json_schema_extra={"minimum": 1, "maximum": 1})
    return_attention: bool = Field(False, description="false only: a stream carries no attention maps")
    model: str | None = Field(None, description="a translation model of the repository (default: the shipped translator)")


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
    model_config = ConfigDict(extra="forbid", strict=True)  # "3", 2.0, true are not integers; "yes" is not a flag
    image: str | None = Field(None, description="base64 of a PNG/JPEG/BMP picture")
    images: list[str] | None = Field(None, description=f"or several (≤ {contract.MAX_ITEMS})")
    top_k: int | None = ranged(TOP_K, "labels per image")
    model: str | None = Field(None, description="a classification model of the repository (default: the shipped digit classifier)")


class Prediction(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    predictions: list[list[Prediction]]
    model: str = "classifier"


class CaptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "3", 2.0, true are not integers; "yes" is not a flag
    image: str = Field(description="base64 of a PNG/JPEG scene")
    beam_size: int | None = ranged(BEAM_SIZE, "1: greedy")
    max_new_tokens: int | None = ranged(CAPTION_MAX_NEW_TOKENS, "beyond the decoder's 48 positions: clamped")
    return_attention: bool = False
    model: str | None = Field(None, description="a captioning model of the repository (default: the shipped digit-scene captioner)")


class CaptionResponse(BaseModel):
    captions: list[str]
    model: str = "captioner"
    attention: list[AttentionMap] | None = None


def documented(request_model: type[BaseModel], response_model: type[BaseModel] | None = None, **more) -> dict:
    """Route options documenting a JSON body the handler parses itself (``parse``) and the answer's model."""
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": request_model.model_json_schema()}}}}
    responses = {200: {"model": response_model}} if response_model else {}
    return {"openapi_extra": extra, "responses": responses, **more}


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as e:
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid" or (first.get("type") == "model_type" and not first.get("loc")):
            raise errors.invalid("invalid_json", f"request body is not a JSON object: {first.get('msg', '')}") from None
        field = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise errors.out_of_range(f"{field}: {first.get('msg', 'invalid')}") from None


def answer(payload: dict) -> Response:
    return Response(json.dumps(payload, ensure_ascii=False).encode(), media_type="application/json")


def deadline(request: Request) -> Deadline | None:
    return Deadline.from_header(request.headers.get(TIMEOUT_HEADER))


@app.exception_handler(ServiceError)
async def _service_error(request: Request, e: ServiceError) -> Response:
    protocol = "oip" if request.url.path.startswith("/v2") else "task"
    return Response(e.body(protocol), status_code=e.status, headers=e.headers, media_type="application/json")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (an unknown path, a wrong method) in the API's error shape: the Open Inference
    Protocol's ``{"error": message}`` under ``/v2``, the task API's elsewhere."""
    code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, f"http_{e.status_code}")
    error = str(e.detail) if request.url.path.startswith("/v2") else {"code": code, "message": str(e.detail)}
    return JSONResponse({"error": error}, status_code=e.status_code, headers=getattr(e, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0] if e.errors() else {}
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return JSONResponse({"error": {"code": "invalid_field", "message": f"{field}: {first.get('msg', 'invalid')}"}}, status_code=422)


@app.post("/v1/translate", **documented(TranslateRequest, TranslateResponse))
async def translate(request: Request) -> Response:
    body = parse(TranslateRequest, await request.body())
    job = models().contract.translate(contract.one_or_many(body.text, body.texts, "text"), beam_size=body.beam_size,
                                      max_new_tokens=body.max_new_tokens, return_attention=body.return_attention,
                                      model=body.model, deadline=deadline(request),
                                      field="texts" if body.texts is not None else "text")  # errors name what was sent
    if (observed := request.scope.get("observed")) is not None:
        observed.attribute(job.model)
    return answer({**await models().host(job.model).translate(job), "model": job.model})


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, even when the client disconnects while the iterator
    is suspended at a ``yield`` (Starlette then cancels the sending task and leaves the generator to the garbage
    collector, so its ``finally``, which frees the sequence, would run late or never)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


@app.post("/v1/translate/stream", response_class=StreamingResponse, **documented(TranslateStreamRequest, None, responses={
    200: {"content": {"text/event-stream": {}}, "description": 'Server-Sent Events: `data: {"token": str}` per token, '
          'then `data: {"done": true, "translation": str, "tokens": int}`; a failure mid-stream is an `event: error`.'}}))
async def translate_stream(request: Request):
    body = parse(TranslateStreamRequest, await request.body())
    job = models().contract.translate([body.text], beam_size=body.beam_size, max_new_tokens=body.max_new_tokens,
                                      return_attention=body.return_attention, model=body.model,
                                      deadline=deadline(request), stream=True, field="text")
    observed: Observed | None = request.scope.get("observed")
    if observed is not None:
        observed.attribute(job.model)
    stream = models().host(job.model).stream(job)
    first = await stream.__anext__()  # a refusal before the first token is a plain HTTP error

    async def events():
        yield f"data: {json.dumps(first, ensure_ascii=False)}\n\n"
        try:
            async for item in stream:
                yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
        except ServiceError as e:
            if observed is not None:
                observed.code = str(e.status)
            yield f"event: error\ndata: {json.dumps({'error': {'code': e.code, 'message': e.message}})}\n\n"
        except BaseException:
            if observed is not None:
                observed.code = "499"  # the client went away mid-stream
            raise
        finally:
            await stream.aclose()

    return ClosingStreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _classify_answer(job, probabilities) -> dict:
    labels = models().host(job.model).labels
    top = (-probabilities).argsort(-1)[:, : job.top_k]
    return {"predictions": [[{"label": labels[i], "score": float(p[i])} for i in row] for p, row in zip(probabilities, top)],
            "model": job.model}


def form_fields(form) -> tuple:
    """A multipart classify request's fields: the file ``image`` (required), and text fields ``top_k`` (a decimal
    integer) and ``model``, as in the JSON form; any other field is refused by name, as the JSON form refuses it."""
    if unknown := sorted(set(form.keys()) - {"image", "top_k", "model"}):
        raise errors.out_of_range(f"{unknown[0]}: not a field of this request (image, top_k, model)")
    upload, model, top_k = form.get("image"), form.get("model"), form.get("top_k")
    if upload is None or isinstance(upload, str):
        raise errors.out_of_range("image: a file field named 'image' is required")
    if model is not None and not isinstance(model, str) or top_k is not None and not isinstance(top_k, str):
        raise errors.out_of_range("top_k and model: text fields, not files")
    if top_k is not None:
        if not top_k.strip().isdecimal():
            raise errors.out_of_range(f"top_k must be an integer within {TOP_K.low}..{TOP_K.high}, got {top_k!r}")
        top_k = int(top_k)
    return upload, model, top_k


@app.post("/v1/classify", **documented(ClassifyRequest, ClassifyResponse))
async def classify(request: Request) -> Response:
    """JSON (base64 images), or ``multipart/form-data`` with a file field ``image``."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        try:
            upload, model, top_k = form_fields(form)
            job = await built(models().contract.classify, [await upload.read()], top_k=top_k, model=model,
                              deadline=deadline(request), field="image")
        finally:
            await form.close()
    else:
        body = parse(ClassifyRequest, await request.body())
        items = contract.one_or_many(body.image, body.images, "image")
        payloads = [contract.b64(x, f"images[{i}]") for i, x in enumerate(items)]
        job = await built(models().contract.classify, payloads, top_k=body.top_k, model=body.model, deadline=deadline(request))
    if (observed := request.scope.get("observed")) is not None:
        observed.attribute(job.model)
    return answer(_classify_answer(job, await models().host(job.model).probabilities(job)))


@app.post("/v1/caption", **documented(CaptionRequest, CaptionResponse))
async def caption(request: Request) -> Response:
    body = parse(CaptionRequest, await request.body())
    job = await built(models().contract.caption, [contract.b64(body.image, "image")], beam_size=body.beam_size,
                      max_new_tokens=body.max_new_tokens, return_attention=body.return_attention,
                      model=body.model, deadline=deadline(request))
    if (observed := request.scope.get("observed")) is not None:
        observed.attribute(job.model)
    result = await models().host(job.model).caption(job)
    out = {"captions": result["captions"], "model": job.model}
    if "attention" in result:
        out["attention"] = result["attention"]
    return answer(out)


ROUTES = {"/v1/translate": ("translator", "translate"), "/v1/translate/stream": ("translator", "translate_stream"),
          "/v1/classify": ("classifier", "classify"), "/v1/caption": ("captioner", "caption")}


FAST = {"/v1/translate": translate, "/v1/classify": classify, "/v1/caption": caption}  # POST, answered directly


def fast_endpoint(scope):
    """The handler of a unary inference request (``POST`` to a task route or an OIP infer route), called directly
    with a plain Starlette ``Request``: FastAPI's routing, dependency solving and exception middleware cost about a
    third of the replica's CPU per request (py-spy, classifier over OIP at 570 req/s) and add nothing these handlers
    use. Streams and everything else go through FastAPI as declared."""
    if scope["method"] != "POST":
        return None
    path = scope["path"]
    if path in FAST:
        return FAST[path]
    match = oip.INFER.match(path)
    if match is None:
        return None
    version = match.group(2)
    return lambda request: oip.http_infer(match.group(1), request, version)


class ObserveMiddleware:
    """Request metrics of every inference route (``service.front.observe``), and the fast path of unary inference
    requests (``fast_endpoint``), as a plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` runs each request in
    an extra task group: profiled, it was the ingress's largest cost)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = ROUTES.get(scope["path"]) or oip.infer_route(scope["path"])
        if route is None:
            return await self.app(scope, receive, send)

        with Observed(route[0], "http", route[1]) as observed:
            scope["observed"] = observed

            async def observed_send(message) -> None:
                if message["type"] == "http.response.start":
                    observed.code = str(message["status"])
                await send(message)

            endpoint = fast_endpoint(scope)
            if endpoint is None:
                return await self.app(scope, receive, observed_send)
            request = Request(scope, receive)
            try:
                response = await endpoint(request)
            except ServiceError as e:
                response = await _service_error(request, e)
            except StarletteHTTPException as e:  # Starlette's own refusals (a multipart body it cannot parse)
                response = await _http_error(request, e)
            await response(scope, receive, observed_send)


app.add_middleware(ObserveMiddleware)
app.include_router(oip.router)
app.include_router(health.router)
