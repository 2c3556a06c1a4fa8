"""return_attention over HTTP and gRPC, and the client's attention picture."""

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from models import checkpoint
from models.data import digits as D
from proto import inference_pb2 as pb
from models.reference import cross_attention_maps
from service.images import encode_png

ROOT = Path(__file__).resolve().parents[1]


def quadrant(flat_patch: int, grid: list[int]) -> int:
    r, c = divmod(flat_patch, grid[1])
    return (r // (grid[0] // 2)) * 2 + c // (grid[1] // 2)


def test_translate_attention_is_the_models_cross_attention(url):
    texts = ["She speaks German.", "Friday, March 14, 2025"]
    body = requests.post(url + "/v1/translate", json={"texts": texts, "return_attention": True}).json()
    plain = requests.post(url + "/v1/translate", json={"texts": texts}).json()
    assert "attention" not in plain and body["translations"] == plain["translations"]
    model, tok = checkpoint.load("translator")
    for text, att, n in zip(texts, body["attention"], body["tokens"]):
        src = tok.encode(text) + [tok.eos_id]
        weights = np.array(att["weights"])
        assert att["source_tokens"] == tok.pieces(src) and len(att["target_tokens"]) == n
        assert weights.shape == (n, len(src))
        np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-3)
        # Same numbers as PyTorch's explicit attention path on the shipped weights.
        ids = model.generate(torch.tensor([src]))
        assert tok.pieces(ids[0]) == att["target_tokens"]
        reference = cross_attention_maps(model, torch.tensor([src]), ids, tok.bos_id)[0]
        np.testing.assert_allclose(weights, reference, atol=1e-4)


def test_caption_words_attend_to_their_quadrants(url):
    canvases, captions, layouts = D.make_scenes(D.digit_splits()["test"], 200, seed=21)
    two = [i for i, lay in enumerate(layouts) if len(lay) == 2][:30]
    hits = total = 0
    for i in two:
        image = base64.b64encode(encode_png(canvases[i])).decode()
        body = requests.post(url + "/v1/caption", json={"image": image, "return_attention": True}).json()
        att = body["attention"][0]
        assert att["grid"] == [4, 4] and len(att["weights"][0]) == 16
        for token, row in zip(att["target_tokens"], att["weights"]):
            word = token.lstrip("\u2581")
            if word in D.WORDS:
                total += 1
                hits += layouts[i].get(quadrant(int(np.argmax(row)), att["grid"])) == D.WORDS.index(word)
    assert total >= 50 and hits / total >= 0.9, (hits, total)


def test_grpc_attention_matches_http(stub, url):
    canvases, _, _ = D.make_scenes(D.digit_splits()["test"], 1, seed=3)
    data = encode_png(canvases[0])
    reply = stub.Caption(pb.CaptionRequest(image=data, return_attention=True), timeout=60)
    http = requests.post(url + "/v1/caption", json={"image": base64.b64encode(data).decode(), "return_attention": True}).json()
    (a,) = reply.attention
    assert (a.grid_rows, a.grid_cols) == (4, 4) and a.rows == len(http["attention"][0]["weights"]) and a.cols == 16
    assert list(a.row_tokens) == http["attention"][0]["target_tokens"]
    np.testing.assert_allclose(np.array(a.weights).reshape(a.rows, a.cols), http["attention"][0]["weights"], atol=1e-5)
    reply = stub.Translate(pb.TranslateRequest(texts=["nine"], return_attention=True), timeout=60)
    assert reply.attention[0].rows == reply.tokens[0] and list(reply.attention[0].col_tokens)[-1] == "</s>"


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_client_draws_the_caption_attention(service, tmp_path, transport):
    from PIL import Image

    canvases, captions, _ = D.make_scenes(D.digit_splits()["test"], 1, seed=11)
    scene = tmp_path / "scene.png"
    scene.write_bytes(encode_png(canvases[0]))
    out = tmp_path / "attention.png"
    flags = ["--grpc", "--grpc-target", f"127.0.0.1:{service.grpc_port}"] if transport == "grpc" else ["--url", service.url]
    proc = subprocess.run([sys.executable, "-m", "service.client", "caption", str(scene), "--attention", str(out), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == captions[0], proc.stderr
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 300 and picture.height > 150
    bad = subprocess.run([sys.executable, "-m", "service.client", "classify", str(scene), "--attention", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--attention" in bad.stderr
