"""Serving front-end: this service (Ray Serve, several ingress settings) vs Triton (PyTriton), same load, same machine.

    python tests/benchmarks/frontend_bench.py            # → tests/benchmarks/results/frontend_bench.{md,png,json}
    python tests/benchmarks/frontend_bench.py --quick    # shorter cells

Servers, started one after another (never two at once: they would share the CPUs):

* ``triton``: Triton Inference Server 2.x through PyTriton 0.7.0 (``triton_server.py``), in its own virtual
  environment ``.bench/pytriton`` (PyTriton pins numpy<2), created on first use;
* ``serve``: this service as ``make run`` starts it (``python -m service.app``, ``deploy/serve_config.yaml``, plus the
  no-op application ``service/echo.py``) with Ray Serve's own defaults: its Python proxy in front;
* ``serve-haproxy``: the same with Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``: HAProxy in front,
  requests go straight to the ingress replicas instead of through Serve's Python proxy);
* ``serve-haproxy-throughput``: HAProxy plus ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (Serve's throughput preset): what
  ``make run`` uses by default since this benchmark (``service.config.SERVE_ENVIRONMENT``).

Models: ``echo`` (no-op: the input tensor back) and ``classifier`` (the shipped ViT on ONNX Runtime, dynamic batching
up to 64 within 5 ms on both servers). Each over HTTP and gRPC, with the same Open Inference Protocol request from
the same load generator (``loadgen.py``): closed loop at ``--concurrency`` and Poisson open loop at ``--rate``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2load  # noqa: E402
import loadgen  # noqa: E402

from service.config import SERVE_ENVIRONMENT, free_ports  # noqa: E402

VARIANTS = {
    "triton": None,
    "serve": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    "serve-haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    "serve-haproxy-throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                 "RAY_SERVE_HAPROXY_METRICS_ENABLED": "1", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1"},
    # + no HAProxy request metrics (one syslog message per request to a Python actor) and a 0.5 s controller loop
    "serve-lean": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                   "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"},
}
# what `make run` uses now: serve-lean plus HAProxy's request metrics and a retry of a request whose replica died
# unanswered (service/config.py)
VARIANTS["serve-now"] = dict(SERVE_ENVIRONMENT)
MODELS = ("echo", "classifier")
# hey: the same HTTP request from Debian's Go load generator; h2load: the same gRPC request from nghttp2's C one
# (both closed loop only, and skipped where the tool is not installed)
TRANSPORTS = ("http", "hey", "grpc", "h2load")
PYTRITON_ENV = ROOT / ".bench" / "pytriton"
PYTRITON_PINS = ["nvidia-pytriton==0.7.0", "requests"]


def free_port() -> int:
    return free_ports(1)[0]


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def setup_triton_env() -> Path:
    """``.bench/pytriton``: PyTriton and this environment's onnxruntime version, in a virtual environment of their own."""
    python = PYTRITON_ENV / "bin" / "python"
    if python.exists():
        return python
    import onnxruntime

    print(f"creating {PYTRITON_ENV} (PyTriton pins numpy<2, so it gets its own environment; ~1 min)…", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PYTRITON_ENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PYTRITON_PINS, f"onnxruntime=={onnxruntime.__version__}"], check=True)
    return python


class Process:
    """A server in a subprocess: started, waited for until ``ready`` says so, stopped with SIGINT."""

    def __init__(self, name: str, argv: list[str], env: dict, ready, log: Path) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while not ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; log: {log}\n{log.read_text()[-3000:]}")
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"{name} not ready after 300 s; log: {log}")
            time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextlib.contextmanager
def local_service(repository: Path):
    """The service as ``make run`` starts it, on free ports, for the time of a ``with``: yields its HTTP URL."""
    import requests

    http = free_port()
    url = f"http://127.0.0.1:{http}"
    env = dict(os.environ) | {"MODEL_REPOSITORY": str(Path(repository).resolve()), "SERVE_HTTP_PORT": str(http),
                              "SERVE_GRPC_PORT": str(free_port()), "METRICS_PORT": str(free_port())}

    def ready() -> bool:
        try:
            return requests.get(url + "/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    with tempfile.TemporaryDirectory() as tmp:
        print("starting the service…", flush=True)
        proc = Process("service", [sys.executable, "-m", "service.app"], env, ready, Path(tmp) / "service.log")
        try:
            yield url
        finally:
            proc.stop()


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) of every process on the machine, by name: Ray's ``ray::…`` titles, else the command."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(entry) == os.getpid():
            name = "load generator"
        elif cmdline.startswith("ray::"):
            name = cmdline.split()[0].split(".")[0]  # Ray retitles busy actors: ray::ServeController.listen_for_change
        elif not cmdline:
            name = "kernel threads"
        else:
            name = Path(cmdline.split()[0]).name
            name = stat[stat.index("(") + 1 : stat.rindex(")")] if name.startswith("python") else name
        out[name] = out.get(name, 0.0) + seconds
    return out


def cpu_per_request(before: dict, after: dict, requests_done: int) -> dict[str, float]:
    """CPU milliseconds per request of each process that used at least 2 % of the total."""
    used = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) > 0}
    total = sum(used.values()) or 1.0
    return {k: v * 1e3 / max(1, requests_done) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v / total >= 0.02}


def answers(url: str, model: str) -> bool:
    try:
        return requests.post(f"{url}/v2/models/{model}/infer", json=loadgen.payload(model), timeout=5).status_code == 200
    except requests.RequestException:
        return False


def start_triton(repository: Path, workdir: Path) -> tuple[Process, dict]:
    python = setup_triton_env()
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    # Triton's Python backend stub links against the interpreter's shared libpython
    env["LD_LIBRARY_PATH"] = f"{sysconfig.get_config_var('LIBDIR')}:{env.get('LD_LIBRARY_PATH', '')}"
    url = f"http://127.0.0.1:{http}"
    proc = Process("triton", [str(python), str(Path(__file__).parent / "triton_server.py"), "--repository", str(repository),
                              "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                   env, lambda: all(answers(url, m) for m in MODELS), workdir / "triton.log")
    endpoints = {m: {"http": url, "grpc": f"127.0.0.1:{grpc}", "application": None} for m in MODELS}
    return proc, endpoints


def start_serve(name: str, extra_env: dict, repository: Path, workdir: Path) -> tuple[Process, dict]:
    from service import config as serve_config

    config = serve_config.load(serve_config.DEFAULT_CONFIG)
    config["applications"].append({"name": "echo", "route_prefix": "/echo", "import_path": "service.echo:build_app", "args": {}})
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    http, grpc = free_port(), free_port()
    env = dict(os.environ) | extra_env | {"SERVE_CONFIG": str(path), "MODEL_REPOSITORY": str(repository),
                                         "SERVE_HTTP_PORT": str(http), "SERVE_GRPC_PORT": str(grpc), "METRICS_PORT": str(free_port())}
    url = f"http://127.0.0.1:{http}"
    proc = Process(name, [sys.executable, "-m", "service.app"], env,
                   lambda: answers(url + "/echo", "echo") and answers(url, "classifier"), workdir / f"{name}.log")
    endpoints = {"echo": {"http": url + "/echo", "grpc": f"127.0.0.1:{grpc}", "application": "echo"},
                 "classifier": {"http": url, "grpc": f"127.0.0.1:{grpc}", "application": serve_config.APP_NAME}}
    return proc, endpoints


def bench_server(name: str, endpoints: dict, args) -> list[dict]:
    rows = []
    for model in MODELS:
        for transport in TRANSPORTS:
            e = endpoints[model]
            if transport == "hey":
                if shutil.which("hey"):
                    rows.append(hey_cell(name, model, e["http"], args))
                continue
            if transport == "h2load":
                if h2load.available():
                    rows.append(h2load_cell(name, model, e["grpc"], e["application"], args))
                continue
            target = e["http"] if transport == "http" else e["grpc"]
            for load in ({"concurrency": args.concurrency}, {"rate": args.rate}):
                before = cpu_seconds()
                row = loadgen.measure(transport, target, model, seconds=args.seconds, warmup_s=args.warmup,
                                      application=e["application"], **load)
                if "concurrency" in load:  # where the CPU went, per answered request (warm-up included in both)
                    row["cpu_ms_per_request"] = cpu_per_request(before, cpu_seconds(), row["ok"] * (1 + args.warmup / args.seconds))
                row["server"] = name
                rows.append(row)
                print(f"  {name:26s} {model:10s} {transport:4s} {row['mode']:6s} {row['load']:>6g}: {row['rps']:7.0f} req/s  "
                      f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}", flush=True)
    return rows


def hey_cell(name: str, model: str, url: str, args) -> dict:
    """A closed-loop HTTP cell driven by ``hey`` (Go, a fixed small cost per request), so that the load generator's own
    CPU does not decide the result; its CPU is reported beside the servers'."""
    from concurrency import hey

    with tempfile.TemporaryDirectory() as tmp:
        hey(f"{url}/v2/models/{model}/infer", loadgen.payload(model), args.concurrency, args.warmup, Path(tmp))
        before = cpu_seconds()
        point = hey(f"{url}/v2/models/{model}/infer", loadgen.payload(model), args.concurrency, args.seconds, Path(tmp))
        after = cpu_seconds()
    ok = point["statuses"].get("200", 0)
    row = {"server": name, "model": model, "transport": "hey", "mode": "closed", "load": args.concurrency,
           "rps": point["per_s"], "p50_ms": point["p50_ms"], "p99_ms": point["p99_ms"], "ok": ok,
           "errors": point["requests"] - ok, "hey_cpu": point["hey_cpu"],
           "cpu_ms_per_request": cpu_per_request(before, after, ok)}
    print(f"  {name:26s} {model:10s} hey  closed {args.concurrency:>6g}: {row['rps']:7.0f} req/s  p50 {row['p50_ms']:6.1f} ms  "
          f"p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}  hey {point['hey_cpu']:.2f} CPU", flush=True)
    return row


def h2load_cell(name: str, model: str, target: str, application: str | None, args) -> dict:
    """A closed-loop gRPC cell driven by ``h2load`` (C, ``h2load.py``): the gRPC counterpart of ``hey_cell``."""
    from proto import open_inference_pb2 as pb

    request = loadgen.grpc_request(pb, model, loadgen.payload(model))
    headers = {"application": application} if application else {}  # Ray Serve: which application
    answer = h2load.response_length(target, request, tuple(headers.items()))
    body = h2load.grpc_frame(request.SerializeToString())
    h2load.run(target, body, headers, args.concurrency, args.warmup, answer)
    before = cpu_seconds()
    point = h2load.run(target, body, headers, args.concurrency, args.seconds, answer)
    after = cpu_seconds()
    row = {"server": name, "model": model, "transport": "h2load", "mode": "closed", "load": args.concurrency,
           "rps": point["per_s"], "p50_ms": point["p50_ms"], "p99_ms": point["p99_ms"], "ok": point["good"],
           "errors": point["errors"], "h2load_cpu": point["h2load_cpu"],
           "cpu_ms_per_request": cpu_per_request(before, after, point["good"])}
    print(f"  {name:26s} {model:10s} h2l  closed {args.concurrency:>6g}: {row['rps']:7.0f} req/s  p50 {row['p50_ms']:6.1f} ms  "
          f"p99 {row['p99_ms']:6.1f} ms  errors {row['errors']}  h2load {point['h2load_cpu']:.2f} CPU", flush=True)
    return row


def write_report(rows: list[dict], args, seconds: float) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run = {"seconds": seconds, "concurrency": args.concurrency, "rate": args.rate, "cell_seconds": args.seconds,
           "warmup": args.warmup, "quick": args.quick, "rows": rows}
    (out / "frontend_bench.json").write_text(json.dumps(run, indent=2))
    import onnxruntime
    import ray

    triton = {(r["model"], r["transport"], r["mode"]): r for r in rows if r["server"] == "triton"}
    lines = [
        "# Serving front-end: this service vs Triton (PyTriton)", "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, no GPU; servers and load generator on the same machine",
        f"- versions: Ray {ray.__version__}, onnxruntime {onnxruntime.__version__}, PyTriton 0.7.0 (its bundled Triton), Python {platform.python_version()}",
        f"- command: `python tests/benchmarks/frontend_bench.py{' --quick' if args.quick else ''}` ({seconds:.0f} s), {dt.date.today()}",
        "- transports: `http` and `grpc` driven by `loadgen.py`, one asyncio process; `hey`: the same HTTP request from Debian's "
        "`hey` (Go), closed loop only; `h2load`: the same gRPC request from Debian's `h2load` (nghttp2, C), closed loop only "
        "(`tests/benchmarks/h2load.py`)",
        f"- load: closed loop at concurrency {args.concurrency}; open loop Poisson at {args.rate:g} req/s; "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up per cell; same OIP request to every server",
        "- ratios are against Triton in the same run: throughput ours/Triton (higher is better), latency ours/Triton (lower is better)", "",
        "| model | transport | server | closed req/s | × Triton | closed p50 ms | closed p99 ms | open p50 ms | open p99 ms | open p99 × Triton | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for transport in TRANSPORTS:
            for server in args.variants:
                closed = next((r for r in rows if (r["server"], r["model"], r["transport"], r["mode"]) == (server, model, transport, "closed")), None)
                opened = next((r for r in rows if (r["server"], r["model"], r["transport"], r["mode"]) == (server, model, transport, "open")), None)
                if closed is None:
                    continue
                t_closed, t_open = triton.get((model, transport, "closed")), triton.get((model, transport, "open"))
                ratio = f"{closed['rps'] / t_closed['rps']:.2f}×" if t_closed else "–"
                if opened is None:  # hey, h2load: closed loop only
                    lines.append(f"| {model} | {transport} | {server} | {closed['rps']:.0f} | {ratio} | {closed['p50_ms']:.1f} | "
                                 f"{closed['p99_ms']:.1f} | – | – | – | {closed['errors']} |")
                    continue
                lat_ratio = f"{opened['p99_ms'] / t_open['p99_ms']:.2f}×" if t_open else "–"
                lines.append(f"| {model} | {transport} | {server} | {closed['rps']:.0f} | {ratio} | {closed['p50_ms']:.1f} | "
                             f"{closed['p99_ms']:.1f} | {opened['p50_ms']:.1f} | {opened['p99_ms']:.1f} | {lat_ratio} | "
                             f"{closed['errors'] + opened['errors']} |")
    lines += ["", "## Where the CPU goes (closed loop; CPU ms per request by process, processes above 2 % of the total)", ""]
    for r in rows:
        if r.get("cpu_ms_per_request"):
            merged: dict[str, float] = {}
            for k, v in r["cpu_ms_per_request"].items():
                key = k.split(".")[0] if k.startswith("ray::") else k
                merged[key] = merged.get(key, 0.0) + v
            parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(merged.items(), key=lambda kv: -kv[1]))
            lines.append(f"- {r['model']} {r['transport']} {r['server']}: total {sum(r['cpu_ms_per_request'].values()):.2f} ms — {parts}")
    (out / "frontend_bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = [(m, t) for m in MODELS for t in TRANSPORTS]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(args.variants)
    for k, server in enumerate(args.variants):
        for ax, mode, key in ((axes[0], "closed", "rps"), (axes[1], "open", "p99_ms")):
            values = [next((r[key] for r in rows if (r["server"], r["model"], r["transport"], r["mode"]) == (server, m, t, mode)), np.nan)
                      for m, t in groups]
            ax.bar(np.arange(len(groups)) + k * width, values, width, label=server)
    for ax, title in ((axes[0], f"closed loop, concurrency {args.concurrency}: requests/s (higher is better)"),
                      (axes[1], f"open loop, Poisson {args.rate:g} req/s: p99 latency ms (lower is better)")):
        ax.set_xticks(np.arange(len(groups)) + width * (len(args.variants) - 1) / 2, [f"{m}\n{t}" for m, t in groups])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "frontend_bench.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s cells, 1 s warm-up")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (default 16)")
    parser.add_argument("--rate", type=float, default=150.0, help="open-loop Poisson rate, requests/s (default 150)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell (default 6)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell (default 2)")
    parser.add_argument("--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository")))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    parser.add_argument("--from-json", type=Path, help="only redraw the table and plot from an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 3.0, 1.0
    if args.from_json:
        run = json.loads(args.from_json.read_text())
        rows = run["rows"]
        args.concurrency, args.rate, args.seconds, args.warmup, args.quick = (
            run["concurrency"], run["rate"], run["cell_seconds"], run["warmup"], run["quick"])
        args.variants = [v for v in VARIANTS if any(r["server"] == v for r in rows)]
        write_report(rows, args, run["seconds"])
        return 0
    args.repository = args.repository.resolve()
    if not (args.repository / "classifier" / "1" / "model.onnx").exists():
        print(f"error: no classifier in {args.repository}; run `python -m export --out {args.repository}` (or `make export`)", file=sys.stderr)
        return 2
    started, rows = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.variants:
            print(f"starting {name}…", flush=True)
            try:
                proc, endpoints = (start_triton(args.repository, workdir) if VARIANTS[name] is None
                                   else start_serve(name, VARIANTS[name], args.repository, workdir))
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            try:
                rows += bench_server(name, endpoints, args)
            finally:
                proc.stop()
    write_report(rows, args, time.time() - started)
    print(f"wrote {args.out / 'frontend_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
