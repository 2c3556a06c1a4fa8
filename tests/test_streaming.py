"""Token streaming from the iteration-level loop: SSE on /v1/translate/stream and gRPC TranslateStream."""

import json
import threading
import time

import grpc
import pytest
import requests

from proto import inference_pb2 as pb
from tests.servicekit import NUMBER_TEXT, reconfigured, sample, scrape, stats, wait_for


def sse(url: str, body: dict, headers: dict | None = None, stop_after: int | None = None):
    """POST and read the event stream: (arrival times in s, events as (kind, payload))."""
    started, times, events = time.monotonic(), [], []
    with requests.post(url + "/v1/translate/stream", json=body, headers=headers, stream=True, timeout=60) as r:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = "message"
        for line in r.iter_lines():
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                times.append(time.monotonic() - started)
                events.append((kind, json.loads(line[6:])))
                kind = "message"
                if stop_after and len(events) >= stop_after:
                    break  # leaving the with-block closes the connection mid-stream
    return times, events


def full_translation(url: str, text: str) -> tuple[str, float]:
    started = time.monotonic()
    r = requests.post(url + "/v1/translate", json={"text": text, "max_new_tokens": 256}, timeout=60)
    return r.json()["translations"][0], time.monotonic() - started


def test_sse_tokens_arrive_while_decoding(url, long_decodes):
    expected, whole = full_translation(url, NUMBER_TEXT)  # 256 tokens: long_decodes
    times, events = sse(url, {"text": NUMBER_TEXT, "max_new_tokens": 256})
    tokens = [e["token"] for kind, e in events[:-1]]
    assert all(kind == "message" for kind, _ in events)
    assert events[-1][1] == {"done": True, "translation": expected, "tokens": 256}
    assert "".join(tokens) == expected and len(tokens) > 200
    # The first token is in the client's hands long before a whole (non-streamed) decode of the same text ends.
    assert times[0] < 0.5 * whole, (times[0], whole)
    assert times[-1] - times[0] > 0.5 * whole  # and the rest trickles in as it is decoded, not all at once


def test_grpc_stream_tokens_arrive_while_decoding(stub, url, long_decodes):
    expected, whole = full_translation(url, NUMBER_TEXT)
    started, times, chunks = time.monotonic(), [], []
    for chunk in stub.TranslateStream(pb.TranslateRequest(texts=[NUMBER_TEXT], max_new_tokens=256), timeout=60):
        times.append(time.monotonic() - started)
        chunks.append(chunk)
    assert chunks[-1].done and chunks[-1].translation == expected
    assert "".join(c.token for c in chunks[:-1]) == expected
    assert times[0] < 0.5 * whole, (times[0], whole)


def cancelled() -> int:
    return stats("translator")["finished"].get("cancelled", 0)


@pytest.fixture
def busy_translator(service, url):
    """31 long decodes (``ignore_eos``: to max_new_tokens) in the background, one short of the engine's batch of 32 so that the stream joins the
    running batch at once: every step is slower, the stream lasts ~1 s, and a disconnect cannot be overtaken by
    the sequence simply finishing. (With a full batch the stream would wait for the background to finish and
    then run alone, fast enough to end before the cancel lands.) The width is max_batch_size meanwhile, not the
    measured one (applied in place)."""
    with reconfigured(service, "translator", {"max_batch_size": 32, "auto_width": False, "ignore_eos": True}):
        # every setting in force, not only the width: a measured width of 32 already read 32 before the reconfigure
        # reached the replica, and the 31 decodes sent then ended at EOS before they could be counted
        wait_for(lambda: (lambda s: s["batch_limit"] == 32 and s["ignore_eos"] and not s["auto_width"])(
            stats("translator")), what="the width to be 32, without EOS")
        width = stats("translator")["max_batch_size"] - 1
        thread = threading.Thread(target=requests.post, args=(url + "/v1/translate",),
                                  kwargs={"json": {"texts": [NUMBER_TEXT] * width, "max_new_tokens": 256}, "timeout": 120})
        thread.start()
        wait_for(lambda: stats("translator")["active"] >= width, timeout=10, what="the background decodes")
        yield
        thread.join()


def test_sse_disconnect_frees_the_sequence(service, url, busy_translator):
    before = cancelled()
    times, events = sse(url, {"text": NUMBER_TEXT, "max_new_tokens": 256}, stop_after=3)
    assert len(events) == 3 and "token" in events[0][1]
    wait_for(lambda: cancelled() > before, timeout=2, what="the stream's sequence to be cancelled")
    # The in-flight gauge comes back down (Ray exports it every ~10 s).
    wait_for(lambda: sample(scrape(service), "ray_inference_requests_in_flight", model="translator") == 0,
             timeout=60, what="in-flight translator requests back to 0")


def test_grpc_cancel_frees_the_sequence(stub, busy_translator):
    before = cancelled()
    call = stub.TranslateStream(pb.TranslateRequest(texts=[NUMBER_TEXT], max_new_tokens=256), timeout=60)
    first = next(call)
    assert first.token and not first.done
    call.cancel()
    wait_for(lambda: cancelled() > before, timeout=2, what="the stream's sequence to be cancelled")


@pytest.mark.parametrize("body,status", [
    ({"texts": ["nine"]}, 422),
    ({"text": "nine", "beam_size": 2}, 422),
    ({"text": "x" * 513}, 413),
    ({"text": "   "}, 400),
    ({"text": "nine", "max_new_tokens": 0}, 422),
])
def test_sse_bad_input_is_refused_before_streaming(url, body, status):
    r = requests.post(url + "/v1/translate/stream", json=body, timeout=30)
    assert r.status_code == status and "error" in r.json(), r.text


def test_sse_deadline_is_504_or_an_error_event(url, long_decodes):
    # 256 greedy steps take 0.1-0.15 s here; 30 ms stays well short of them on a CPU twice as fast
    r = requests.post(url + "/v1/translate/stream", json={"text": NUMBER_TEXT, "max_new_tokens": 256},
                      headers={"X-Request-Timeout-Ms": "30"}, stream=True, timeout=30)
    if r.status_code == 504:  # the deadline passed before the first token
        assert r.json()["error"]["code"] == "deadline_exceeded"
        return
    assert r.status_code == 200
    lines = [line for line in r.iter_lines() if line]
    assert b"event: error" in lines and b"deadline_exceeded" in lines[-1], lines[-3:]


@pytest.mark.parametrize("message", [
    pb.TranslateRequest(texts=["one", "two"]),
    pb.TranslateRequest(),
    pb.TranslateRequest(texts=["one"], beam_size=3),
    pb.TranslateRequest(texts=["x" * 513]),
])
def test_grpc_stream_bad_input_is_invalid_argument(stub, message):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.TranslateStream(message, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
