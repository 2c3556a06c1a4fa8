"""Imported Hugging Face models through the real service (a local Ray instance with Serve, as `make run` deploys it):
the tests' repository holds a tiny ViT classifier, Marian translator and ViT + GPT-2 captioner beside the shipped three
(conftest.py); each, named, answers over task HTTP, task gRPC and the Open Inference Protocol (HTTP and gRPC, with
Triton's own clients) what ``transformers`` computes on the same weights, and the shipped models answer as before."""

import base64
import io

import numpy as np
import pytest
import requests

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test extra: `make test` installs it")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra: `make test` installs it")
pytest.importorskip("transformers", reason="transformers is the [hf] extra; `make test` installs it")

from proto import inference_pb2 as pb  # noqa: E402
from tests.hfkit import IMPORTED, IMPORTED_CAPTIONER, IMPORTED_TRANSLATOR, sentences, tiny_captioner, tiny_marian, tiny_vit  # noqa: E402


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", params=["http", "grpc"])
def oip(request, service):
    """An Open Inference Protocol client of Triton's, over HTTP or gRPC, and its module."""
    if request.param == "http":
        c, lib = httpclient.InferenceServerClient(url=service.url.removeprefix("http://"), network_timeout=120), httpclient
    else:
        c, lib = grpcclient.InferenceServerClient(url=f"127.0.0.1:{service.grpc_port}"), grpcclient
    yield c, lib
    c.close()


def bytes_input(lib, name: str, items: list[bytes]):
    tensor = lib.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_))
    return tensor


def test_an_imported_classifier_answers_by_name(url, stub, oip, tmp_path):
    import torch
    from PIL import Image
    from transformers import ViTForImageClassification, ViTImageProcessor

    source = tiny_vit(tmp_path / "vit")  # the same seeded checkpoint the repository imported
    model, processor = ViTForImageClassification.from_pretrained(source).eval(), ViTImageProcessor.from_pretrained(source)
    pixels = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    with torch.no_grad():
        expected = model(**processor(images=[Image.fromarray(p) for p in pixels], return_tensors="pt")).logits.softmax(-1).numpy()
    pictures = [png(p) for p in pixels]
    body = requests.post(url + "/v1/classify", json={"images": [base64.b64encode(p).decode() for p in pictures], "top_k": 3,
                                                     "model": IMPORTED}, timeout=60).json()
    assert body["model"] == IMPORTED
    assert np.allclose([[x["score"] for x in row] for row in body["predictions"]], -np.sort(-expected, axis=1), atol=1e-5)
    reply = stub.Classify(pb.ClassifyRequest(images=pictures, top_k=3, model=IMPORTED), timeout=60)
    assert reply.model == IMPORTED and np.allclose([[x.score for x in row.predictions] for row in reply.predictions],
                                                   -np.sort(-expected, axis=1), atol=1e-5)
    c, lib = oip
    result = c.infer(IMPORTED, [bytes_input(lib, "image_bytes", pictures)])
    assert np.allclose(result.as_numpy("probabilities"), expected, atol=1e-5)


def test_an_imported_translator_answers_by_name(url, stub, oip, tmp_path):
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    source = tiny_marian(tmp_path / "marian")
    model, tokenizer = MarianMTModel.from_pretrained(source).eval(), MarianTokenizer.from_pretrained(source)
    texts = sentences(5, seed=21)
    with torch.no_grad():
        greedy = model.generate(**tokenizer(texts, return_tensors="pt", padding=True), num_beams=1, do_sample=False, max_new_tokens=64)
        beam = model.generate(**tokenizer(texts, return_tensors="pt", padding=True), num_beams=4, do_sample=False, max_new_tokens=64)
    greedy, beam = (tokenizer.batch_decode(g, skip_special_tokens=True) for g in (greedy, beam))
    body = requests.post(url + "/v1/translate", json={"texts": texts, "model": IMPORTED_TRANSLATOR}, timeout=60).json()
    assert body["model"] == IMPORTED_TRANSLATOR and body["translations"] == greedy
    reply = stub.Translate(pb.TranslateRequest(texts=texts, beam_size=4, model=IMPORTED_TRANSLATOR), timeout=60)
    assert reply.model == IMPORTED_TRANSLATOR and list(reply.translations) == beam
    c, lib = oip
    result = c.infer(IMPORTED_TRANSLATOR, [bytes_input(lib, "text", [t.encode() for t in texts])])
    assert [x.decode() for x in result.as_numpy("translation")] == greedy


def test_an_imported_captioner_answers_by_name(url, stub, oip, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, ViTImageProcessor, VisionEncoderDecoderModel

    source = tiny_captioner(tmp_path / "captioner")
    model = VisionEncoderDecoderModel.from_pretrained(source).eval()
    processor, tokenizer = ViTImageProcessor.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    pixels = [np.random.default_rng(40 + i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(4)]
    values = processor(images=[Image.fromarray(p) for p in pixels], return_tensors="pt").pixel_values
    with torch.no_grad():
        greedy = model.generate(pixel_values=values, num_beams=1, do_sample=False, max_new_tokens=40)
        beam = model.generate(pixel_values=values, num_beams=4, do_sample=False, max_new_tokens=40)
    greedy, beam = ([t.strip() for t in tokenizer.batch_decode(g, skip_special_tokens=True)] for g in (greedy, beam))
    pictures = [png(p) for p in pixels]
    for picture, want in zip(pictures, greedy):
        body = requests.post(url + "/v1/caption", json={"image": base64.b64encode(picture).decode(), "model": IMPORTED_CAPTIONER},
                             timeout=60).json()
        assert body == {"captions": [want], "model": IMPORTED_CAPTIONER}
    for picture, want in zip(pictures, beam):
        reply = stub.Caption(pb.CaptionRequest(image=picture, beam_size=4, model=IMPORTED_CAPTIONER), timeout=60)
        assert reply.model == IMPORTED_CAPTIONER and list(reply.captions) == [want]
    c, lib = oip
    result = c.infer(IMPORTED_CAPTIONER, [bytes_input(lib, "image", pictures)])
    assert [x.decode() for x in result.as_numpy("caption")] == greedy


def test_the_repository_index_lists_every_model_and_the_shipped_ones_answer_as_before(url, stub):
    index = requests.post(url + "/v2/repository/index", timeout=10).json()
    assert sorted(m["name"] for m in index) == sorted(["translator", "classifier", "captioner", IMPORTED, IMPORTED_TRANSLATOR,
                                                       IMPORTED_CAPTIONER])
    assert requests.get(url + "/readyz", timeout=10).json()["models"][IMPORTED_CAPTIONER] is True
    body = requests.post(url + "/v1/translate", json={"text": "Friday, March 14, 2025"}, timeout=60).json()
    assert body == {"translations": ["vendredi 14 mars 2025"], "model": "translator", "tokens": [12]}
    assert stub.Caption(pb.CaptionRequest(image=png(np.zeros((32, 32), np.uint8))), timeout=60).model == "captioner"
