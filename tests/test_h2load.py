"""tests/benchmarks/h2load.py: reading h2load's output (no h2load needed) and building the gRPC frame it sends."""

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))

import h2load  # noqa: E402

STDOUT = """finished in 8.00s, 1453.38 req/s, 406.04KB/s
requests: 11627 total, 11643 started, 11627 done, 11627 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 11627 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 3.17MB (3326314) total, 738.04KB (755755) headers (space savings 19.75%), 1010.55KB (1034803) data
"""
LOG = "".join(f"{1700000000000000 + i}\t200\t{d}\n" for i, d in enumerate([1000, 2000, 3000, 4000] * 25))


def test_every_answer_with_the_whole_response_message_counts():
    point = h2load.parse(STDOUT, LOG, answer_bytes=89, seconds=8.0)
    assert point["requests"] == 11627 and point["good"] == 11627 and point["errors"] == 0  # 1,034,803 = 11,627 × 89
    assert point["per_s"] == 11627 / 8.0
    assert point["p50_ms"] == 2.5 and 3.9 < point["p99_ms"] <= 4.0


def test_answers_without_their_message_are_errors():
    """A gRPC error is an HTTP 200 with no message: fewer data bytes than the answers would carry."""
    point = h2load.parse(STDOUT.replace("(1034803) data", "(89000) data"), LOG, answer_bytes=89, seconds=8.0)
    assert point["good"] == 1000 and point["errors"] == 10627 and point["per_s"] == 1000 / 8.0


def test_the_body_is_one_uncompressed_grpc_frame():
    frame = h2load.grpc_frame(b"abc")
    assert frame[:1] == b"\x00" and struct.unpack(">I", frame[1:5])[0] == 3 and frame[5:] == b"abc"
