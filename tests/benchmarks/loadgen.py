"""Load generator for Open Inference Protocol servers (this service, Triton): HTTP or gRPC, closed or open loop.

    python tests/benchmarks/loadgen.py --url http://127.0.0.1:8000 --model classifier --concurrency 16
    python tests/benchmarks/loadgen.py --url 127.0.0.1:9000 --transport grpc --model classifier --rate 200

* closed loop: ``--concurrency C`` clients, each sending its next request as soon as the last one answered;
  measures the throughput a server sustains and the latency at that load.
* open loop: requests arrive as a Poisson process at ``--rate`` per second whether or not earlier ones have
  answered (real users do not wait for each other). Latency counts from the *scheduled* arrival, so a server that
  falls behind is charged for the queue it builds (no coordinated omission).

Both send the same OIP ``ModelInfer`` request (``/v2/models/<model>/infer`` JSON over HTTP, or
``inference.GRPCInferenceService/ModelInfer``), so one tool drives this service and Triton alike. Every answer is
checked (HTTP 200 / gRPC OK); failures are counted, never timed as successes. One process, asyncio (aiohttp,
grpc.aio): on a small machine the generator shares the CPUs with the server under test, the same for every server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def payload(model: str) -> dict:
    """The OIP request body (JSON form) for one item of ``model``."""
    if model == "classifier":
        from sklearn.datasets import load_digits

        image = (load_digits().images[0] / 16.0).astype(np.float32)
        return {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": image.reshape(-1).tolist()}],
                "outputs": [{"name": "probabilities"}]}
    if model == "translator":
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["I have three cats."]}]}
    # a no-op model: one small FP32 tensor in, the same out
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [float(i) for i in range(16)]}]}


def grpc_request(pb, model: str, body: dict):
    request = pb.ModelInferRequest(model_name=model)
    for t in body["inputs"]:
        tensor = request.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        if t["datatype"] == "BYTES":
            tensor.contents.bytes_contents.extend(x.encode() for x in t["data"])
        else:
            tensor.contents.fp32_contents.extend(t["data"])
    for o in body.get("outputs", []):
        request.outputs.add(name=o["name"])
    return request


class HttpClient:
    def __init__(self, url: str, model: str, timeout_s: float, application: str | None = None, body: dict | None = None) -> None:
        self.url, self.body = f"{url.rstrip('/')}/v2/models/{model}/infer", json.dumps(body or payload(model)).encode()
        self.timeout_s = timeout_s

    async def __aenter__(self):
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=False),
                                             timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    async def call(self) -> bool:
        async with self.session.post(self.url, data=self.body, headers={"content-type": "application/json"}) as r:
            await r.read()
            return r.status == 200


class GrpcClient:
    def __init__(self, target: str, model: str, timeout_s: float, application: str | None = None, body: dict | None = None) -> None:
        from proto import open_inference_pb2 as pb

        self.target, self.timeout_s = target.removeprefix("grpc://"), timeout_s
        self.request = grpc_request(pb, model, body or payload(model))
        self.metadata = (("application", application),) if application else None  # Ray Serve: which application

    async def __aenter__(self):
        import grpc

        from proto import open_inference_pb2_grpc

        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()

    async def call(self) -> bool:
        await self.stub.ModelInfer(self.request, timeout=self.timeout_s, metadata=self.metadata)
        return True


@dataclass
class Result:
    transport: str
    model: str
    mode: str  # "closed" | "open"
    load: float  # concurrency (closed) or offered requests/s (open)
    seconds: float
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    begin: float = 0.0  # perf_counter at the start of the measured window
    last_done: float = 0.0  # perf_counter when the last measured request finished

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "begin", "last_done")}
        # open loop: answers per second of the time it took to answer them (a server that falls behind finishes late)
        elapsed = max(self.seconds, self.last_done - self.begin)
        return out | {"rps": self.ok / elapsed, "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
                      "error_rate": self.errors / max(1, self.ok + self.errors)}


async def _timed(client, result: Result, started: float, record: bool) -> None:
    try:
        ok = await client.call()
    except Exception:
        ok = False
    if not record:
        return
    result.last_done = max(result.last_done, time.perf_counter())
    if ok:
        result.ok += 1
        result.latencies_ms.append((time.perf_counter() - started) * 1e3)
    else:
        result.errors += 1


async def closed_loop(client, concurrency: int, seconds: float, warmup_s: float) -> Result:
    result = Result("", "", "closed", concurrency, seconds)
    start = time.perf_counter()
    begin, end = start + warmup_s, start + warmup_s + seconds
    result.begin = begin

    async def worker():
        while (now := time.perf_counter()) < end:
            await _timed(client, result, now, now >= begin)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


async def open_loop(client, rate: float, seconds: float, warmup_s: float, seed: int = 0, max_in_flight: int = 4096) -> Result:
    """Poisson arrivals at ``rate``/s. Past ``max_in_flight`` outstanding requests an arrival counts as an error."""
    result = Result("", "", "open", rate, seconds)
    rng = random.Random(seed)
    start = time.perf_counter()
    begin, end = start + warmup_s, start + warmup_s + seconds
    result.begin = begin
    tasks: set[asyncio.Task] = set()
    at = start
    while True:
        at += rng.expovariate(rate)
        if at >= end:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_in_flight:
            result.errors += at >= begin
            continue
        task = asyncio.create_task(_timed(client, result, at, at >= begin))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    return result


async def run(transport: str, url: str, model: str, *, concurrency: int | None = None, rate: float | None = None,
              seconds: float = 10.0, warmup_s: float = 2.0, timeout_s: float = 30.0, application: str | None = None, body: dict | None = None) -> dict:
    """One measurement; ``body``: the OIP request (JSON form) instead of ``payload(model)``."""
    client = (HttpClient if transport == "http" else GrpcClient)(url, model, timeout_s, application, body)
    async with client:
        if rate:
            result = await open_loop(client, rate, seconds, warmup_s)
        else:
            result = await closed_loop(client, concurrency or 1, seconds, warmup_s)
    result.transport, result.model = transport, model
    return result.summary()


def measure(*args, **kwargs) -> dict:
    """``run`` on a fresh event loop (uvloop where installed, as servers use)."""
    try:
        import uvloop

        return uvloop.run(run(*args, **kwargs))
    except ImportError:
        return asyncio.run(run(*args, **kwargs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="http://host:port (HTTP) or host:port (gRPC)")
    parser.add_argument("--transport", choices=("http", "grpc"), default="http")
    parser.add_argument("--model", default="classifier", help="classifier, translator, or any other name (no-op payload)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=16, help="closed loop: clients (default 16)")
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time first (default 2)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument("--application", help="gRPC to Ray Serve with several applications: the `application` metadata")
    args = parser.parse_args(argv)
    summary = measure(args.transport, args.url, args.model, concurrency=args.concurrency, rate=args.rate,
                      seconds=args.seconds, warmup_s=args.warmup, timeout_s=args.timeout, application=args.application)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
