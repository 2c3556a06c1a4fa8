"""What batching buys: the classifier served with dynamic batching, and iteration-level vs static decoding.

    python tests/benchmarks/batching_bench.py           # → tests/benchmarks/results/batching_bench.{md,png,json}
    python tests/benchmarks/batching_bench.py --quick

1. Classifier (dynamic batching, ``service/classifier.py``): the service as ``make run`` starts it, driven by ``loadgen.py``
   in a closed loop at concurrency 64 over gRPC and HTTP (Open Inference Protocol), with requests of 1 image and
   of 32 images; the same with ``max_batch_size: 1`` (no batching across requests: a request's own images always run
   together, so with 32 images a request that setting still runs batches of 32); and
   ONNX Runtime offline on batches of 32 in this process with the service's session options. Goals: served ≥ 0.9×
   offline batch-32 images/s, and ≥ 4× batch-1 serving.
2. Translation, iteration-level vs static batching: the decode engine (``service/engine/``) in-process, fed a
   Poisson stream of mixed lengths (test sentences, each decoding as many tokens as its reference translation has,
   ~5-20, and one request in five decoding 128 tokens) at the same offered rate for both schedules, 25 %, 50 % and 90 %
   of the capacity (``--fractions``; what the iteration-level engine completes when 600 requests arrive at once);
   latency from arrival to the last token. ``static`` admits new requests only when the running batch has emptied (request-level
   batching); ``iteration`` admits them at the next step. Goal: iteration p50 ≤ 0.5× static at equal throughput.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from frontend_bench import Process, answers, cpu_name, free_port  # noqa: E402

# The retrained translator (2026-12-02) ends every input within ~20 tokens (before, this text looped to the length
# limit): lengths are now set, not found. The engine runs with ignore_eos, and each request decodes exactly its
# max_new_tokens: a test sentence as many as its reference translation has, a long request LONG_TOKENS.
LOOPING_TEXT = "nine hundred ninety-nine thousand nine hundred ninety-nine, " * 8
LONG_TOKENS = 128


# ------------------------------------------------------------------------------------------- 1. classifier


def payload_of(n: int) -> dict:
    from sklearn.datasets import load_digits

    images = (load_digits().images[:n] / 16.0).astype(np.float32)
    return {"inputs": [{"name": "images", "datatype": "FP32", "shape": [n, 1, 8, 8], "data": images.reshape(-1).tolist()}],
            "outputs": [{"name": "probabilities"}]}


def offline_images_per_s(repository: Path, batch: int, seconds: float) -> float:
    from service.runtime import create_session

    session = create_session(repository / "classifier" / "1" / "model.onnx")  # the service's options
    from sklearn.datasets import load_digits

    images = (load_digits().images[:batch] / 16.0).astype(np.float32)[:, None]
    session.run(None, {"images": images})
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"images": images})
        n += batch
    return n / (time.perf_counter() - started)


def serve_classifier(args, workdir: Path) -> list[dict]:
    """The service started as ``make run`` starts it, once with the file's batching and once with
    ``max_batch_size: 1`` (the same file otherwise, through ``SERVE_CONFIG``)."""
    from service import config as serve_config

    rows = []
    for batch_setting in (64, 1):
        config = serve_config.load()
        serve_config.deployment(config, "Server")["user_config"]["classifier"]["max_batch_size"] = batch_setting
        path = workdir / f"batch{batch_setting}.yaml"
        path.write_text(yaml.safe_dump(config))
        http, grpc = free_port(), free_port()
        env = dict(os.environ) | {"MODEL_REPOSITORY": str(args.repository), "SERVE_CONFIG": str(path), "SERVE_HTTP_PORT": str(http),
                                  "SERVE_GRPC_PORT": str(grpc), "METRICS_PORT": str(free_port())}
        url = f"http://127.0.0.1:{http}"
        proc = Process(f"service (max_batch_size {batch_setting})", [sys.executable, "-m", "service.app"], env,
                       lambda: answers(url, "classifier"), workdir / f"service{batch_setting}.log")
        try:
            for images in (1, 32):
                body = payload_of(images)
                for transport in ("grpc", "http"):
                    target = url if transport == "http" else f"127.0.0.1:{grpc}"
                    row = loadgen.measure(transport, target, "classifier", concurrency=args.concurrency, seconds=args.seconds,
                                          warmup_s=args.warmup, body=body)
                    row |= {"max_batch_size": batch_setting, "images_per_request": images, "images_per_s": row["rps"] * images}
                    rows.append(row)
                    print(f"  served max_batch_size {batch_setting:2d}, {images:2d} image(s)/request, {transport:4s}: "
                          f"{row['images_per_s']:8.0f} images/s  ({row['rps']:.0f} req/s, p50 {row['p50_ms']:.1f} ms, errors {row['errors']})", flush=True)
        finally:
            proc.stop()
    return rows


# ---------------------------------------------------------------------------------------- 2. translation


def mixed_load(tokenizer, runtime, n: int, rate: float, long_every: int, seed: int) -> list[tuple[float, np.ndarray, int]]:
    from models.data import text as text_data

    rng = random.Random(seed)
    test = text_data.build_corpus()["test"]
    max_src = runtime.config["encoder"]["max_source_tokens"]
    encode = lambda t: np.array(tokenizer.encode(t)[: max_src - 1] + [tokenizer.eos_id], dtype=np.int64)
    at, load = 0.0, []
    for i in range(n):
        at += rng.expovariate(rate)
        if i % long_every == long_every - 1:
            load.append((at, encode(LOOPING_TEXT), LONG_TOKENS))
        else:
            source, reference = rng.choice(test)
            load.append((at, encode(source), max(1, len(tokenizer.encode(reference)))))
    return load


def throughput_width(runtime, max_batch: int) -> int:
    """The width the service's engine chooses at start (where tokens/s stop rising, up to ``max_batch``), measured once:
    every row then runs at it, so the two schedules differ only in when they admit."""
    from service.engine import DecodeEngine, EngineOptions

    engine = DecodeEngine(runtime, EngineOptions(max_batch=max_batch)).start()
    engine.stop()
    return engine.batch_limit


def run_schedule(runtime, load, scheduling: str, width: int) -> dict:
    from service.engine import DecodeEngine, EngineOptions, Sequence

    # the service's engine at the width measured once, with no queue-time budget: both schedules must serve every
    # request for their latencies to compare at equal throughput
    engine = DecodeEngine(runtime, EngineOptions(max_batch=width, auto_width=False, max_queue=100_000,
                                                 max_queue_wait_s=3600, scheduling=scheduling, ignore_eos=True)).start()
    latencies, lengths, done = [], [], threading.Event()
    remaining = [len(load)]
    lock = threading.Lock()
    try:
        start = time.perf_counter()
        for at, source, max_new in load:
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            seq = Sequence(source, max_new)
            arrival = start + at

            def finished(future, arrival=arrival):
                with lock:
                    latencies.append(time.perf_counter() - arrival)
                    lengths.append(len(future.result()))
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

            seq.future.add_done_callback(finished)
            engine.submit(seq)
        done.wait()
        elapsed = time.perf_counter() - start
    finally:
        engine.stop()
    lat = np.asarray(latencies) * 1e3
    return {"scheduling": scheduling, "requests": len(load), "offered_rps": len(load) / load[-1][0],
            "completed_rps": len(load) / elapsed, "tokens_per_s": sum(lengths) / elapsed, "steps": engine.steps,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_tokens": float(np.mean(lengths)), "width": engine.batch_limit}


def translation(args) -> list[dict]:
    from service.runtime import EncoderDecoderRuntime
    from models.data.tokenizer import Tokenizer

    directory = args.repository / "translator" / "1"
    runtime, tokenizer = EncoderDecoderRuntime(directory), Tokenizer.load(directory)
    rows = []
    args.width = throughput_width(runtime, args.max_batch)
    print(f"  width: {args.width} rows (of at most {args.max_batch})", flush=True)
    if args.fractions:  # rates as fractions of the capacity: what the iteration-level engine completes when flooded
        flood = mixed_load(tokenizer, runtime, 600, 10_000.0, 5, seed=1)
        capacity = run_schedule(runtime, flood, "iteration", args.width)["completed_rps"]
        args.capacity = capacity
        args.rates = [round(f * capacity, 1) for f in args.fractions]
        print(f"  capacity (600 requests at once, iteration-level): {capacity:.1f} req/s → rates {args.rates}", flush=True)
    for rate in args.rates:
        load = mixed_load(tokenizer, runtime, int(rate * args.decode_seconds), rate, 5, seed=0)
        for scheduling in ("static", "iteration"):
            row = run_schedule(runtime, load, scheduling, args.width) | {"rate": rate}
            rows.append(row)
            print(f"  translation {scheduling:9s} at {rate:g} req/s offered: completed {row['completed_rps']:.1f} req/s, "
                  f"{row['tokens_per_s']:.0f} tokens/s, p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- report


def write_report(classifier: list[dict], offline: float, decode: list[dict], args, seconds: float) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "batching_bench.json").write_text(json.dumps({"classifier": classifier, "offline_batch32_images_per_s": offline,
                                                         "translation": decode}, indent=2))
    import onnxruntime
    import ray

    lines = [
        "# Batching gains", "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, no GPU; service, load generator and engine on the same machine",
        f"- versions: Ray {ray.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}",
        f"- command: `{' '.join(['python tests/benchmarks/batching_bench.py', *sys.argv[1:]])}` ({seconds:.0f} s), {dt.date.today()}", "",
        "## Classifier: served with dynamic batching vs offline and vs batch-1 serving", "",
        f"Closed loop at concurrency {args.concurrency}, {args.seconds:g} s per cell after {args.warmup:g} s warm-up "
        f"(`loadgen.py`, Open Inference Protocol). Offline: ONNX Runtime on batches of 32, same session options: "
        f"**{offline:,.0f} images/s**." + (" (These classifier rows are the previous run's: `--skip-classifier`.)"
                                           if args.skip_classifier else ""), "",
        "| images / request | transport | batched images/s | × offline batch-32 | max_batch_size 1 images/s | batched × batch-1 | batched p50 ms | batch-1 p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for images in (1, 32):
        for transport in ("grpc", "http"):
            b = next(r for r in classifier if (r["images_per_request"], r["transport"], r["max_batch_size"]) == (images, transport, 64))
            one = next(r for r in classifier if (r["images_per_request"], r["transport"], r["max_batch_size"]) == (images, transport, 1))
            lines.append(f"| {images} | {transport} | {b['images_per_s']:,.0f} | {b['images_per_s'] / offline:.2f}× | "
                         f"{one['images_per_s']:,.0f} | {b['images_per_s'] / one['images_per_s']:.2f}× | {b['p50_ms']:.1f} | {one['p50_ms']:.1f} |")
    lines += [
        "", "## Translation: iteration-level vs static batching, Poisson mixed-length load", "",
        f"Decode engine in-process, greedy, {decode[0]['width'] if decode else '?'} rows a step for both schedules (the width the service's "
        f"engine chose at start, of at most {args.max_batch}, measured once); {args.decode_seconds:g} s of arrivals per rate; "
        f"one request in five decodes {LONG_TOKENS} tokens, the rest are test sentences decoding as many tokens as their "
        "reference translations have (~5-20; `ignore_eos`, so both schedules do exactly the same work).", "",
        "| offered req/s | schedule | completed req/s | tokens/s | p50 ms | p95 ms | p99 ms | p50 iteration/static | p99 iteration/static |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if args.capacity:
        lines[-4] += (f" Capacity (600 requests at once, iteration-level): "
                      f"**{args.capacity:.1f} req/s**; offered rates are {', '.join(f'{f:g}' for f in args.fractions)} × that.")
    for rate in args.rates:
        s = next(r for r in decode if (r["rate"], r["scheduling"]) == (rate, "static"))
        i = next(r for r in decode if (r["rate"], r["scheduling"]) == (rate, "iteration"))
        for r in (s, i):
            ratio = f"{i['p50_ms'] / s['p50_ms']:.2f}× | {i['p99_ms'] / s['p99_ms']:.2f}×" if r is i else " | "
            lines.append(f"| {rate:g} | {r['scheduling']} | {r['completed_rps']:.1f} | {r['tokens_per_s']:.0f} | {r['p50_ms']:.0f} | "
                         f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {ratio} |")
    (out / "batching_bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    cells = [(i, t) for i in (1, 32) for t in ("grpc", "http")]
    x = np.arange(len(cells))
    for k, (setting, label) in enumerate(((64, "dynamic batching (max 64)"), (1, "max_batch_size 1"))):
        values = [next(r["images_per_s"] for r in classifier if (r["images_per_request"], r["transport"], r["max_batch_size"]) == (i, t, setting))
                  for i, t in cells]
        axes[0].bar(x + k * 0.4, values, 0.4, label=label)
    axes[0].axhline(offline, color="black", linestyle="--", label="offline ORT, batch 32")
    axes[0].set_yscale("log")
    axes[0].set_xticks(x + 0.2, [f"{i} image(s)/req\n{t}" for i, t in cells])
    axes[0].set_ylabel("images / s")
    axes[0].set_title(f"classifier served at concurrency {args.concurrency}", fontsize=10)
    axes[0].legend(fontsize=8)
    for scheduling, color in (("static", "tab:orange"), ("iteration", "tab:blue")):
        sel = [r for r in decode if r["scheduling"] == scheduling]
        axes[1].plot([r["rate"] for r in sel], [r["p50_ms"] for r in sel], "-o", color=color, label=f"{scheduling} p50")
        axes[1].plot([r["rate"] for r in sel], [r["p99_ms"] for r in sel], "--s", color=color, label=f"{scheduling} p99")
    axes[1].set_xlabel("offered requests / s (Poisson, mixed lengths)")
    axes[1].set_ylabel("latency ms")
    axes[1].set_yscale("log")
    axes[1].set_title("translation: iteration-level vs static batching", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "batching_bench.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter cells")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per classifier cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.9],
                        help="offered translation load as fractions of the measured capacity (default 0.25 0.5 0.9)")
    parser.add_argument("--rates", type=float, nargs="+", default=None, help="offered translation requests/s instead")
    parser.add_argument("--skip-translation", action="store_true")
    parser.add_argument("--decode-seconds", type=float, default=20.0, help="seconds of Poisson arrivals per rate")
    parser.add_argument("--max-batch", type=int, default=32, help="decode engine batch width (the service's default)")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository")))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.decode_seconds = 3.0, 1.0, 15.0
    args.repository = args.repository.resolve()
    if args.rates:
        args.fractions = None
    args.capacity = None
    if not (args.repository / "translator" / "1" / "config.json").exists():
        print(f"error: no model repository at {args.repository}; run `python -m export --out {args.repository}`", file=sys.stderr)
        return 2
    started = time.time()
    decode = []
    if not args.skip_translation:
        print("translation: iteration-level vs static…", flush=True)
        decode = translation(args)
        (args.out / "batching_translation.json").write_text(json.dumps({"capacity_rps": args.capacity, "rows": decode}, indent=2))
    elif (args.out / "batching_translation.json").exists():  # keep the last translation rows in the report
        earlier = json.loads((args.out / "batching_translation.json").read_text())
        decode, args.capacity = earlier["rows"], earlier["capacity_rps"]
        args.rates = sorted({r["rate"] for r in decode})
        args.fractions = [round(rate / args.capacity, 2) for rate in args.rates] if args.capacity else None
    classifier, offline = [], 0.0
    if args.skip_classifier and (args.out / "batching_bench.json").exists():  # keep the last classifier rows in the report
        earlier = json.loads((args.out / "batching_bench.json").read_text())
        classifier, offline = earlier.get("classifier", []), earlier.get("offline_batch32_images_per_s", 0.0)
    if not args.skip_classifier:
        print("classifier offline…", flush=True)
        offline = offline_images_per_s(args.repository, 32, 3.0 if args.quick else 6.0)
        print(f"  offline ORT batch 32: {offline:,.0f} images/s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            print("classifier served…", flush=True)
            classifier = serve_classifier(args, Path(tmp))
    if classifier and offline:
        write_report(classifier, offline, decode, args, time.time() - started)
        print(f"wrote {args.out / 'batching_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
