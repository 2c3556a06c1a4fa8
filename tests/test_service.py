"""The real service: a local Ray instance with Serve, the ONNX repository, HTTP requests from a real client."""

import base64
import random
import socket
import time

import numpy as np
import pytest
import requests

from models.data import digits as D
from models.data import text as T
from service.decoding import DecodingOptions
from service.images import encode_png
from service.runtime import EncoderDecoderRuntime

ray = pytest.importorskip("ray", reason="the service tests need ray[serve] (installed by make test)")
from ray import serve  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(repo):
    from service.ingress import build_app

    from ray.serve.config import gRPCOptions

    from service.ingress import GRPC_SERVICERS

    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False, _metrics_export_port=metrics_port)
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=GRPC_SERVICERS))
    serve.run(build_app(str(repo)), name="inference", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if requests.get(base + "/readyz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError("service did not become ready")
    yield base, grpc_port, metrics_port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def url(service):
    return service[0]


@pytest.fixture(scope="module")
def stub(service):
    import grpc

    from proto import inference_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{service[1]}")
    yield inference_pb2_grpc.InferenceStub(channel)
    channel.close()


def png_b64(array) -> str:
    return base64.b64encode(encode_png(array)).decode()


def test_health(url):
    assert requests.get(url + "/healthz").status_code == 200
    r = requests.get(url + "/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert "/v1/translate" in requests.get(url + "/openapi.json").json()["paths"]


def test_translate_equals_the_offline_engine(url, repo):
    texts = [s for s, _ in random.Random(7).sample(T.build_corpus()["test"], 12)]
    r = requests.post(url + "/v1/translate", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    rt = EncoderDecoderRuntime(repo / "translator" / "1")
    from models.data.tokenizer import Tokenizer

    tok = Tokenizer.load(repo / "translator" / "1")
    rows = [tok.encode(t) + [3] for t in texts]
    src = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, row in enumerate(rows):
        src[i, : len(row)] = row
    offline = [tok.decode(o) for o in rt.generate(src, src != 0, DecodingOptions())]
    assert body["translations"] == offline and body["model"] == "translator" and len(body["tokens"]) == 12
    single = requests.post(url + "/v1/translate", json={"text": "Friday, March 14, 2025", "beam_size": 4}).json()
    assert single["translations"] == ["vendredi 14 mars 2025"]


def test_classify_json_and_multipart(url):
    test = D.digit_splits()["test"]
    images = [png_b64(np.round(img * 255)) for img in test.images[:20]]
    r = requests.post(url + "/v1/classify", json={"images": images, "top_k": 3})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 20 and all(len(p) == 3 for p in preds)
    assert sum(p[0]["label"] == str(l) for p, l in zip(preds, test.labels[:20])) >= 19
    big = np.kron(255 - np.round(test.images[0] * 255), np.ones((8, 8)))  # 64×64, dark ink on white
    r = requests.post(url + "/v1/classify", files={"image": ("digit.png", encode_png(big), "image/png")})
    assert r.status_code == 200 and r.json()["predictions"][0][0]["label"] == str(test.labels[0])


def test_caption(url):
    canvases, captions, _ = D.make_scenes(D.digit_splits()["test"], 3, seed=11)
    for canvas, caption in zip(canvases, captions):
        r = requests.post(url + "/v1/caption", json={"image": png_b64(canvas)})
        assert r.status_code == 200 and r.json()["captions"] == [caption]


@pytest.mark.parametrize("route,payload,status,field", [
    ("/v1/translate", {"text": "x" * 513}, 413, "texts[0]"),
    ("/v1/translate", {"texts": ["one"] * 65}, 413, "texts"),
    ("/v1/translate", {"text": "one", "beam_size": 9}, 422, "beam_size"),
    ("/v1/translate", {"text": "one", "colour": "red"}, 422, "colour"),
    ("/v1/translate", {}, 422, "text"),
    ("/v1/classify", {"image": "not base64!"}, 400, "images[0]"),
    ("/v1/classify", {"image": base64.b64encode(b"GIF89a not really").decode()}, 400, "images[0]"),
    ("/v1/caption", {"image": base64.b64encode(b"\x89PNG\r\n\x1a\ntruncated").decode()}, 400, "image"),
])
def test_bad_input_is_a_clear_4xx(url, route, payload, status, field):
    r = requests.post(url + route, json=payload)
    assert r.status_code == status, r.text
    assert field in r.json()["error"]["message"]


def test_malformed_json_is_400(url):
    r = requests.post(url + "/v1/translate", data=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and "error" in r.json()


def test_deadline_is_504(url):
    long = "The meeting is on Wednesday, September 27, 2084."
    r = requests.post(url + "/v1/translate", json={"texts": [long] * 64}, headers={"X-Request-Timeout-Ms": "1"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert requests.post(url + "/v1/translate", json={"text": "nine"}).json()["translations"] == ["neuf"]  # still serving


def test_grpc_translate_classify_caption(stub, url):
    from proto import inference_pb2 as pb

    texts = ["Friday, March 14, 2025", "She speaks German.", "twenty-one"]
    reply = stub.Translate(pb.TranslateRequest(texts=texts), timeout=60)
    http = requests.post(url + "/v1/translate", json={"texts": texts}).json()
    assert list(reply.translations) == http["translations"] == ["vendredi 14 mars 2025", "Elle parle allemand.", "vingt et un"]
    assert reply.model == "translator" and list(reply.tokens) == http["tokens"]
    test = D.digit_splits()["test"]
    reply = stub.Classify(pb.ClassifyRequest(images=[encode_png(np.round(img * 255)) for img in test.images[:5]], top_k=2), timeout=60)
    assert [p.predictions[0].label for p in reply.predictions] == [str(l) for l in test.labels[:5]]
    assert all(len(p.predictions) == 2 for p in reply.predictions)
    canvases, captions, _ = D.make_scenes(test, 1, seed=11)
    assert list(stub.Caption(pb.CaptionRequest(image=encode_png(canvases[0])), timeout=60).captions) == captions


@pytest.mark.parametrize("call,status", [
    ("Translate:empty", "INVALID_ARGUMENT"),
    ("Translate:long", "INVALID_ARGUMENT"),
    ("Translate:beam", "INVALID_ARGUMENT"),
    ("Classify:garbage", "INVALID_ARGUMENT"),
    ("Classify:none", "INVALID_ARGUMENT"),
    ("Caption:truncated", "INVALID_ARGUMENT"),
])
def test_grpc_bad_input_is_invalid_argument(stub, call, status):
    import grpc

    from proto import inference_pb2 as pb

    requests_by_case = {
        "Translate:empty": (stub.Translate, pb.TranslateRequest()),
        "Translate:long": (stub.Translate, pb.TranslateRequest(texts=["x" * 513])),
        "Translate:beam": (stub.Translate, pb.TranslateRequest(texts=["one"], beam_size=9)),
        "Classify:garbage": (stub.Classify, pb.ClassifyRequest(images=[b"\xff\xd8 not a jpeg"])),
        "Classify:none": (stub.Classify, pb.ClassifyRequest()),
        "Caption:truncated": (stub.Caption, pb.CaptionRequest(image=b"\x89PNG\r\n\x1a\n")),
    }
    method, message = requests_by_case[call]
    with pytest.raises(grpc.RpcError) as info:
        method(message, timeout=60)
    assert info.value.code().name == status, info.value.details()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_command_line_client(service, tmp_path, transport):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    base, grpc_port, _ = service
    flags = ["--grpc", "--grpc-target", f"127.0.0.1:{grpc_port}"] if transport == "grpc" else ["--url", base]
    run = lambda *a: subprocess.run([sys.executable, "-m", "service.client", *a, *flags], cwd=root, capture_output=True, text=True, timeout=120)
    out = run("translate", "Friday, March 14, 2025")
    assert out.returncode == 0 and out.stdout.strip() == "vendredi 14 mars 2025", out.stderr
    test = D.digit_splits()["test"]
    digit = tmp_path / "digit.png"
    digit.write_bytes(encode_png(np.round(test.images[0] * 255)))
    out = run("classify", str(digit), "--top-k", "2")
    assert out.returncode == 0 and out.stdout.startswith(f"{digit}: {test.labels[0]} ("), out.stdout + out.stderr
    canvases, captions, _ = D.make_scenes(test, 1, seed=11)
    scene = tmp_path / "scene.png"
    scene.write_bytes(encode_png(canvases[0]))
    out = run("caption", str(scene))
    assert out.returncode == 0 and out.stdout.strip() == captions[0]
    bad = run("classify", str(tmp_path / "missing.png"))
    assert bad.returncode == 1 and "cannot read" in bad.stderr
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    bad = run("classify", str(junk))
    assert bad.returncode == 1 and ("400" in bad.stderr or "INVALID_ARGUMENT" in bad.stderr)


API_METRICS = [
    "inference_request_duration_seconds", "inference_queue_duration_seconds", "inference_compute_duration_seconds",
    "inference_batch_size", "inference_requests_total", "inference_errors_total", "inference_requests_in_flight",
    "inference_rejected_total", "generation_time_to_first_token_seconds", "generation_time_per_output_token_seconds",
    "generation_tokens_total",
]


def test_batching_is_observed_and_every_metric_is_exported(service, url):
    """Concurrent classify burst, a translation and a bad request; then every API metric must be scraped
    (``inference_rejected_total`` aside: nothing is rejected here)."""
    from concurrent.futures import ThreadPoolExecutor

    test = D.digit_splits()["test"]
    image = png_b64(np.round(test.images[0] * 255))
    with ThreadPoolExecutor(32) as pool:  # concurrent single-image requests: the classifier must batch them
        codes = list(pool.map(lambda _: requests.post(url + "/v1/classify", json={"image": image}).status_code, range(96)))
    assert set(codes) == {200}
    assert requests.post(url + "/v1/translate", json={"texts": ["Friday, March 14, 2025", "nine"]}).status_code == 200
    assert requests.post(url + "/v1/translate", json={"text": "x" * 600}).status_code == 413
    base = f"http://127.0.0.1:{service[2]}/metrics"

    def classifier_batches(text):
        lines = [l for l in text.splitlines() if l.startswith("ray_inference_batch_size_bucket") and 'model="classifier"' in l]
        le1 = sum(float(l.rsplit(" ", 1)[1]) for l in lines if 'le="1.0"' in l or 'le="1"' in l)
        total = sum(float(l.rsplit(" ", 1)[1]) for l in lines if 'le="+Inf"' in l)
        return le1, total

    deadline, text = time.time() + 90, ""
    while time.time() < deadline:  # Ray's agent exports every ~10 s: wait for this burst to be in
        text = requests.get(base, timeout=5).text
        names_in = all(f"ray_{m}" in text for m in API_METRICS if m != "inference_rejected_total")
        if names_in and classifier_batches(text)[1] >= 10 and 'code="413"' in text:
            break
        time.sleep(2)
    missing = [m for m in API_METRICS if m != "inference_rejected_total" and f"ray_{m}" not in text]
    assert not missing, missing
    le1, total = classifier_batches(text)
    assert total > le1, (le1, total)  # some classifier batches held more than one image
    errors = [l for l in text.splitlines() if l.startswith("ray_inference_errors_total") and 'code="413"' in l]
    assert errors  # the bad-input tests above were counted
