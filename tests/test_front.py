"""The protocol adapters (service/front/) in-process, over the real models of the test repository, without Ray: every
limit of the contract on every protocol (task HTTP, Open Inference Protocol over HTTP and gRPC, task gRPC), with the
status each protocol must give it, and ordinary requests answered the same on all four."""

import base64
import json

import numpy as np
import pytest
from starlette.testclient import TestClient

pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra: `make test` installs it")
from tritonclient.grpc import service_pb2 as oip_pb  # noqa: E402  (the protocol's reference messages; ours define the same package)

from proto import inference_pb2 as task_pb
from service import front
from service.contract import MAX_ITEMS, MAX_TEXT_CHARS
from service.front import grpc as task_grpc
from service.front import oip
from service.front.http import app
from service.images import encode_png
from tests.hfkit import IMPORTED, IMPORTED_CAPTIONER, IMPORTED_TRANSLATOR, LABELS, sentences, tiny_captioner, tiny_marian, tiny_vit

DIGIT = encode_png((np.eye(8) * 255).astype(np.uint8))
SCENE = encode_png(np.zeros((32, 32), np.uint8))


class Context:
    """What a gRPC servicer is handed to answer with: records the status it sets."""

    def __init__(self) -> None:
        self.code, self.details = None, ""

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


@pytest.fixture(scope="module")
def models(repo):
    from service.server import Models

    m = Models(repo)
    front.bind(m)
    yield m
    m.stop()


@pytest.fixture(scope="module")
def http(models):
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


def grpc_call(http, method, pb, request):
    """Call a gRPC adapter on the event loop that serves the HTTP test client (one loop, as in a replica)."""
    context = Context()
    response = http.portal.call(method, pb, request, context)
    return response, context


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (what is wrong, task HTTP route + body, OIP model + inputs + parameters, task gRPC method + request, HTTP status)
CASES = {
    "beam_size over 8": (("/v1/translate", {"text": "Hi", "beam_size": 9}),
                         ("translator", [("text", "BYTES", [b"Hi"])], {"beam_size": 9}),
                         ("Translate", task_pb.TranslateRequest(texts=["Hi"], beam_size=9)), 422),
    "max_new_tokens 0": (("/v1/caption", {"image": b64(SCENE), "max_new_tokens": 0}),
                         ("captioner", [("image", "BYTES", [SCENE])], {"max_new_tokens": 0}),
                         ("Caption", task_pb.CaptionRequest(image=SCENE, max_new_tokens=0)), 422),
    "max_new_tokens over 256": (("/v1/translate", {"text": "Hi", "max_new_tokens": 257}),
                                ("translator", [("text", "BYTES", [b"Hi"])], {"max_new_tokens": 257}),
                                ("Translate", task_pb.TranslateRequest(texts=["Hi"], max_new_tokens=257)), 422),
    "too many texts": (("/v1/translate", {"texts": ["Hi"] * (MAX_ITEMS + 1)}),
                       ("translator", [("text", "BYTES", [b"Hi"] * (MAX_ITEMS + 1))], {}),
                       ("Translate", task_pb.TranslateRequest(texts=["Hi"] * (MAX_ITEMS + 1))), 413),
    "text too long": (("/v1/translate", {"texts": ["a" * (MAX_TEXT_CHARS + 1)]}),
                      ("translator", [("text", "BYTES", [b"a" * (MAX_TEXT_CHARS + 1)])], {}),
                      ("Translate", task_pb.TranslateRequest(texts=["a" * (MAX_TEXT_CHARS + 1)])), 413),
    "too many tokens": (("/v1/translate", {"texts": ["1 2 " * 100]}), ("translator", [("text", "BYTES", [b"1 2 " * 100])], {}),
                        ("Translate", task_pb.TranslateRequest(texts=["1 2 " * 100])), 413),
    "empty text": (("/v1/translate", {"texts": [" "]}), ("translator", [("text", "BYTES", [b" "])], {}),
                   ("Translate", task_pb.TranslateRequest(texts=[" "])), 400),
    "no texts": (("/v1/translate", {"texts": []}), None, ("Translate", task_pb.TranslateRequest()), 422),
    "not an image": (("/v1/classify", {"image": b64(b"nope")}), ("classifier", [("image_bytes", "BYTES", [b"nope"])], {}),
                     ("Classify", task_pb.ClassifyRequest(images=[b"nope"])), 400),
    "image too large": (("/v1/caption", {"image": b64(encode_png(np.zeros((1, 5000), np.uint8)))}),
                        ("captioner", [("image", "BYTES", [encode_png(np.zeros((1, 5000), np.uint8))])], {}),
                        ("Caption", task_pb.CaptionRequest(image=encode_png(np.zeros((1, 5000), np.uint8)))), 413),
    "too many images": (("/v1/classify", {"images": [b64(DIGIT)] * (MAX_ITEMS + 1)}),
                        ("classifier", [("image_bytes", "BYTES", [DIGIT] * (MAX_ITEMS + 1))], {}),
                        ("Classify", task_pb.ClassifyRequest(images=[DIGIT] * (MAX_ITEMS + 1))), 413),
    "top_k over 10": (("/v1/classify", {"image": b64(DIGIT), "top_k": 11}), None,
                      ("Classify", task_pb.ClassifyRequest(images=[DIGIT], top_k=11)), 422),
}
GRPC_NAME = {400: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT"}


def oip_request(model: str, inputs: list, params: dict) -> tuple[dict, object]:
    """The same inputs as an HTTP JSON body and as a gRPC ModelInferRequest."""
    body = {"inputs": [{"name": n, "datatype": d, "shape": [len(v)],
                        "data": [x.decode() if n == "text" else b64(x) for x in v]} for n, d, v in inputs],
            "parameters": params}
    request = oip_pb.ModelInferRequest(model_name=model)
    for n, d, v in inputs:
        t = request.inputs.add(name=n, datatype=d, shape=[len(v)])
        t.contents.bytes_contents.extend(v)
    for k, v in params.items():
        request.parameters[k].int64_param = v
    return body, request


@pytest.mark.parametrize("case", list(CASES))
def test_every_limit_is_the_same_refusal_on_every_protocol(models, http, case):
    (route, body), oip_case, (method, grpc_request), status = CASES[case]
    r = http.post(route, json=body)
    assert r.status_code == status and r.json()["error"]["code"] and r.json()["error"]["message"], (r.status_code, r.text)
    _, context = grpc_call(http, getattr(task_grpc, method), task_pb, grpc_request)
    assert context.code.name == GRPC_NAME[status], (context.code, context.details)
    assert context.details == r.json()["error"]["message"]  # one contract: the same words on both
    if oip_case is not None:
        model, inputs, params = oip_case
        body, request = oip_request(model, inputs, params)
        r = http.post(f"/v2/models/{model}/infer", json=body)
        assert r.status_code == status and isinstance(r.json()["error"], str), (r.status_code, r.text)
        _, context = grpc_call(http, oip.ModelInfer, oip_pb, request)
        assert context.code.name == GRPC_NAME[status], (context.code, context.details)


def test_an_ordinary_request_is_answered_alike_on_every_protocol(models, http):
    text = "Friday, March 14, 2025"
    via_http = http.post("/v1/translate", json={"text": text}).json()
    response, context = grpc_call(http, task_grpc.Translate, task_pb, task_pb.TranslateRequest(texts=[text]))
    assert context.code is None and list(response.translations) == via_http["translations"] == ["vendredi 14 mars 2025"]
    body, request = oip_request("translator", [("text", "BYTES", [text.encode()])], {})
    assert http.post("/v2/models/translator/infer", json=body).json()["outputs"][0]["data"] == via_http["translations"]
    response, context = grpc_call(http, oip.ModelInfer, oip_pb, request)
    assert context.code is None and response.raw_output_contents[0][4:].decode() == via_http["translations"][0]

    top = http.post("/v1/classify", json={"image": b64(DIGIT), "top_k": 3}).json()["predictions"][0]
    response, _ = grpc_call(http, task_grpc.Classify, task_pb, task_pb.ClassifyRequest(images=[DIGIT], top_k=3))
    assert [p.label for p in response.predictions[0].predictions] == [p["label"] for p in top] and len(top) == 3


def test_task_routes_take_json_types_as_they_are_and_name_the_field_sent(http):
    """A string, a float or a boolean is not an integer, nor a number a flag (pydantic's lax mode took "3", 2.0
    and true as integers, and "yes" or 1 as true); an error names ``text`` when the request sent ``text``."""
    for body, field in [({"text": "Hi", "max_new_tokens": True}, "max_new_tokens"), ({"text": "Hi", "max_new_tokens": "3"}, "max_new_tokens"),
                        ({"text": "Hi", "beam_size": 2.0}, "beam_size"), ({"text": "Hi", "return_attention": "yes"}, "return_attention"),
                        ({"text": "Hi", "return_attention": 1}, "return_attention")]:
        r = http.post("/v1/translate", json=body)
        assert r.status_code == 422 and r.json()["error"]["message"].startswith(field), (body, r.text)
    r = http.post("/v1/classify", json={"image": b64(DIGIT), "top_k": 2.0})
    assert r.status_code == 422 and "top_k" in r.json()["error"]["message"]
    assert http.post("/v1/translate", json={"text": " "}).json()["error"]["message"] == "text: empty"
    assert http.post("/v1/translate", json={"texts": [" "]}).json()["error"]["message"] == "texts[0]: empty"
    # within the 512 characters, more tokens than the encoder reads: refused, not cut (it would translate less)
    r = http.post("/v1/translate", json={"text": "1 2 " * 100})
    assert r.status_code == 413 and r.json()["error"]["message"].startswith("text: 400 tokens; translator reads at most 255")


def test_a_multipart_picture_takes_the_fields_of_the_json_form(http):
    def post(**data):
        return http.post("/v1/classify", files={"image": ("digit.png", DIGIT, "image/png")}, data=data)

    assert len(post().json()["predictions"][0]) == 5
    assert len(post(top_k="1").json()["predictions"][0]) == 1
    for data, field in [({"top_k": "abc"}, "top_k"), ({"top_k": "11"}, "top_k"), ({"colour": "red"}, "colour")]:
        r = post(**data)
        assert r.status_code == 422 and r.json()["error"]["message"].startswith(field), (data, r.text)


def test_http_body_errors(http):
    assert http.post("/v1/translate", content=b"{bad").json()["error"]["code"] == "invalid_json"
    assert http.post("/v1/translate", content=b"[1]").status_code in (400, 422)
    r = http.post("/v1/translate", json={"text": "Hi", "colour": "red"})
    assert r.status_code == 422 and "colour" in r.json()["error"]["message"]
    r = http.post("/v1/translate", json={"text": "Hi"}, headers={"X-Request-Timeout-Ms": "soon"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header"
    assert http.post("/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert http.get("/v2/nothing").json() == {"error": "Not Found"}  # the protocol's own error shape under /v2
    r = http.get("/v2/models/translator/infer")
    assert r.status_code == 405 and isinstance(r.json()["error"], str)


def test_a_caption_past_the_decoders_positions_is_clamped(http):
    r = http.post("/v1/caption", json={"image": b64(SCENE), "max_new_tokens": 256})
    assert r.status_code == 200 and r.json()["model"] == "captioner"


def test_streams(http):
    with http.stream("POST", "/v1/translate/stream", json={"text": "Friday, March 14, 2025"}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == {"done": True, "translation": "vendredi 14 mars 2025", "tokens": 12}
    assert "".join(e.get("token", "") for e in events[:-1]) == events[-1]["translation"]
    assert http.post("/v1/translate/stream", json={"text": "Hi", "beam_size": 2}).status_code == 422
    # the fields of /v1/translate, as the contract says ("same, single text"): what a stream cannot do is refused by name
    with http.stream("POST", "/v1/translate/stream", json={"text": "Hi", "beam_size": 1, "return_attention": False}) as r:
        assert r.status_code == 200 and any(line.startswith("data: ") for line in r.iter_lines())
    r = http.post("/v1/translate/stream", json={"text": "Hi", "return_attention": True})
    assert r.status_code == 422 and "return_attention" in r.json()["error"]["message"]


def test_metadata_publishes_the_limits(http):
    meta = http.get("/v2/models/captioner").json()
    assert meta["parameters"]["max_new_tokens_decoded"] == 48 and meta["name"] == "captioner"
    assert http.get("/readyz").json() == {"ready": True, "models": {"translator": True, "classifier": True, "captioner": True,
                                                                   IMPORTED: True, IMPORTED_TRANSLATOR: True,
                                                                   IMPORTED_CAPTIONER: True}}


def test_an_imported_model_is_served_by_name_on_every_protocol_as_transformers_answers(http, tmp_path):
    """The tests' repository holds a tiny Hugging Face ViT imported beside the shipped three (conftest.py). Named in
    ``model``, it answers on the task route, task gRPC and the Open Inference Protocol with the probabilities
    ``transformers`` gives for the same picture through its own image processor; without ``model``, nothing changes."""
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor

    source = tiny_vit(tmp_path / "vit")  # the same seeded checkpoint the repository imported
    model, processor = ViTForImageClassification.from_pretrained(source).eval(), ViTImageProcessor.from_pretrained(source)
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    picture = encode_rgb(pixels)
    with torch_no_grad():
        expected = model(**processor(images=Image.fromarray(pixels), return_tensors="pt")).logits.softmax(-1)[0].numpy()
    order = [LABELS[i] for i in np.argsort(-expected)]

    answer = http.post("/v1/classify", json={"image": b64(picture), "top_k": 3, "model": IMPORTED}).json()
    assert answer["model"] == IMPORTED and [p["label"] for p in answer["predictions"][0]] == order
    assert np.allclose([p["score"] for p in answer["predictions"][0]], np.sort(expected)[::-1], atol=1e-5)
    response, context = grpc_call(http, task_grpc.Classify, task_pb, task_pb.ClassifyRequest(images=[picture], top_k=3, model=IMPORTED))
    assert context.code is None and response.model == IMPORTED and [p.label for p in response.predictions[0].predictions] == order
    meta = http.get(f"/v2/models/{IMPORTED}").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, -1, -1] and meta["outputs"][0]["shape"] == [-1, 3]
    tensor = {"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32],
              "data": (pixels.transpose(2, 0, 1) / 255.0).astype(np.float32).ravel().tolist()}
    outputs = http.post(f"/v2/models/{IMPORTED}/infer", json={"inputs": [tensor]}).json()["outputs"]
    assert np.allclose(outputs[0]["data"], expected, atol=1e-5) and outputs[1]["data"] == [order[0]]
    body, request = oip_request(IMPORTED, [("image_bytes", "BYTES", [picture])], {})
    response, context = grpc_call(http, oip.ModelInfer, oip_pb, request)
    assert context.code is None and np.allclose(np.frombuffer(response.raw_output_contents[0], np.float32), expected, atol=1e-5)
    index = http.post("/v2/repository/index").json()
    assert sorted(m["name"] for m in index) == sorted(["translator", "classifier", "captioner", IMPORTED, IMPORTED_TRANSLATOR,
                                                       IMPORTED_CAPTIONER]) and {m["state"] for m in index} == {"READY"}

    default = http.post("/v1/classify", json={"image": b64(DIGIT)}).json()
    assert default["model"] == "classifier" and {p["label"] for p in default["predictions"][0]} <= set("0123456789")
    assert http.post("/v1/classify", json={"image": b64(DIGIT), "model": "parrots"}).status_code == 404
    wrong = http.post("/v1/classify", json={"image": b64(DIGIT), "model": "translator"})
    assert wrong.status_code == 422 and "does translation, not classification" in wrong.json()["error"]["message"]
    _, context = grpc_call(http, task_grpc.Classify, task_pb, task_pb.ClassifyRequest(images=[DIGIT], model="parrots"))
    assert context.code.name == "NOT_FOUND"


def encode_rgb(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_an_imported_marian_model_translates_by_name_as_transformers_generates(http, tmp_path):
    """The tests' repository's tiny Marian model (random weights, so its outputs are noise and often run to the
    limit): named in ``model``, the task route, a stream, task gRPC and the Open Inference Protocol give the text of
    ``generate(num_beams=1, do_sample=False)`` through its own tokenizer, up to the decoder's 64 positions; with
    ``beam_size`` 4, the text of ``generate(num_beams=4)``."""
    from transformers import MarianMTModel, MarianTokenizer

    source = tiny_marian(tmp_path / "marian")  # the same seeded checkpoint the repository imported
    model, tokenizer = MarianMTModel.from_pretrained(source).eval(), MarianTokenizer.from_pretrained(source)
    texts = sentences(6, seed=11)
    with torch_no_grad():
        generated = model.generate(**tokenizer(texts, return_tensors="pt", padding=True), num_beams=1, do_sample=False,
                                   max_new_tokens=64)
    expected = tokenizer.batch_decode(generated, skip_special_tokens=True)

    answer = http.post("/v1/translate", json={"texts": texts, "model": IMPORTED_TRANSLATOR}).json()
    assert answer["model"] == IMPORTED_TRANSLATOR and answer["translations"] == expected
    with http.stream("POST", "/v1/translate/stream", json={"text": texts[0], "model": IMPORTED_TRANSLATOR}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["done"] and events[-1]["translation"] == expected[0]
    response, context = grpc_call(http, task_grpc.Translate, task_pb, task_pb.TranslateRequest(texts=texts, model=IMPORTED_TRANSLATOR))
    assert context.code is None and response.model == IMPORTED_TRANSLATOR and list(response.translations) == expected
    body, _ = oip_request(IMPORTED_TRANSLATOR, [("text", "BYTES", [t.encode() for t in texts])], {})
    assert http.post(f"/v2/models/{IMPORTED_TRANSLATOR}/infer", json=body).json()["outputs"][0]["data"] == expected
    shipped = http.post("/v1/translate", json={"text": "Friday, March 14, 2025"}).json()
    assert shipped == {"translations": ["vendredi 14 mars 2025"], "model": "translator", "tokens": [12]}
    wrong = http.post("/v1/translate", json={"text": "Hi", "model": IMPORTED})
    assert wrong.status_code == 422 and "does classification, not translation" in wrong.json()["error"]["message"]
    assert http.get(f"/v2/models/{IMPORTED_TRANSLATOR}").json()["parameters"]["max_new_tokens_decoded"] == 64

    more = sentences(24, seed=11)  # beam search: generate(num_beams=4), its length penalty (1.0) and EOS rule
    with torch_no_grad():
        beams = model.generate(**tokenizer(more, return_tensors="pt", padding=True), num_beams=4, do_sample=False,
                               max_new_tokens=64)
    expected = tokenizer.batch_decode(beams, skip_special_tokens=True)
    answer = http.post("/v1/translate", json={"texts": more, "model": IMPORTED_TRANSLATOR, "beam_size": 4}).json()
    assert answer["translations"] == expected
    response, context = grpc_call(http, task_grpc.Translate, task_pb,
                                  task_pb.TranslateRequest(texts=more, beam_size=4, model=IMPORTED_TRANSLATOR))
    assert context.code is None and list(response.translations) == expected


def test_an_imported_captioner_captions_by_name_as_transformers_generates(http, tmp_path):
    """The tests' repository's tiny ViT + GPT-2 captioner (random weights: its captions are noise, some end early,
    some run to the limit): named in ``model``, the task route, task gRPC and the Open Inference Protocol give the
    text of ``generate(num_beams=1, do_sample=False)`` on the pictures as its own image processor prepares them,
    decoded by its own tokenizer; with ``beam_size`` 4, the text of ``generate(num_beams=4)``. The attention map is
    over the patches of its grid (the class token left out)."""
    from PIL import Image
    from transformers import AutoTokenizer, ViTImageProcessor, VisionEncoderDecoderModel

    source = tiny_captioner(tmp_path / "captioner")  # the same seeded checkpoint the repository imported
    model = VisionEncoderDecoderModel.from_pretrained(source).eval()
    processor, tokenizer = ViTImageProcessor.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    rng = np.random.default_rng(5)
    pictures = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)] + [
        rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)]  # another size: resized as the processor does
    pixel_values = processor(images=[Image.fromarray(p) for p in pictures], return_tensors="pt").pixel_values

    def expected(beams: int) -> list[str]:
        with torch_no_grad():
            generated = model.generate(pixel_values=pixel_values, num_beams=beams, do_sample=False, max_new_tokens=40)
        return [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]

    greedy, beam = expected(1), expected(4)
    assert len(set(greedy)) > 1, greedy  # captions that depend on the picture
    encoded = [encode_rgb(p) for p in pictures]
    for picture, want, want_beam in zip(encoded, greedy, beam):
        answer = http.post("/v1/caption", json={"image": b64(picture), "model": IMPORTED_CAPTIONER}).json()
        assert answer == {"captions": [want], "model": IMPORTED_CAPTIONER}
        answer = http.post("/v1/caption", json={"image": b64(picture), "model": IMPORTED_CAPTIONER, "beam_size": 4}).json()
        assert answer["captions"] == [want_beam]
    response, context = grpc_call(http, task_grpc.Caption, task_pb, task_pb.CaptionRequest(image=encoded[0], model=IMPORTED_CAPTIONER,
                                                                                          return_attention=True))
    assert context.code is None and response.model == IMPORTED_CAPTIONER and list(response.captions) == greedy[:1]
    a = response.attention[0]
    assert (a.grid_rows, a.grid_cols, a.cols) == (4, 4, 16) and a.rows == len(a.row_tokens) and len(a.weights) == a.rows * 16
    body, _ = oip_request(IMPORTED_CAPTIONER, [("image", "BYTES", encoded)], {"beam_size": 4})
    assert http.post(f"/v2/models/{IMPORTED_CAPTIONER}/infer", json=body).json()["outputs"][0]["data"] == beam
    assert http.get(f"/v2/models/{IMPORTED_CAPTIONER}").json()["parameters"]["max_new_tokens_decoded"] == 40

    shipped = http.post("/v1/caption", json={"image": b64(SCENE)}).json()
    assert shipped["model"] == "captioner"
    wrong = http.post("/v1/caption", json={"image": b64(SCENE), "model": IMPORTED_TRANSLATOR})
    assert wrong.status_code == 422 and "does translation, not captioning" in wrong.json()["error"]["message"]
    assert http.post("/v1/caption", json={"image": b64(SCENE), "model": "blip"}).status_code == 404
