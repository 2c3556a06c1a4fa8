"""The task gRPC service ``inference.v1.Inference`` (``proto/inference.proto``), and how every unary RPC of the
service answers a refusal: the ``ServiceError``'s kind becomes its status code (INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED; INTERNAL only for a model run that failed), never a traceback.
"""

from __future__ import annotations

import grpc

from service.contract import DEFAULT_MODEL, Deadline
from service.errors import ServiceError
from service.front import models
from service.front.observe import Observed
from service.front.offload import built
from service.grpc_lenient import Arrived, Undecodable


class StreamRefused(Exception):
    """Ends a gRPC stream whose status code is already set on its context (a stream that yielded nothing carries its
    status only on an exception; Serve keeps the code set here)."""


def opened(request, context):
    """A call's request message and its deadline (``service/grpc_lenient.py``: the message arrives wrapped with
    what the call's deadline left). A message gRPC could not parse is answered INVALID_ARGUMENT here, and comes back
    as None."""
    left = None
    if isinstance(request, Arrived):
        request, left = request.message, request.left_s()
    if isinstance(request, Undecodable):
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details(f"the request message could not be parsed: {request.error}")
        return None, None
    return request, None if left is None else Deadline(left)


def refuse(context, e: ServiceError) -> str:
    code = getattr(grpc.StatusCode, e.kind.grpc_name)
    context.set_code(code)
    context.set_details(e.message)
    return code.name


async def unary(context, empty, work, model: str | None = None, method: str | None = None):
    """Run one unary RPC; a call naming a known model is counted in the request metrics."""
    if model is None or method is None:
        try:
            return await work()
        except ServiceError as e:
            refuse(context, e)
            return empty
    with Observed(model, "grpc", method) as observed:
        try:
            return await work()
        except ServiceError as e:
            observed.code = refuse(context, e)
            return empty


def _field(request, name: str):
    return getattr(request, name) if request.HasField(name) else None


def _attention(pb, a: dict):
    weights, grid = a["weights"], a.get("grid") or [0, 0]
    return pb.AttentionMap(rows=len(weights), cols=len(weights[0]) if weights else 0, weights=[w for row in weights for w in row],
                           row_tokens=a["target_tokens"], col_tokens=a.get("source_tokens") or [],
                           grid_rows=grid[0], grid_cols=grid[1])


def _label(model, task: str) -> str:
    """The metrics' model label for a request that names ``model``: its name if it is a model of ``task`` here,
    else the shipped model's (an unknown name is refused, and must not become a label)."""
    shipped = DEFAULT_MODEL[task]
    known = models().contract.models.get(model or shipped)
    return model if model is not None and known is not None and known.task == task else shipped


async def Translate(pb, request, context, deadline: Deadline | None = None):
    asked = _field(request, "model")

    async def work():
        job = models().contract.translate(list(request.texts), beam_size=_field(request, "beam_size"),
                                          max_new_tokens=_field(request, "max_new_tokens"),
                                          return_attention=request.return_attention, model=asked, deadline=deadline)
        result = await models().host(job.model).translate(job)
        return pb.TranslateResponse(translations=result["translations"], tokens=result["tokens"], model=job.model,
                                    attention=[_attention(pb, a) for a in result.get("attention", [])])

    return await unary(context, pb.TranslateResponse(), work, _label(asked, "translation"), "Translate")


async def TranslateStream(pb, request, context, deadline: Deadline | None = None):
    asked = _field(request, "model")
    with Observed(_label(asked, "translation"), "grpc", "TranslateStream") as observed:
        try:
            job = models().contract.translate(list(request.texts), beam_size=_field(request, "beam_size"),
                                              max_new_tokens=_field(request, "max_new_tokens"),
                                              return_attention=request.return_attention or None, stream=True, model=asked,
                                              deadline=deadline)
            stream = models().host(job.model).stream(job)
            item = await stream.__anext__()
        except ServiceError as e:  # refused before the stream started
            observed.code = refuse(context, e)
            raise StreamRefused(e.message) from None
        try:
            while True:
                yield pb.TranslateChunk(done=True, translation=item["translation"]) if item.get("done") else pb.TranslateChunk(token=item["token"])
                item = await stream.__anext__()
        except StopAsyncIteration:
            pass
        except ServiceError as e:
            observed.code = refuse(context, e)
            raise StreamRefused(e.message) from None
        finally:
            await stream.aclose()


async def Classify(pb, request, context, deadline: Deadline | None = None):
    asked = _field(request, "model")
    label = _label(asked, "classification")

    async def work():
        job = await built(models().contract.classify, list(request.images), top_k=_field(request, "top_k"), model=asked,
                          deadline=deadline)
        host = models().host(job.model)
        probs = await host.probabilities(job)
        top = (-probs).argsort(-1)[:, : job.top_k]
        return pb.ClassifyResponse(model=job.model, predictions=[
            pb.Predictions(predictions=[pb.Prediction(label=host.labels[i], score=float(p[i])) for i in row]) for p, row in zip(probs, top)])

    return await unary(context, pb.ClassifyResponse(), work, label, "Classify")


async def Caption(pb, request, context, deadline: Deadline | None = None):
    asked = _field(request, "model")
    label = _label(asked, "captioning")

    async def work():
        job = await built(models().contract.caption, [request.image], beam_size=_field(request, "beam_size"),
                          max_new_tokens=_field(request, "max_new_tokens"),
                          return_attention=request.return_attention, model=asked, deadline=deadline)
        result = await models().host(job.model).caption(job)
        return pb.CaptionResponse(captions=result["captions"], model=job.model,
                                  attention=[_attention(pb, a) for a in result.get("attention", [])])

    return await unary(context, pb.CaptionResponse(), work, label, "Caption")
