"""Deadlines and cancellation under load: a deadline ends the work, and a thousand abandoned decodes leave nothing behind."""

import re
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import requests

from proto import inference_pb2 as pb
from tests.servicekit import NUMBER_TEXT, redeployed, rss_mb, sample, scrape, stats, wait_for

LONG = {"text": NUMBER_TEXT, "max_new_tokens": 256}  # 256 greedy steps: 0.1-0.15 s alone, longer among 16
# Sixteen such texts in one request: 4,096 tokens, ~0.5-1 s of decoding here. One text alone can finish inside
# a 100 ms deadline plus the ingress's 50 ms grace on a fast CPU (CI did once), so it would not test the deadline.
WIDE = {"texts": [NUMBER_TEXT] * 16, "max_new_tokens": 256}


def test_a_100ms_deadline_on_a_long_decode_answers_within_150ms(url, stub, long_decodes):
    http = requests.Session()
    http.post(url + "/v1/translate", json={"text": "warm"}, timeout=60)
    took = []
    for _ in range(10):
        started = time.monotonic()
        r = http.post(url + "/v1/translate", json=WIDE, headers={"X-Request-Timeout-Ms": "100"}, timeout=10)
        took.append(time.monotonic() - started)
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    # The 504 is sent at the deadline, not after the step running then; 150 ms holds nine in ten on a shared 2-vCPU CI
    # machine (one of ten took 156 ms there before the generator answered at the deadline itself); the decode itself
    # would take seconds, so the looser bound on the slowest still fails a deadline that is not kept.
    took_ms = sorted(round(t * 1e3) for t in took)
    print("took (ms):", took_ms)
    assert took_ms[-2] < 150 and took_ms[-1] < 300, took_ms
    for _ in range(5):
        started = time.monotonic()
        try:
            stub.Translate(pb.TranslateRequest(texts=WIDE["texts"], max_new_tokens=256), timeout=0.1)
            raise AssertionError("a 100 ms deadline on sixteen 256-token decodes answered OK")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 0.300  # the client's own deadline: what its gRPC library keeps
    # the server side stopped too: nothing left decoding shortly after
    wait_for(lambda: stats("translator")["active"] == 0 and stats("translator")["waiting"] == 0, 5, "the decodes to stop")


def test_a_thousand_cancelled_decodes_leave_no_trace(service, url, long_decodes):
    """Sequences cut off by their deadline free their KV cache: the translator replica's memory, the engine's queue
    and the in-flight gauges go back to where they were."""
    cancel_a_thousand(service, url)


def cancel_a_thousand(service, url):
    local = threading.local()

    def cancelled_request(_):
        if not hasattr(local, "http"):
            local.http = requests.Session()
        return local.http.post(url + "/v1/translate", json=LONG, headers={"X-Request-Timeout-Ms": "100"}, timeout=30).status_code

    # Each answer is a 504 (admitted, cut off by its deadline: what this is about) or a 503 (refused at once: with the
    # batch full, a place would come too late for a 100 ms deadline)
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(cancelled_request, range(100))) <= {503, 504}  # warm-up: allocator pools, connections
        wait_for(lambda: stats("translator")["active"] == 0, 10, "the warm-up decodes to stop")
        pid = stats("translator")["pid"]
        baseline = statistics.median(rss_mb(pid) for _ in range(3))
        finished_before = sum(stats("translator")["finished"].values())
        started = time.monotonic()
        codes = list(pool.map(cancelled_request, range(1000)))
        elapsed = time.monotonic() - started
    assert set(codes) <= {503, 504} and codes.count(504) >= 100, {c: codes.count(c) for c in set(codes)}
    wait_for(lambda: stats("translator")["active"] == 0 and stats("translator")["waiting"] == 0, 10, "the engine to empty")
    s = stats("translator")
    assert s["pid"] == pid  # the same replica throughout
    retired = sum(s["finished"].values()) - finished_before  # a request cut off before it reached the engine has none
    after = rss_mb(pid)
    assert after < baseline * 1.10, f"translator RSS {baseline:.0f} MB → {after:.0f} MB after 1,000 cancelled decodes"
    wait_for(lambda: sample(scrape(service), "ray_inference_requests_in_flight", model="translator") == 0, 20,
             "the in-flight gauge to return to 0")
    print(f"1,000 requests in {elapsed:.1f} s ({codes.count(504)} cut off by their deadline, {codes.count(503)} refused; "
          f"{retired} sequences retired by the engine); "
          f"translator RSS {baseline:.0f} → {after:.0f} MB")


def png_b64() -> str:
    import base64

    import numpy as np
    from sklearn.datasets import load_digits

    from service.images import encode_png

    return base64.b64encode(encode_png((load_digits().images[0] * 16).clip(0, 255).astype(np.uint8))).decode()


OVERLOAD_FACTOR = 2  # × the measured capacity; why not 10: the test's docstring
OVERLOAD_GOODPUT = 0.45  # × the measured capacity; the goal (tests/benchmarks/overload.py, 60 s) is 0.8: the docstring


def test_under_overload_goodput_holds_refusals_are_quick_and_no_client_is_left_waiting(service, url):
    """Overload: a mix of translations (55 % short, 20 % long, 20 % beam 4, 5 % streamed), each with a 5 s deadline,
    offered at OVERLOAD_FACTOR × the capacity a closed loop of 32 clients measured (tests/benchmarks/overload.py,
    shortened: 5 s of capacity, 10 s of overload, no recovery phase; about 25 s in all).

    Asserted: every answer is a 200, a 503 with Retry-After or a 504; no client is left waiting (no client timeout,
    none answered later than its deadline + 1 s; the script holds them to + 100 ms); refusals come back quickly (p50
    < 100 ms; the script holds their p99 to 50 ms); the goodput during the overload (200s completed per second of it) is
    at least OVERLOAD_GOODPUT × the capacity before it; /readyz is 200 afterwards. The goodput is what keeps admission
    honest: a service refusing work it could have done would pass the latency checks and fail this one. Admitted
    latency is not compared with idle latency: under overload a request may queue for most of its deadline.

    Why 3× and not the script's 10×: the mix's capacity here is ~80-115 requests/s, and 10× that is more than two
    vCPUs can send and turn away beside the decoder (2026-12-01, 880-960 requests/s offered: the Python load generator
    sent 670-720/s, 1,300-6,000 clients got no answer within 10 s, refusals took seconds; at 5×, 520/s, refusal p50
    0.8 s); at 3× (210-340/s) refusal p50 was 3-66 ms in three runs, the slower ones beside another benchmark using
    half a CPU. Why 2× and 0.45, not 0.8: on two vCPUs, turning requests away takes CPU the decoder would use (the
    ingress went from 0.31 to 0.47 of a CPU in the 60 s script's overload, the translator from 0.92 to 0.84), and this
    test compares windows of 5 and 10 s: at 3× it measured goodput 0.63× and 0.67× in two runs on 2026-12-01 (0.88×
    over the script's 60 s; at 2×, 0.74×), and 0.549× at 2× on the CI machine on 2026-12-02 (refusal p50 45 ms there).
    The bounds are loose on purpose: goodput catches an admission that turns away most of what the service could have
    done, the refusal p50 one that lets a request queue before refusing it (that takes its 1 s budget), not the noise of
    a shared machine; the script holds the issue's goals.
    """
    import asyncio

    from tests.benchmarks.overload import run

    limit = wait_for(lambda: (lambda st: (st["step_times"] or not st["auto_width"]) and st["batch_limit"])(stats("translator")), 30,
                     "the translator to settle its batch width")
    result = asyncio.run(run(url, deadline_ms=5000, long_tokens=64, concurrency=32, idle_requests=0, capacity_seconds=5,
                             overload_seconds=10, factor=OVERLOAD_FACTOR, recovery_windows=0))
    s = result["overload"]
    print(f"batch limit {limit}; capacity {result['capacity_per_s']:.1f}/s; {s['statuses']} at {result['offered_per_s']:.0f}/s "
          f"offered ({result['sent_per_s']:.0f}/s sent, lag p50/p99 {s['client_lag_p50_ms']:.0f}/{s['client_lag_p99_ms']:.0f} ms); "
          f"goodput {result['goodput_per_s']:.1f}/s ({result['goodput_ratio']:.2f}×); refused p50/p99/max {s['refused_p50_ms']:.0f}/"
          f"{s['refused_p99_ms']:.0f}/{s['refused_max_ms']:.0f} ms; longest wait {s['waited_max_ms']:.0f} ms")
    failed = [check for check, holds in {  # all of them, not the first to fail: which fail together says more
        "every answer 200, 503 or 504": set(s["statuses"]) <= {"200", "503", "504"},
        "every 503 with Retry-After": s["refused_without_retry_after"] == 0,
        "overloaded, and said so (some 503s)": s["statuses"].get("503", 0) > 0,
        "no client left waiting (none past its deadline + 1 s)": s["waited_max_ms"] < result["deadline_ms"] + 1000,
        "refusal p50 < 100 ms": s["refused_p50_ms"] < 100,
        f"goodput ≥ {OVERLOAD_GOODPUT:g}× capacity": result["goodput_per_s"] >= OVERLOAD_GOODPUT * result["capacity_per_s"],
        "/readyz 200 afterwards": result["readyz_after"] == 200,
    }.items() if not holds]
    assert not failed, (failed, {k: v for k, v in result.items() if k not in ("answers", "capacity_phase", "idle")})
    wait_for(lambda: stats("translator")["active"] == 0, 10, "the engine to drain")


def test_a_killed_replica_is_replaced_its_calls_are_retried_and_haproxy_counts_them(service, url):
    """SIGKILL one of two serving replicas under load. A replica holds the three models (one hop from client to
    model, as a Triton server does), so fault tolerance is a second replica: a call the dead process held is tried
    again on the live one (HAProxy's `retry-on empty-response`: inference calls have no side effects), the rest go
    to the live replica, and Serve starts a replacement. HAProxy's count of the calls (Serve's HAProxy request
    metrics, kept in a Python actor) survives the reload that follows the replica change. (With a single replica
    every request waits at Serve's fallback proxy until a new one is up: RELIABILITY.md, faults.)"""
    import collections
    import os
    import signal

    from ray import serve

    from service import config as serve_config

    body, deadline_s = {"image": png_b64()}, 5.0
    results, stop = [], threading.Event()

    def client():
        http = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            try:
                r = http.post(url + "/v1/classify", json=body, headers={"X-Request-Timeout-Ms": str(int(deadline_s * 1e3))},
                              timeout=deadline_s + 5)
                results.append((r.status_code, time.monotonic() - started, started))
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                # the connection the killed process held: refused, or cut in the middle of an answer's body (HAProxy
                # had passed the answer's head on, so it cannot retry)
                results.append(("reset", time.monotonic() - started, started))
            except requests.RequestException as e:  # a hang: a failure here
                results.append((type(e).__name__, time.monotonic() - started, started))

    def running() -> int:
        return serve.status().applications[serve_config.APP_NAME].deployments["Server"].replica_states.get("RUNNING", 0)

    def counted() -> dict[str, float]:  # HAProxy's count of inference calls (POST), by status
        text = scrape(service)
        return {code: sample(text, "ray_serve_num_http_requests_total", method="POST", status_code=code) or 0.0
                for code in set(re.findall(r'ray_serve_num_http_requests_total\{[^}]*method="POST"[^}]*status_code="(\w+)"', text))}

    two = {"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 256}
    with redeployed(service, autoscaling_config=two):
        wait_for(lambda: running() == 2, 180, "two replicas")
        wait_for(lambda: requests.get(url + "/readyz", timeout=30).status_code == 200, 60, "/readyz")
        time.sleep(12)  # Ray's agent exports every ~10 s: the count before, settled
        before = counted()
        old = stats("classifier")["pid"]
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            os.kill(old, signal.SIGKILL)
            killed_at = time.monotonic()
            time.sleep(3.0)
            cut_over = len(results)
            time.sleep(2.0)
            served_after = results[cut_over:]
            wait_for(lambda: running() == 2, 180, "a replacement replica")
            replaced = time.monotonic() - killed_at
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    codes = collections.Counter(code for code, _, _ in results)
    cut = sorted((round(at - killed_at, 2), round(t, 2), c) for c, t, at in results if c != 200)  # (sent, took, answer), s after the kill
    # A call the dead replica held is tried again on the live one (HAProxy's `retry-on empty-response`), so almost
    # every call is answered; a call caught in the instant of the kill can still come back as a reset or HAProxy's own
    # error page (500): at most the calls in flight then, sent within a moment of the kill, answered at once.
    assert set(codes) <= {200, "reset", 500}, (codes, cut)
    assert sum(n for c, n in codes.items() if c != 200) <= 4, cut
    assert all(abs(sent) < 0.5 and took < 1.0 for sent, took, _ in cut), cut
    assert max(took for _, took, _ in results) < deadline_s + 1.0, max(took for _, took, _ in results)
    assert served_after and all(code == 200 for code, _, _ in served_after), collections.Counter(c for c, _, _ in served_after)

    # HAProxy reloaded when the replica set changed (its own counters restart then); this count did not. It counts
    # from HAProxy's log datagrams, which the kernel drops when the Python actor reading them falls behind (measured:
    # 98.4-100 % of the 200s on two saturated vCPUs), so the 200s are held to 95 %; no 5xx beyond the clients' 500s (a
    # reset answers nothing, so nothing logs it).
    def counted_since() -> tuple[float, float]:
        now = counted()
        grew = {c: now[c] - before.get(c, 0.0) for c in now}
        return grew.get("200", 0.0), sum(v for c, v in grew.items() if c.startswith("5"))
    deadline = time.monotonic() + 60
    while counted_since()[0] < codes[200] and time.monotonic() < deadline:  # Ray's agent exports every ~10 s
        time.sleep(2)
    ok, errors = counted_since()
    assert 0.95 * codes[200] <= ok <= codes[200] and errors <= codes[500], (ok, errors, codes)
    print(f"killed replica {old}: {dict(codes)} over {len(results)} requests; HAProxy counted {ok:.0f} 200s and {errors:.0f} 5xx; Serve counted 2 replicas running again {replaced:.1f} s after the kill")


def test_restarting_the_application_keeps_no_state(service, url):
    """Delete and redeploy the whole application: new replicas, counters and queues from zero, same answers."""
    from ray import serve

    from service import config as serve_config

    text = "I have three cats."
    before = requests.post(url + "/v1/translate", json={"text": text}, timeout=60).json()["translations"][0]
    old = stats("translator")
    assert sum(old["finished"].values()) > 0
    serve.delete(serve_config.APP_NAME)
    serve_config.deploy(service.config)
    wait_for(lambda: requests.get(url + "/readyz", timeout=30).status_code == 200, 180, "the application to come back")
    new = stats("translator")
    assert new["pid"] != old["pid"] and new["active"] == 0 and new["waiting"] == 0 and sum(new["finished"].values()) == 0
    assert stats("classifier")["largest_batch"] == 0
    assert requests.post(url + "/v1/translate", json={"text": text}, timeout=60).json()["translations"][0] == before
