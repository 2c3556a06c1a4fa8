"""gRPC fuzzing: hypothesis-generated messages for every RPC of both services the gateway serves.

Generated: empty and oversized lists, empty, long and odd Unicode texts, bytes that are no image, truncated PNGs,
zero and huge limits, Open Inference Protocol tensors of the wrong name, datatype and shape, shapes that disagree
with their data, NaN and ±Inf in FP32 tensors, and (as raw wire bytes, which protobuf's Python encoder refuses to
produce) invalid UTF-8 in string fields. Every answer is OK or one of INVALID_ARGUMENT / RESOURCE_EXHAUSTED /
DEADLINE_EXCEEDED (NOT_FOUND only for a model name that does not exist), and every model still answers afterwards.
Each call has a 3 s deadline; examples per RPC are bounded (``FUZZ_EXAMPLES``), derandomized so failures reproduce.
"""

import functools
import math
import os

import grpc
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import inference_pb2 as pb
from proto import inference_pb2_grpc
from service.images import encode_png

# The Open Inference Protocol messages from tritonclient: the same wire format as proto/open_inference.proto
# (tests/test_proto.py checks), and one process cannot load both into protobuf's pool (same package).
pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra: `make test` installs it")
from tritonclient.grpc import service_pb2 as oip_pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as open_inference_pb2_grpc  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
DEADLINE_S = 3.0

@functools.cache
def a_png() -> bytes:
    from sklearn.datasets import load_digits

    return encode_png((load_digits().images[0] * 16).clip(0, 255).astype(np.uint8))



images = st.one_of(
    st.binary(max_size=64),  # not an image
    st.integers(0, 60).map(lambda k: a_png()[:k]),  # truncated PNG
    st.just(a_png()),
    st.just(b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 2**20)),  # 2 MB that start like a PNG
)
texts = st.one_of(st.text(max_size=40), st.just(""), st.text(min_size=500, max_size=600),
                  st.sampled_from(["I have three cats.", "\u202e\u0000\ufeff", "🙂" * 300, "a" * 5000]))
limits = st.one_of(st.none(), st.sampled_from([0, 1, 2, 8, 9, 255, 256, 257, 2**31, 2**32 - 1]))


def outcome(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def allowed(code: grpc.StatusCode, not_found_ok: bool = False) -> bool:
    return code == grpc.StatusCode.OK or code in CLIENT_ERRORS or (not_found_ok and code == grpc.StatusCode.NOT_FOUND)


@pytest.fixture(scope="module")
def channel(service):
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}", options=[("grpc.max_send_message_length", 64 * 2**20)]) as ch:
        yield ch


def optional(message, **fields):
    return message(**{k: v for k, v in fields.items() if v is not None})


@FUZZ
@given(texts=st.lists(texts, max_size=70), beam=limits, max_new=limits, attention=st.booleans())
def test_translate_and_its_stream(channel, texts, beam, max_new, attention):
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = optional(pb.TranslateRequest, texts=texts, beam_size=beam, max_new_tokens=max_new, return_attention=attention)
    code = outcome(lambda: stub.Translate(request, timeout=DEADLINE_S))
    assert allowed(code), code
    code = outcome(lambda: list(stub.TranslateStream(request, timeout=DEADLINE_S)))
    assert allowed(code), code


@FUZZ
@given(payloads=st.lists(images, max_size=66), top_k=limits)
def test_classify(channel, payloads, top_k):
    stub = inference_pb2_grpc.InferenceStub(channel)
    code = outcome(lambda: stub.Classify(optional(pb.ClassifyRequest, images=payloads, top_k=top_k), timeout=DEADLINE_S))
    assert allowed(code), code


@FUZZ
@given(image=images, beam=limits, max_new=limits, attention=st.booleans())
def test_caption(channel, image, beam, max_new, attention):
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = optional(pb.CaptionRequest, image=image, beam_size=beam, max_new_tokens=max_new, return_attention=attention)
    assert allowed(outcome(lambda: stub.Caption(request, timeout=DEADLINE_S)))


DATATYPES = ["FP32", "FP64", "FP16", "INT32", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "BF16", "nonsense", ""]
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([math.nan, math.inf, -math.inf, 0.5]))


@st.composite
def infer_requests(draw):
    request = oip_pb.ModelInferRequest(model_name=draw(st.sampled_from(["classifier", "translator", "captioner", "nope", ""])),
                                       model_version=draw(st.sampled_from(["", "1", "2"])))
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(name=draw(st.sampled_from(["images", "image_bytes", "text", "image", "x", ""])),
                                    datatype=draw(st.sampled_from(DATATYPES)),
                                    shape=draw(st.lists(st.integers(-2, 70), max_size=5)))
        kind = draw(st.sampled_from(["fp32", "bytes", "int", "raw", "none"]))
        if kind == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(floats, max_size=300)))
        elif kind == "bytes":
            tensor.contents.bytes_contents.extend(draw(st.lists(st.one_of(images, texts.map(str.encode)), max_size=4)))
        elif kind == "int":
            tensor.contents.int_contents.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=10)))
        elif kind == "raw":
            request.raw_input_contents.append(draw(st.binary(max_size=300)))
    for _ in range(draw(st.integers(0, 2))):
        request.outputs.add(name=draw(st.sampled_from(["probabilities", "label", "translation", "caption", "zzz"])))
    for key in draw(st.lists(st.sampled_from(["beam_size", "max_new_tokens", "binary_data_output"]), max_size=2)):
        request.parameters[key].int64_param = draw(st.integers(-5, 2**40))
    return request


@FUZZ
@given(request=infer_requests())
def test_model_infer(channel, request):
    stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    known = request.model_name in ("classifier", "translator", "captioner") and request.model_version in ("", "1")
    assert allowed(outcome(lambda: stub.ModelInfer(request, timeout=DEADLINE_S)), not_found_ok=not known)


@FUZZ
@given(name=st.text(max_size=30), version=st.text(max_size=5))
def test_model_ready_and_metadata(channel, name, version):
    stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    for rpc in (stub.ModelReady, stub.ModelMetadata):
        request = (oip_pb.ModelReadyRequest if rpc is stub.ModelReady else oip_pb.ModelMetadataRequest)(name=name, version=version)
        assert allowed(outcome(lambda rpc=rpc, request=request: rpc(request, timeout=DEADLINE_S)), not_found_ok=True)


def wire_string(field: int, data: bytes) -> bytes:
    """A length-delimited protobuf field written by hand, so ``data`` may be invalid UTF-8."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    return varint(field << 3 | 2) + varint(len(data)) + data


@pytest.mark.parametrize("method,raw", [
    ("/inference.v1.Inference/Translate", wire_string(1, b"caf\xc3 \xff\xfe")),
    ("/inference.v1.Inference/Translate", b"\x0a\x05abc"),  # truncated: the length says 5, 3 bytes follow
    ("/inference.GRPCInferenceService/ModelInfer", wire_string(1, b"\xff\xfeclassifier")),
    ("/inference.v1.Inference/Classify", b"\xff" * 7),
])
def test_undecodable_messages_are_invalid_argument(channel, method, raw):
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    code = outcome(lambda: call(raw, timeout=DEADLINE_S))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, code


def test_every_model_still_answers(service, channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    assert stub.Translate(pb.TranslateRequest(texts=["I have three cats."]), timeout=60).translations[0]
    assert stub.Classify(pb.ClassifyRequest(images=[a_png()]), timeout=60).predictions[0].predictions
    assert stub.Caption(pb.CaptionRequest(image=encode_png(np.zeros((32, 32, 3), np.uint8))), timeout=60).captions[0] is not None
    assert requests.get(f"{service.url}/readyz", timeout=30).status_code == 200
