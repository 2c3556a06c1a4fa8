"""The Open Inference Protocol, driven by the real tritonclient (HTTP and gRPC), unchanged; answers equal the task API's."""

import base64

import numpy as np
import pytest
import requests

from models.data import digits as D
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
