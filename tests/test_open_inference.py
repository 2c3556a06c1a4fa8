"""The Open Inference Protocol, driven by the real tritonclient (HTTP and gRPC), unchanged; answers equal the task API's."""

import base64
import json

import numpy as np
import pytest
import requests

from models.data import digits as D
from service import oip as codec
from service.errors import ServiceError
from service.images import encode_png

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra: `make test` installs it")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra: `make test` installs it")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = ("classifier", "translator", "captioner")


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request, service):
    if request.param == "http":
        c = httpclient.InferenceServerClient(url=service.url.removeprefix("http://"), network_timeout=120)
    else:
        c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{service.grpc_port}")
    yield request.param, c
    c.close()


def lib(kind):
    return httpclient if kind == "http" else grpcclient


def test_health_and_metadata(client):
    kind, c = client
    assert c.is_server_live() and c.is_server_ready()
    server = c.get_server_metadata()
    name = server["name"] if kind == "http" else server.name
    assert name == "attention-serving"
    for model in MODELS:
        assert c.is_model_ready(model) and c.is_model_ready(model, "1")
        meta = c.get_model_metadata(model)
        if kind == "grpc":
            meta = {"name": meta.name, "versions": list(meta.versions), "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
                    "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs]}
        assert meta["name"] == model and meta["versions"] == ["1"]
    meta = c.get_model_metadata("classifier")
    inputs = meta["inputs"] if kind == "http" else [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]
    assert inputs == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, -1, -1]},
                      {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}]
    with pytest.raises(InferenceServerException):
        c.get_model_metadata("resnet50")
    assert not _ready_or_error(c, "resnet50")


def _ready_or_error(c, name) -> bool:
    try:
        return bool(c.is_model_ready(name))
    except InferenceServerException:
        return False


def task_classify(url, pngs):
    body = {"images": [base64.b64encode(p).decode() for p in pngs], "top_k": 10}
    preds = requests.post(url + "/v1/classify", json=body).json()["predictions"]
    probs = np.zeros((len(preds), 10), dtype=np.float32)
    for i, row in enumerate(preds):
        for p in row:
            probs[i, int(p["label"])] = p["score"]
    return probs


def test_classifier_fp32_and_bytes_equal_the_task_api(client, url):
    kind, c = client
    test = D.digit_splits()["test"]
    pixels = np.round(test.images[:12] * 255)  # what a PNG holds
    pngs = [encode_png(p) for p in pixels]
    expected = task_classify(url, pngs)
    L = lib(kind)

    images = L.InferInput("images", [12, 1, 8, 8], "FP32")
    images.set_data_from_numpy((pixels / 255).astype(np.float32)[:, None])
    result = c.infer("classifier", [images], outputs=[L.InferRequestedOutput("probabilities"), L.InferRequestedOutput("label")])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    labels = [x.decode() for x in result.as_numpy("label")]
    assert labels == [str(i) for i in expected.argmax(1)]
    assert sum(l == str(t) for l, t in zip(labels, test.labels[:12])) >= 11

    blobs = L.InferInput("image_bytes", [12], "BYTES")
    blobs.set_data_from_numpy(np.array(pngs, dtype=np.object_))
    result = c.infer("classifier", [blobs])  # no outputs named: all of them
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)

    big = np.kron(255 - pixels[:2], np.ones((8, 8)))  # 64×64 dark-on-light as FP32: preprocessed like a picture
    images = L.InferInput("images", [2, 1, 64, 64], "FP32")
    images.set_data_from_numpy((big / 255).astype(np.float32)[:, None])
    labels = [x.decode() for x in c.infer("classifier", [images]).as_numpy("label")]
    assert labels == [str(t) for t in test.labels[:2]]


def test_translator_equals_the_task_api(client, url):
    kind, c = client
    L = lib(kind)
    texts = ["Friday, March 14, 2025", "She speaks German.", "twenty-one"]
    for params, body in (({}, {}), ({"beam_size": 4, "max_new_tokens": 64}, {"beam_size": 4, "max_new_tokens": 64})):
        expected = requests.post(url + "/v1/translate", json={"texts": texts, **body}).json()
        text = L.InferInput("text", [3], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        result = c.infer("translator", [text], parameters=params or None)
        assert [x.decode() for x in result.as_numpy("translation")] == expected["translations"]
        assert result.as_numpy("tokens").tolist() == expected["tokens"]


def test_captioner_equals_the_task_api(client, url):
    kind, c = client
    L = lib(kind)
    canvases, captions, _ = D.make_scenes(D.digit_splits()["test"], 3, seed=11)
    pngs = [encode_png(x) for x in canvases]
    expected = [requests.post(url + "/v1/caption", json={"image": base64.b64encode(p).decode()}).json()["captions"][0] for p in pngs]
    image = L.InferInput("image", [3], "BYTES")
    image.set_data_from_numpy(np.array(pngs, dtype=np.object_))
    result = c.infer("captioner", [image], outputs=[L.InferRequestedOutput("caption")])
    assert [x.decode() for x in result.as_numpy("caption")] == expected == captions


@pytest.mark.parametrize("case", ["unknown model", "wrong datatype", "unknown input", "nan", "out of range", "bad image",
                                  "bad utf-8", "too many", "bad parameter"])
def test_bad_requests_are_refused_clearly(client, case):
    kind, c = client
    L = lib(kind)
    model, inputs, params = "classifier", [], None
    if case == "unknown model":
        model = "resnet50"
        x = L.InferInput("images", [1, 1, 8, 8], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    elif case == "wrong datatype":
        x = L.InferInput("images", [1, 1, 8, 8], "INT32")
        x.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.int32))
    elif case == "unknown input":
        x = L.InferInput("pixels", [1, 1, 8, 8], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
    elif case in ("nan", "out of range"):
        a = np.zeros((1, 1, 8, 8), np.float32)
        a[0, 0, 3, 3] = np.nan if case == "nan" else 7.0
        x = L.InferInput("images", [1, 1, 8, 8], "FP32")
        x.set_data_from_numpy(a)
    elif case == "bad image":
        x = L.InferInput("image_bytes", [1], "BYTES")
        x.set_data_from_numpy(np.array([b"\x89PNG\r\n\x1a\n truncated"], dtype=np.object_))
    elif case == "bad utf-8":
        model = "translator"
        x = L.InferInput("text", [1], "BYTES")
        x.set_data_from_numpy(np.array([b"\xff\xfe\xfa"], dtype=np.object_))
    elif case == "too many":
        model = "translator"
        x = L.InferInput("text", [65], "BYTES")
        x.set_data_from_numpy(np.array([b"one"] * 65, dtype=np.object_))
    else:
        model, params = "translator", {"beam_size": 9}
        x = L.InferInput("text", [1], "BYTES")
        x.set_data_from_numpy(np.array([b"one"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        c.infer(model, [x], parameters=params)
    status = str(info.value.status())
    if kind == "http":
        assert status == ("404" if case == "unknown model" else "413" if case == "too many" else "422" if case == "bad parameter" else "400"), info.value
    else:
        assert status == ("StatusCode.NOT_FOUND" if case == "unknown model" else "StatusCode.INVALID_ARGUMENT"), info.value
    assert c.is_server_ready()  # and the service still serves


def test_plain_json_requests_work_too(url):
    """curl-style JSON, no binary extension: BYTES elements are strings (base64 for images)."""
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Friday, March 14, 2025"]}]}
    r = requests.post(url + "/v2/models/translator/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0] == {"name": "translation", "datatype": "BYTES", "shape": [1], "data": ["vendredi 14 mars 2025"]}
    r = requests.post(url + "/v2/models/translator/infer", data=b"{not json")
    assert r.status_code == 400 and "error" in r.json()
    r = requests.post(url + "/v2/models/translator/infer", json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["one"]}]})
    assert r.status_code == 400 and "shape" in r.json()["error"]


# ------------------------------------------------------------------------------------------------------------------
# The codec in-process (no service): whatever a client sends is a ServiceError of a client kind, whose OIP body encodes,
# raised before any model runs; any other exception would be an HTTP 500 / gRPC INTERNAL.

TEXT = '{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Japan"]}'


def refusal(call) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        call()
    e = info.value
    assert json.loads(e.body("oip")) == {"error": e.message}  # encodable: no lone surrogate echoed
    return e


def http_request(head: str | bytes, model: str = "translator", binary: bytes | None = None, name_outputs: bool = False):
    """What ``http_infer`` does before the model runs: ``head`` is JSON text (``\\ud800`` escapes allowed)."""
    head = head if isinstance(head, bytes) else head.encode("utf-8", "surrogatepass")
    length = None if binary is None else str(len(head))
    request, tensors = codec.parse_http(head + (binary or b""), length, *([model] if name_outputs else []))
    codec.only_input(tensors, model)
    return request


def nested(depth: int, leaf: str = '"a"') -> str:
    return "[" * depth + leaf + "]" * depth


HTTP_REFUSED = {  # case: (JSON header, model, what the message must name, status)
    "surrogate in text": ('{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Japan \\ud800"]}]}',
                          "translator", "surrogate", 400),
    "surrogate in name": ('{"inputs": [{"name": "te\\ud800xt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}',
                          "translator", "inputs[0].name", 400),
    "surrogate in datatype": ('{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES\\udc00", "data": ["a"]}]}',
                              "translator", "datatype", 400),
    "surrogate in id": ('{"id": "\\ud800", "inputs": [%s]}' % TEXT, "translator", "'id'", 400),
    "surrogate in output name": ('{"inputs": [%s], "outputs": [{"name": "\\ud800"}]}' % TEXT, "translator", "outputs[0].name", 400),
    "surrogate as UTF-8 bytes": (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\xed\xa0\x80"]}]}',
                                 "translator", "surrogate", 400),
    "outputs a number": ('{"inputs": [%s], "outputs": 5}' % TEXT, "translator", "'outputs'", 400),
    "output parameters a number": ('{"inputs": [%s], "outputs": [{"name": "translation", "parameters": 5}]}' % TEXT,
                                   "translator", "outputs[0].parameters", 400),
    "output name a list": ('{"inputs": [%s], "outputs": [{"name": ["x"]}]}' % TEXT, "translator", "outputs[0].name", 400),
    "output binary_data a string": ('{"inputs": [%s], "outputs": [{"name": "tokens", "parameters": {"binary_data": "no"}}]}' % TEXT,
                                    "translator", "binary_data", 400),
    "binary_data_output a number": ('{"inputs": [%s], "parameters": {"binary_data_output": 1}}' % TEXT,
                                    "translator", "binary_data_output", 400),
    "100000 brackets": ("[" * 100_000, "translator", "nested too deeply", 400),
    "data 990 deep": ('{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": %s}]}' % nested(990),
                      "translator", "nested too deeply", 400),
    "data 65 deep": ('{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": %s}]}' % nested(65),
                     "translator", "nested too deeply", 400),
    "parameter 900 deep": ('{"inputs": [%s], "parameters": {"beam_size": %s}}' % (TEXT, nested(900, "1")),
                           "translator", "beam_size", 400),
    "id NaN": ('{"id": NaN, "inputs": [%s]}' % TEXT, "translator", "'id' must be a string", 400),
    "id a number": ('{"id": 7, "inputs": [%s]}' % TEXT, "translator", "'id' must be a string", 400),
    "parameters a list": ('{"inputs": [%s], "parameters": []}' % TEXT, "translator", "parameters must be an object", 400),
    "input parameters a list": ('{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"], "parameters": []}]}',
                                "translator", "text: parameters must be an object", 400),
    "output parameters a list": ('{"inputs": [%s], "outputs": [{"name": "tokens", "parameters": []}]}' % TEXT,
                                 "translator", "outputs[0].parameters must be an object", 400),
    "images with a zero side": ('{"inputs": [{"name": "images", "shape": [1, 1, 0, 1], "datatype": "FP32", "data": []}]}',
                                "classifier", "no elements", 400),
    "INT8 out of range": ('{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1000]}]}',
                          "translator", "-128..127", 400),
    "INT32 not an integer": ('{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1.5]}]}',
                             "translator", "integers", 400),
    "BOOL not a boolean": ('{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [{}]}]}',
                           "translator", "booleans", 400),
    "integer of 5000 digits": ('{"inputs": [%s], "parameters": {"beam_size": %s}}' % (TEXT, "9" * 5000),
                               "translator", "not valid JSON", 400),
}


@pytest.mark.parametrize("case", list(HTTP_REFUSED))
def test_codec_refuses_bad_http_input_clearly(case):
    head, model, named, status = HTTP_REFUSED[case]
    e = refusal(lambda: http_request(head, model))
    assert e.status == status and named in e.message, e.message


@pytest.fixture(scope="module")
def front_app():
    """The real HTTP app, no models bound: every case here is refused before a model is needed (the tester saw
    ``500 text/plain`` for them from the served app)."""
    from starlette.testclient import TestClient

    from service.front.http import app

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("case", list(HTTP_REFUSED))
def test_the_http_handler_answers_bad_input_with_the_protocols_error(front_app, case):
    head, model, named, status = HTTP_REFUSED[case]
    body = head if isinstance(head, bytes) else head.encode("utf-8", "surrogatepass")
    r = front_app.post(f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and r.headers["content-type"] == "application/json", (r.status_code, r.text)
    assert named in r.json()["error"], r.text


@pytest.mark.parametrize("shape, status, named", [([1] * 65, 400, "at most 64"), ([0, 10**21, 1, 1], 413, "over the limit"),
                                                  ([0, 2**62, 2**62, 1], 413, "over the limit")])
def test_codec_refuses_bad_binary_shapes(shape, status, named):
    head = json.dumps({"inputs": [{"name": "images", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": 0}}]})
    e = refusal(lambda: http_request(head, "classifier", binary=b""))
    assert e.status == status and named in e.message, e.message


def test_codec_refuses_unknown_output_names_before_the_model_runs():
    e = refusal(lambda: http_request('{"inputs": [%s], "outputs": [{"name": "nope"}]}' % TEXT, name_outputs=True))
    assert e.status == 400 and "unknown output 'nope'" in e.message


def test_codec_still_takes_nested_data_ids_and_binary_flags():
    rows = [[[[0.0, 0.5], [1.0, 0.25]]]]  # [1, 1, 2, 2] nested row-major, as the protocol allows
    head = {"id": "r-1", "parameters": {"binary_data_output": False, "beam_size": 2},
            "inputs": [{"name": "images", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": rows, "parameters": {}}],
            "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}
    request, tensors = codec.parse_http(json.dumps(head).encode(), None, "classifier")
    t = codec.only_input(tensors, "classifier")
    np.testing.assert_array_equal(t.data, np.asarray(rows, np.float32))
    outputs = [codec.Output("probabilities", "FP32", [1, 10], np.full((1, 10), 0.1, np.float32)), codec.Output("label", "BYTES", [1], [b"3"])]
    body, headers = codec.http_response("classifier", request, outputs)
    n = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:n])
    assert answer["id"] == "r-1" and [o["name"] for o in answer["outputs"]] == ["label", "probabilities"]
    assert answer["outputs"][0]["data"] == ["3"] and len(body) - n == 40
    deep = '{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": %s}]}' % nested(64)
    assert codec.parse_http(deep.encode(), None)[1][0].data == [b"a"]  # 64 levels: numpy's own rank limit
    assert "id" not in json.loads(codec.http_response("translator", {"id": None}, [])[0])


def grpc_tensor(name, datatype, shape, field=None, values=()):
    t = grpcclient.service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if field:
        getattr(t.contents, field).extend(values)
    return t


GRPC_REFUSED = {  # case: (model, input tensor, raw contents or None, requested output, what the message must name)
    "INT8 1000": ("translator", grpc_tensor("x", "INT8", [1], "int_contents", [1000]), None, None, "x: INT8 elements must be within -128..127"),
    "INT8 -129": ("translator", grpc_tensor("x", "INT8", [1], "int_contents", [-129]), None, None, "-128..127"),
    "UINT8 300": ("translator", grpc_tensor("x", "UINT8", [1], "uint_contents", [300]), None, None, "x: UINT8 elements must be within 0..255"),
    "INT16 100000": ("translator", grpc_tensor("x", "INT16", [1], "int_contents", [100000]), None, None, "-32768..32767"),
    "UINT16 70000": ("translator", grpc_tensor("x", "UINT16", [1], "uint_contents", [70000]), None, None, "0..65535"),
    "images with a zero side": ("classifier", grpc_tensor("images", "FP32", [1, 1, 0, 1], "fp32_contents", []), None, None, "no elements"),
    "raw shape of rank 65": ("classifier", grpc_tensor("images", "FP32", [1] * 65), b"\0" * 4, None, "at most 64"),
    "raw zero-size shape over the limit": ("classifier", grpc_tensor("images", "FP32", [0, 2**62, 2**62, 1]), b"", None, "over the limit"),
    "unknown output": ("translator", grpc_tensor("text", "BYTES", [1], "bytes_contents", [b"a"]), None, "nope", "unknown output 'nope'"),
}


@pytest.mark.parametrize("case", list(GRPC_REFUSED))
def test_codec_refuses_bad_grpc_input_clearly(case):
    model, tensor, raw, output, named = GRPC_REFUSED[case]
    request = grpcclient.service_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw] if raw is not None else [])
    if output:
        request.outputs.add(name=output)
    e = refusal(lambda: codec.only_input(codec.parse_grpc(request), model))  # parse_grpc: before ModelInfer's model run
    assert e.kind.grpc_name == "INVALID_ARGUMENT" and named in e.message, e.message


@pytest.mark.parametrize("case", list(GRPC_REFUSED))
def test_the_grpc_handler_answers_bad_input_with_invalid_argument(case):
    import asyncio

    from service.front import oip as handlers

    class Context:
        code = details = None

        def set_code(self, code):
            self.code = code

        def set_details(self, details):
            self.details = details

    model, tensor, raw, output, named = GRPC_REFUSED[case]
    request = grpcclient.service_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw] if raw is not None else [])
    if output:
        request.outputs.add(name=output)
    context = Context()
    asyncio.run(handlers.ModelInfer(grpcclient.service_pb2, request, context))  # no model bound: refused before one runs
    assert context.code is not None and context.code.name == "INVALID_ARGUMENT" and named in context.details, (context.code, context.details)
