"""Ordinary concurrent load on the real service: clients queue for the decoders, none is refused below capacity,
and one client's parameters never fail another's request."""

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from models.data import digits as D
from proto import inference_pb2 as pb
from service.images import encode_png
from tests.servicekit import stats


def png_b64(array) -> str:
    return base64.b64encode(encode_png(array)).decode()


def post_all(url: str, bodies: list[tuple[str, dict]]) -> list[requests.Response]:
    """Send every (route, body) at once, each from its own client."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda rb: requests.post(url + rb[0], json=rb[1], timeout=60), bodies))


def test_eight_concurrent_ordinary_translations_are_all_answered(url):
    """The first engine answered 11 of 200 at a concurrency of 4 and refused the rest (503: 'would wait about inf ms')."""
    expected = requests.post(url + "/v1/translate", json={"text": "Friday, March 14, 2025"}).json()["translations"]
    for _ in range(3):
        replies = post_all(url, [("/v1/translate", {"text": "Friday, March 14, 2025"})] * 8)
        assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
        assert all(r.json()["translations"] == expected for r in replies)


def test_beam_and_greedy_requests_from_different_clients_decode_together(url):
    texts = ["Friday, March 14, 2025", "nine hundred and twelve", "She speaks German.", "Thursday, April 12, 1973"]
    alone = {(t, b): requests.post(url + "/v1/translate", json={"text": t, "beam_size": b}).json()["translations"]
             for t in texts for b in (1, 4)}
    before = stats("translator")["finished"].get("eos", 0)
    bodies = [("/v1/translate", {"text": t, "beam_size": b}) for t in texts for b in (1, 4)] * 3
    replies = post_all(url, bodies)
    assert [r.status_code for r in replies] == [200] * len(bodies)
    assert [r.json()["translations"] for r in replies] == [alone[(b["text"], b["beam_size"])] for _, b in bodies]
    assert stats("translator")["finished"].get("eos", 0) - before == len(bodies)  # all through the one engine


def test_a_caption_asking_for_256_tokens_on_noise_fails_no_one(url, stub):
    """The captioner has 48 positions: a longer max_new_tokens is clamped there (finish "length"), on HTTP and gRPC
    alike, and the ordinary captions sent beside it are answered (the first engine ran position 48 and ONNX Runtime's
    GatherND failed the whole batch: 500s for every client in it)."""
    canvases, _, _ = D.make_scenes(D.digit_splits()["test"], 8, seed=5)
    noise = png_b64(np.random.default_rng(0).integers(0, 256, (32, 32)))
    expected = [requests.post(url + "/v1/caption", json={"image": png_b64(c)}).json()["captions"] for c in canvases]
    bodies = [("/v1/caption", {"image": noise, "max_new_tokens": 256})] + [("/v1/caption", {"image": png_b64(c)}) for c in canvases]
    replies = post_all(url, bodies)
    assert [r.status_code for r in replies] == [200] * 9, [r.text for r in replies]
    assert [r.json()["captions"] for r in replies[1:]] == expected
    assert 1 <= len(replies[0].json()["captions"][0].split()) <= 48  # at most 48 tokens, each at most a word
    reply = stub.Caption(pb.CaptionRequest(image=base64.b64decode(noise), max_new_tokens=256), timeout=30)
    assert 1 <= len(reply.captions[0].split()) and stats("captioner")["max_new_tokens_limit"] == 48


def test_a_burst_of_sixty_four_clients_on_every_decoder_route_is_all_answered(url):
    """64 clients at once, greedy and beam, translations and captions: they wait their turn; no 503."""
    canvases, _, _ = D.make_scenes(D.digit_splits()["test"], 4, seed=9)
    bodies = ([("/v1/translate", {"text": "Friday, March 14, 2025", "beam_size": b}) for b in (1, 4)] * 16
              + [("/v1/caption", {"image": png_b64(c), "beam_size": b}) for c in canvases for b in (1, 4)] * 4)
    started = time.monotonic()
    replies = post_all(url, bodies)
    assert [r.status_code for r in replies] == [200] * 64, {r.status_code: r.text for r in replies}
    assert time.monotonic() - started < 30
