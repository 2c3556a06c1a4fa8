"""The real service: a local Ray instance with Serve, the ONNX repository, HTTP requests from a real client."""

import base64
import random
import time

import numpy as np
import pytest
import requests

from models.data import digits as D
from models.data import text as T
from service.decoding import DecodingOptions
from service.images import encode_png
from service.runtime import EncoderDecoderRuntime
from tests.servicekit import LONG_TEXT, reconfigured, stats, wait_for  # fixtures service/url/stub: conftest.py


def png_b64(array) -> str:
    return base64.b64encode(encode_png(array)).decode()


def test_health(url):
    assert requests.get(url + "/healthz").status_code == 200
    r = requests.get(url + "/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert "/v1/translate" in requests.get(url + "/openapi.json").json()["paths"]
    # Ready means the decoders have already timed their steps and chosen their batch width (reconfigure waits for
    # it): no request that arrives after /readyz says ready waits behind a calibration.
    for name in ("translator", "captioner"):
        st = stats(name)
        assert st["auto_width"] and set(st["step_times"]) >= {1, 2, 4, 8}, st
        assert 1 <= st["batch_limit"] <= st["max_batch_size"] and st["max_queue_wait_ms"] == 2000, st


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


def test_classify_and_caption_equal_the_offline_runtime(url, repo):
    """Same bytes in: the served answers are what ONNX Runtime gives offline after the same preprocessing."""
    from models.data.tokenizer import Tokenizer
    from service.images import digit_input, scene_input
    from service.runtime import create_session, load_config

    test = D.digit_splits()["test"]
    pngs = [encode_png(np.round(img * 255)) for img in test.images[:16]]
    served = requests.post(url + "/v1/classify", json={"images": [base64.b64encode(p).decode() for p in pngs], "top_k": 10}).json()
    session = create_session(repo / "classifier" / "1" / "model.onnx")
    logits = session.run(None, {"images": np.stack([digit_input(p) for p in pngs]).astype(np.float32)})[0]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    labels = load_config(repo / "classifier" / "1")["labels"]
    for row, p in zip(served["predictions"], probs):
        assert [x["label"] for x in row] == [labels[i] for i in np.argsort(-p)]
        np.testing.assert_allclose([x["score"] for x in row], np.sort(p)[::-1], rtol=1e-5, atol=1e-7)

    canvases, _, _ = D.make_scenes(test, 6, seed=5)
    directory = repo / "captioner" / "1"
    rt, tok = EncoderDecoderRuntime(directory), Tokenizer.load(directory)
    for canvas in canvases:
        data = encode_png(canvas)
        served = requests.post(url + "/v1/caption", json={"image": base64.b64encode(data).decode()}).json()["captions"]
        offline = [tok.decode(o) for o in rt.generate(scene_input(data)[None], None, DecodingOptions(max_new_tokens=40))]
        assert served == offline


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
    ("/v1/translate", {"text": "x" * 513}, 413, "text"),
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
    base, grpc_port = service.url, service.grpc_port
    flags = ["--grpc", "--grpc-target", f"127.0.0.1:{grpc_port}"] if transport == "grpc" else ["--url", base]
    run = lambda *a: subprocess.run([sys.executable, "-m", "service.client", *a, *flags], cwd=root, capture_output=True, text=True, timeout=120)
    out = run("translate", "Friday, March 14, 2025")
    assert out.returncode == 0 and out.stdout.strip() == "vendredi 14 mars 2025", out.stderr
    out = run("translate", "Friday, March 14, 2025", "--stream")
    assert out.returncode == 0 and out.stdout.strip() == "vendredi 14 mars 2025" and "vendredi" in out.stderr, out.stderr
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
    out = run("classify", str(scene), "--model", "pets", "--top-k", "1")  # an imported model of the repository, by name
    assert out.returncode == 0 and out.stdout.split(": ")[1].split(" (")[0] in {"cat", "dog", "fox"}, out.stdout + out.stderr
    out = run("translate", "The cat sees the dog.", "--model", "opus")
    assert out.returncode == 0 and out.stdout.strip() != "", out.stderr
    bad = run("translate", "Hi", "--model", "parrots")
    assert bad.returncode == 1 and ("404" in bad.stderr or "NOT_FOUND" in bad.stderr), bad.stderr
    bad = run("classify", str(tmp_path / "missing.png"))
    assert bad.returncode == 1 and "cannot read" in bad.stderr
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    bad = run("classify", str(junk))
    assert bad.returncode == 1 and ("400" in bad.stderr or "INVALID_ARGUMENT" in bad.stderr)


def test_classifier_batching_reconfigures_without_restart(service, url):
    """user_config in the serve config → Classifier.reconfigure on the running replica (same process)."""
    from concurrent.futures import ThreadPoolExecutor

    before = stats("classifier")
    assert before["max_batch_size"] == 64
    image = png_b64(np.round(D.digit_splits()["test"].images[0] * 255))
    with reconfigured(service, "classifier", {"max_batch_size": 2, "batch_wait_timeout_s": 0.05}):
        wait_for(lambda: stats("classifier")["max_batch_size"] == 2, what="the new batch size")
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: requests.post(url + "/v1/classify", json={"image": image}).status_code, range(48)))
        after = stats("classifier")
        assert set(codes) == {200}
        assert after["pid"] == before["pid"] and after["batch_wait_timeout_s"] == 0.05
        assert 1 <= after["largest_batch"] <= 2, after
    wait_for(lambda: stats("classifier")["max_batch_size"] == 64, what="the original batch size")
    assert stats("classifier")["pid"] == before["pid"]


def test_full_decode_queue_is_503_with_retry_after_and_resource_exhausted(service, url, stub):
    import grpc

    from proto import inference_pb2 as pb

    texts = ["Friday, March 14, 2025", "nine", "She speaks German."]
    pid = stats("translator")["pid"]
    with reconfigured(service, "translator", {"max_batch_size": 32, "max_queue": 2}):
        wait_for(lambda: stats("translator")["max_queue"] == 2, what="the new queue bound")
        r = requests.post(url + "/v1/translate", json={"texts": texts})  # 3 sequences never fit a queue of 2
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "overloaded"
        with pytest.raises(grpc.RpcError) as info:
            stub.Translate(pb.TranslateRequest(texts=texts), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        assert requests.post(url + "/v1/translate", json={"texts": texts[:2]}).status_code == 200  # what fits is served
    wait_for(lambda: stats("translator")["max_queue"] == 1024, what="the original queue bound")
    assert stats("translator")["pid"] == pid


def test_classifier_queue_bound_is_503(service, url):
    """The classifier's max_queue (images waiting) from the serve config: requests past it are refused at once with
    503 + Retry-After, the rest served."""
    from concurrent.futures import ThreadPoolExecutor

    images = [png_b64(np.round(img * 255)) for img in D.digit_splits()["test"].images[:64]]
    with reconfigured(service, "classifier", {"max_batch_size": 64, "batch_wait_timeout_s": 0.2, "max_queue": 64}):
        def burst():
            with ThreadPoolExecutor(24) as pool:
                return list(pool.map(lambda _: requests.post(url + "/v1/classify", json={"images": images}), range(24)))

        replies = wait_for(lambda: (lambda rs: rs if any(r.status_code == 503 for r in rs) else None)(burst()),
                           timeout=60, what="a 503 under a burst")
        codes = {r.status_code for r in replies}
        assert codes <= {200, 503} and 200 in codes, codes
        refused = [r for r in replies if r.status_code == 503]
        assert all(r.headers.get("Retry-After") == "1" and "classifier" in r.json()["error"]["message"] for r in refused)


def cut_short(before: dict, after: dict) -> int:
    """Sequences that left the decode loop because of a deadline or a cancellation between two stats()."""
    return sum(after["finished"].get(r, 0) - before["finished"].get(r, 0) for r in ("deadline", "cancelled"))


def drained() -> bool:
    s = stats("translator")
    return s["active"] == 0 and s["waiting"] == 0


def test_deadline_stops_the_decode_over_http(url, long_decodes):
    """64 long sequences take ~0.7 s here; a 100 ms deadline answers 504 and takes them out of the loop."""
    before = stats("translator")
    started = time.monotonic()
    r = requests.post(url + "/v1/translate", json={"texts": [LONG_TEXT] * 64, "max_new_tokens": 256},
                      headers={"X-Request-Timeout-Ms": "100"})
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert elapsed < 1.0, elapsed
    wait_for(drained, timeout=2.0, what="the sequences to leave the decode loop")
    assert cut_short(before, stats("translator")) >= 32  # at least the second half never finished


def test_grpc_deadline_is_deadline_exceeded_and_stops_the_decode(stub, long_decodes):
    """The gRPC deadline cancels the call through Serve's proxy; the replica drops the call's sequences."""
    import grpc

    from proto import inference_pb2 as pb

    before = stats("translator")
    with pytest.raises(grpc.RpcError) as info:
        stub.Translate(pb.TranslateRequest(texts=[LONG_TEXT] * 64, max_new_tokens=256), timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(drained, timeout=2.0, what="the sequences to leave the decode loop")
    assert cut_short(before, stats("translator")) >= 32


def test_a_grpc_deadline_the_queue_cannot_meet_is_refused_at_once_as_the_header_is(service, url, stub):
    """The gRPC deadline is a call's budget, as ``X-Request-Timeout-Ms`` is a request's: behind a queue of 64
    one-text requests (each waits its turn: a queue-time bound of a minute) in a batch two rows wide, a call with a
    150 ms deadline is refused at once, RESOURCE_EXHAUSTED as the header's 503, where without its deadline it waited
    in the queue until gRPC cut it off (DEADLINE_EXCEEDED)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from proto import inference_pb2 as pb

    settings = {"max_batch_size": 2, "auto_width": False, "max_queue": 1024, "max_queue_wait_ms": 60000, "ignore_eos": True}
    with reconfigured(service, "translator", settings), ThreadPoolExecutor(64) as pool:
        wait_for(lambda: stats("translator")["max_queue_wait_ms"] == 60000, what="the new queue-time bound")
        queued = [pool.submit(requests.post, url + "/v1/translate", json={"text": LONG_TEXT, "max_new_tokens": 64},
                              timeout=120) for _ in range(64)]
        wait_for(lambda: stats("translator")["waiting"] >= 48, timeout=30, what="a queue of one-text requests")
        r = requests.post(url + "/v1/translate", json={"text": "nine"}, headers={"X-Request-Timeout-Ms": "150"})
        with pytest.raises(grpc.RpcError) as info:
            stub.Translate(pb.TranslateRequest(texts=["nine"]), timeout=0.15)
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (info.value.code(), info.value.details())
        assert "budget" in info.value.details(), info.value.details()
        assert all(f.result().status_code == 200 for f in queued)  # the queue itself is served


def test_deadline_stops_a_beam_search(url):
    """Beams are rows of the engine's batch: the deadline takes them out between two steps like any sequence."""
    before = time.monotonic()
    r = requests.post(url + "/v1/translate", json={"texts": [LONG_TEXT] * 64, "beam_size": 8, "max_new_tokens": 256},
                      headers={"X-Request-Timeout-Ms": "100"})
    assert r.status_code == 504 and time.monotonic() - before < 1.0
    wait_for(drained, timeout=2.0, what="the beams to leave the decode loop")
    ok = requests.post(url + "/v1/translate", json={"text": "nine", "beam_size": 2}, headers={"X-Request-Timeout-Ms": "10000"})
    assert ok.status_code == 200 and ok.json()["translations"] == ["neuf"]


API_METRICS = [
    "inference_request_duration_seconds", "inference_queue_duration_seconds", "inference_compute_duration_seconds",
    "inference_batch_size", "inference_requests_total", "inference_errors_total", "inference_requests_in_flight",
    "inference_rejected_total", "generation_time_to_first_token_seconds", "generation_time_per_output_token_seconds",
    "generation_tokens_total",
]


def test_batching_is_observed_and_every_metric_is_exported(service, url):
    """Concurrent classify burst, a translation, a bad request and a refused one; then every API metric must be
    scraped with data."""
    from concurrent.futures import ThreadPoolExecutor

    test = D.digit_splits()["test"]
    image = png_b64(np.round(test.images[0] * 255))
    with ThreadPoolExecutor(32) as pool:  # concurrent single-image requests: the classifier must batch them
        codes = list(pool.map(lambda _: requests.post(url + "/v1/classify", json={"image": image}).status_code, range(96)))
    assert set(codes) == {200}
    assert requests.post(url + "/v1/translate", json={"texts": ["Friday, March 14, 2025", "nine"]}).status_code == 200
    assert requests.post(url + "/v1/translate", json={"text": "x" * 600}).status_code == 413
    with reconfigured(service, "translator", {"max_batch_size": 32, "max_queue": 0}):
        wait_for(lambda: stats("translator")["max_queue"] == 0, what="the new queue bound")
        assert requests.post(url + "/v1/translate", json={"text": "nine"}).status_code == 503
    base = f"http://127.0.0.1:{service.metrics_port}/metrics"

    def classifier_batches(text):
        lines = [l for l in text.splitlines() if l.startswith("ray_inference_batch_size_bucket") and 'model="classifier"' in l]
        le1 = sum(float(l.rsplit(" ", 1)[1]) for l in lines if 'le="1.0"' in l or 'le="1"' in l)
        total = sum(float(l.rsplit(" ", 1)[1]) for l in lines if 'le="+Inf"' in l)
        return le1, total

    def translator_refusals(text):  # every model's series exists, at 0 until its first refusal
        lines = [l for l in text.splitlines() if l.startswith("ray_inference_rejected_total")
                 and 'reason="queue_full"' in l and 'model="translator"' in l]
        return max((float(l.rsplit(" ", 1)[1]) for l in lines), default=0.0)

    deadline, text = time.time() + 90, ""
    while time.time() < deadline:  # Ray's agent exports every ~10 s: wait for this burst to be in
        text = requests.get(base, timeout=5).text
        names_in = all(f"ray_{m}" in text for m in API_METRICS)
        if names_in and classifier_batches(text)[1] >= 10 and 'code="413"' in text and translator_refusals(text) >= 1:
            break
        time.sleep(2)
    missing = [m for m in API_METRICS if f"ray_{m}" not in text]
    assert not missing, missing
    le1, total = classifier_batches(text)
    assert total > le1, (le1, total)  # some classifier batches held more than one image
    errors = [l for l in text.splitlines() if l.startswith("ray_inference_errors_total") and 'code="413"' in l]
    assert errors  # the bad-input tests above were counted
    assert translator_refusals(text) >= 1
