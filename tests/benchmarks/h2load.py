"""Closed-loop gRPC load from ``h2load`` (nghttp2's load generator, C): the gRPC counterpart of ``hey``, so that the
load generator's own CPU does not decide a gRPC result (``loadgen.py``'s Python gRPC client takes ~0.34 ms of CPU
a request, on the same CPUs as the server under test).

h2load speaks HTTP/2, not gRPC: it sends one prepared body (a gRPC frame: a zero flag byte, the message's length as
four big-endian bytes, the serialized ``ModelInferRequest``) with gRPC's headers, and counts HTTP statuses. A gRPC
error is an HTTP 200 too, with its status in the trailers and no message, so an answer is counted as a success only
by its bytes: every answer to the same request carries the same response message, whose length is learned first
with a real gRPC call (``response_length``); ``good`` is the response data h2load received ÷ that length.

Where Debian's ``nghttp2-client`` cannot be installed as root::

    cd /tmp && apt-get download nghttp2-client libev4 libjansson4 libjemalloc2
    for f in nghttp2-client_*.deb libev4_*.deb libjansson4_*.deb libjemalloc2_*.deb; do dpkg -x $f /tmp/h2x; done
    export PATH=/tmp/h2x/usr/bin:$PATH LD_LIBRARY_PATH=/tmp/h2x/usr/lib/x86_64-linux-gnu
"""

from __future__ import annotations

import re
import resource
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

OIP_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def available() -> bool:
    return shutil.which("h2load") is not None


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message frame."""
    return struct.pack(">BI", 0, len(message)) + message


def response_length(target: str, request, metadata: tuple = ()) -> int:
    """The bytes of one answer's gRPC frame, from a real call (which also checks the server answers at all)."""
    import grpc

    from proto import open_inference_pb2_grpc as pbg

    with grpc.insecure_channel(target) as channel:
        reply = pbg.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata, timeout=30)
    return len(grpc_frame(reply.SerializeToString()))


def parse(stdout: str, log: str, answer_bytes: int, seconds: float) -> dict:
    """h2load's summary and its per-request log (``start_us\\tstatus\\tduration_us``) → answers/s and latencies.
    ``good``: answers that carried a response message (see the module's docstring)."""
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", stdout).group(1))
    data = int(re.search(r"traffic: .*?\((\d+)\) data", stdout).group(1))
    durations = np.array([int(line.split()[2]) for line in log.splitlines() if line.strip()], dtype=np.float64) / 1e3
    good = min(done, data // answer_bytes)
    return {"requests": done, "good": good, "errors": done - good, "per_s": good / seconds,
            "p50_ms": float(np.percentile(durations, 50)) if len(durations) else float("nan"),
            "p99_ms": float(np.percentile(durations, 99)) if len(durations) else float("nan")}


def run(target: str, body: bytes, headers: dict[str, str], clients: int, seconds: float, answer_bytes: int) -> dict:
    """``clients`` connections, one call in flight on each, for ``seconds`` → ``parse``'s numbers and h2load's CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        path, log = Path(tmp) / "body.bin", Path(tmp) / "log.tsv"
        path.write_bytes(body)
        argv = ["h2load", "-D", f"{round(seconds * 1000)}ms", "-c", str(clients), "-m", "1", "-d", str(path),
                f"--log-file={log}", "-H", "content-type: application/grpc", "-H", "te: trailers"]
        for key, value in headers.items():
            argv += ["-H", f"{key}: {value}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        out = subprocess.run(argv + [f"http://{target}{OIP_METHOD}"], capture_output=True, text=True, check=True).stdout
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        point = parse(out, log.read_text(), answer_bytes, seconds)
    point["h2load_cpu"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall
    return point
