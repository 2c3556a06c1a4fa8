"""Overload: the service offered about ten times what it can serve. Who hears "no", how fast, and what do the rest get?

    python tests/benchmarks/overload.py                    # → tests/benchmarks/results/overload.{md,png,json}
    python tests/benchmarks/overload.py --seconds 30 --factor 10

Starts the service as ``make run`` does (or drives ``--url``), then, with one workload throughout (a translation the
model decodes for ``--tokens`` tokens, over HTTP):

1. **idle**: requests one at a time → the idle latency (p50, p99);
2. **capacity**: closed loop, enough clients to keep the decoder busy (a refused client waits 50 ms, as if it had
   a retry hint) → successful translations per second: the measured capacity;
3. **overload**: an open loop (Poisson arrivals, latency counted from the scheduled arrival) at ``--factor`` ×
   that capacity for ``--seconds``;
4. **recovery**: the closed loop of step 2 again, once the overload has stopped (window by window, up to
   ``--recovery-windows``, until one reaches ``--recovery`` × the capacity; the best counts).

Holds when: every answer is a 200 or a 503 with ``Retry-After`` (nothing hangs past the client's timeout, no other
status); refusals come back within 50 ms; admitted requests' p99 stays within twice the idle p99; the capacity after
the overload is at least ``--recovery`` × the capacity before it.

Why a long decode: on a 2-CPU machine the load generator, the proxy and the ingress share the CPUs with the model;
10× the capacity of a short request is more requests per second than those can even refuse (RELIABILITY.md has
the measured cost of a refusal). A long decode keeps 10× within what the front-end can turn away.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

LOOPING_TEXT = "nine hundred ninety-nine thousand nine hundred ninety-nine, " * 8  # decodes to max_new_tokens
REFUSAL_BOUND_S = 0.050
ADMITTED_FACTOR = 2.0


@dataclass
class Answer:
    at: float  # when it was due to be sent, seconds since the phase began
    latency: float  # seconds from then to the end of the answer (or to the client giving up)
    status: int  # HTTP status; 0 = no answer (client timeout or connection error)
    retry_after: bool = False
    lag: float = 0.0  # seconds from when it was due to when the client got to send it (the load generator's delay)
    refused_by: str = ""  # for a 503: "door" (the ingress's gate), "expected wait", "waited" or "queue" (the model)


class Client:
    def __init__(self, url: str, tokens: int, timeout_s: float) -> None:
        self.url, self.timeout_s = url.rstrip("/") + "/v1/translate", timeout_s
        self.body = json.dumps({"text": LOOPING_TEXT, "max_new_tokens": tokens}).encode()

    async def __aenter__(self) -> Client:
        import aiohttp

        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    async def send(self, due: float, origin: float) -> Answer:
        """One request; ``due``: its scheduled time (monotonic), latency counts from it."""
        lag = time.monotonic() - due
        try:
            async with self.session.post(self.url, data=self.body, headers={"content-type": "application/json"}) as r:
                body = await r.read()
                status, retry = r.status, "Retry-After" in r.headers
        except Exception:  # a client timeout or a dropped connection: an answer that never came
            status, retry, body = 0, False, b""
        return Answer(due - origin, time.monotonic() - due, status, retry, lag, refused_by(body) if status == 503 else "")


def refused_by(body: bytes) -> str:
    """Which part of the service said no, from the 503's message (service.ingress.shed, service.engine.submit)."""
    text = body.decode(errors="replace")
    for marker, where in (("no free slot expected", "door"), ("as many as it took lately", "door"), ("would wait about", "expected wait"),
                          ("waited over", "waited"), ("queue full", "queue"), ("already waiting", "queue")):
        if marker in text:
            return where
    return "other"


async def idle(client: Client, n: int) -> list[Answer]:
    origin, out = time.monotonic(), []
    for _ in range(n):
        out.append(await client.send(time.monotonic(), origin))
    return out


async def closed_loop(client: Client, concurrency: int, seconds: float) -> list[Answer]:
    origin = time.monotonic()
    end, out = origin + seconds, []

    async def worker() -> None:
        while (now := time.monotonic()) < end:
            answer = await client.send(now, origin)
            out.append(answer)
            if answer.status != 200:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def open_loop(client: Client, rate: float, seconds: float, seed: int = 0) -> list[Answer]:
    rng, origin = random.Random(seed), time.monotonic()
    due, tasks = origin, []
    while (due := due + rng.expovariate(rate)) < origin + seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        tasks.append(asyncio.create_task(client.send(due, origin)))
    return list(await asyncio.gather(*tasks))


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def throughput(answers: list[Answer], seconds: float) -> float:
    return sum(a.status == 200 for a in answers) / seconds


def summarize(answers: list[Answer]) -> dict:
    ok = [a.latency for a in answers if a.status == 200]
    refused = [a.latency for a in answers if a.status == 503]
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[str(a.status)] = statuses.get(str(a.status), 0) + 1
    return {"requests": len(answers), "statuses": statuses,
            "admitted_p50_ms": pct(ok, 50) * 1e3, "admitted_p99_ms": pct(ok, 99) * 1e3,
            "refused_p50_ms": pct(refused, 50) * 1e3, "refused_p99_ms": pct(refused, 99) * 1e3,
            "refused_max_ms": max(refused, default=float("nan")) * 1e3,
            "refused_without_retry_after": sum(a.status == 503 and not a.retry_after for a in answers),
            "client_lag_p50_ms": pct([a.lag for a in answers], 50) * 1e3, "client_lag_p99_ms": pct([a.lag for a in answers], 99) * 1e3,
            "refused_by": {where: {"n": len(ms), "p50_ms": pct(ms, 50) * 1e3, "p99_ms": pct(ms, 99) * 1e3}
                           for where in sorted({a.refused_by for a in answers if a.status == 503})
                           for ms in [[a.latency for a in answers if a.status == 503 and a.refused_by == where]]}}


async def run(url: str, *, tokens: int = 256, concurrency: int = 8, idle_requests: int = 30, capacity_seconds: float = 8,
              overload_seconds: float = 15, factor: float = 10, timeout_s: float = 10, recovery_target: float = 0.9,
              recovery_windows: int = 3, progress=print) -> dict:
    """The four phases against a running service; the measurements and the verdicts as a dict.

    Recovery is measured in closed-loop windows as long as the capacity phase, until one reaches
    ``recovery_target`` × the capacity before, or ``recovery_windows`` of them: the best counts. One window is at
    the mercy of the machine (two closed-loop windows on one quiet service measured 12.6 and 9.0 translations/s);
    a service the overload left slower stays slow in all of them.
    """
    async with Client(url, tokens, timeout_s) as client:
        await idle(client, 3)  # warm: connections, kernels
        quiet = await idle(client, idle_requests)
        idle_ms = [a.latency * 1e3 for a in quiet if a.status == 200]
        progress(f"idle: p50 {pct(idle_ms, 50):.0f} ms, p99 {pct(idle_ms, 99):.0f} ms")
        phases = {"capacity": [time.monotonic()]}
        before = await closed_loop(client, concurrency, capacity_seconds)
        phases["capacity"].append(time.monotonic())
        capacity = throughput(before, capacity_seconds)
        progress(f"capacity: {capacity:.1f} translations/s ({concurrency} clients, {capacity_seconds:.0f} s)")
        rate = factor * capacity
        progress(f"overload: {rate:.0f} requests/s offered for {overload_seconds:.0f} s")
        phases["overload"] = [time.monotonic()]
        over = await open_loop(client, rate, overload_seconds)
        phases["overload"].append(time.monotonic())
        await asyncio.sleep(1.0)  # what was admitted drains
        windows: list[float] = []  # closed-loop throughput after the overload, window by window
        phases["recovery"] = [time.monotonic()]
        while len(windows) < recovery_windows:
            windows.append(throughput(await closed_loop(client, concurrency, capacity_seconds), capacity_seconds))
            progress(f"recovery: {windows[-1]:.1f} translations/s ({windows[-1] / capacity:.2f}× before)")
            if windows[-1] >= recovery_target * capacity:
                break
        phases["recovery"].append(time.monotonic())
        recovered = max(windows)
    s = summarize(over)
    result = {
        "tokens": tokens, "factor": factor, "overload_seconds": overload_seconds,
        "idle_requests": len(quiet), "idle_p50_ms": pct(idle_ms, 50), "idle_p99_ms": pct(idle_ms, 99),
        "idle_statuses": summarize(quiet)["statuses"], "idle_ms": idle_ms,
        "capacity_per_s": capacity, "offered_per_s": rate, "overload": s, "capacity_phase": summarize(before),
        "admitted_per_s": s["statuses"].get("200", 0) / overload_seconds,
        "recovered_per_s": recovered, "recovery_ratio": recovered / capacity if capacity else float("nan"),
        "recovery_windows_per_s": windows, "phases": phases,
        "answers": [asdict(a) for a in over],
    }
    result["checks"] = {
        "every answer 200, or 503 with Retry-After": set(s["statuses"]) <= {"200", "503"} and not s["refused_without_retry_after"],
        "no client left waiting (timeouts, dropped connections)": s["statuses"].get("0", 0) == 0,
        f"refusals within {REFUSAL_BOUND_S * 1e3:.0f} ms (p99)": not s["statuses"].get("503") or s["refused_p99_ms"] <= REFUSAL_BOUND_S * 1e3,
        f"admitted p99 ≤ {ADMITTED_FACTOR:g}× idle p99": s["admitted_p99_ms"] <= ADMITTED_FACTOR * result["idle_p99_ms"],
    }
    return result


def recovery_check(result: dict, ratio: float) -> bool:
    return result["recovery_ratio"] >= ratio


# --------------------------------------------------------------------------------------------- by hand


STEAL = "hypervisor steal"  # CPU time the VM was ready to run but the host ran something else (/proc/stat)


class CpuSampler:
    """CPU time of every process on this machine (Linux ``/proc``), sampled once a second, to say afterwards where
    each phase's CPU went: the model, the front-end, Ray's own processes, or the load generator (whose share
    includes this sampler's: about 1 % of a CPU); and how much the hypervisor took (``STEAL``), which tells a run
    spoilt by a noisy neighbour from one spoilt by the service."""

    def __init__(self, every_s: float = 1.0) -> None:
        import threading

        self.every_s, self.samples = every_s, []  # (monotonic, {pid: (cpu seconds, label)})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.is_set():
            snap = {-1: (int(Path("/proc/stat").read_text().split(maxsplit=9)[8]) / tick, STEAL)}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    fields = stat[stat.rindex(")") + 2 :].split()
                    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                except (OSError, ValueError):
                    continue  # gone, or a kernel thread
                snap[int(pid)] = ((int(fields[11]) + int(fields[12])) / tick, self.label(int(pid), argv))
            self.samples.append((time.monotonic(), snap))
            self._stop.wait(self.every_s)

    @staticmethod
    def label(pid: int, argv: list[str]) -> str:
        if pid == os.getpid():
            return "load generator (this script)"
        if argv[0].startswith("ray::"):
            return argv[0].split()[0].split(".")[0].replace("ServeReplica:inference:", "replica ")  # not the method it runs
        name = Path(argv[0]).name
        return " ".join([name, *argv[1:3]]) if name.startswith("python") else name or "?"

    def cpus(self, start: float, end: float) -> dict[str, float]:
        """CPUs (CPU seconds per second) used by each kind of process between two monotonic times."""
        if not self.samples:
            return {}
        a = min(self.samples, key=lambda x: abs(x[0] - start))
        b = min(self.samples, key=lambda x: abs(x[0] - end))
        if b[0] <= a[0]:
            return {}
        used: dict[str, float] = {}
        for pid, (cpu, label) in b[1].items():
            used[label] = used.get(label, 0.0) + (cpu - a[1].get(pid, (0.0, label))[0]) / (b[0] - a[0])
        return dict(sorted(((k, v) for k, v in used.items() if v > 0.002), key=lambda kv: -kv[1]))


def cpu_table(result: dict) -> list[str]:
    """Markdown: CPUs per process kind in each phase (result["cpus"])."""
    cpus = result.get("cpus") or {}
    if not any(cpus.values()):
        return []
    phases = list(cpus)
    top = sorted({k for c in cpus.values() for k in list(c)[:8]} - {STEAL}, key=lambda k: -max(c.get(k, 0) for c in cpus.values()))
    lines = ["", f"Where the CPU went (CPUs in use, of {os.cpu_count()}; from /proc):", "",
             "| process | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for k in top:
        lines.append(f"| {k} | " + " | ".join(f"{cpus[p].get(k, 0):.2f}" for p in phases) + " |")
    lines.append("| **all processes** | " + " | ".join(f"**{sum(v for k, v in cpus[p].items() if k != STEAL):.2f}**" for p in phases) + " |")
    lines.append(f"| {STEAL} (taken by the host) | " + " | ".join(f"{cpus[p].get(STEAL, 0):.2f}" for p in phases) + " |")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    answers = result["answers"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for status, colour, label in ((200, "tab:blue", "admitted (200)"), (503, "tab:orange", "refused (503)")):
        points = [(a["at"], a["latency"] * 1e3) for a in answers if a["status"] == status]
        if points:
            top.scatter(*zip(*points), s=4, alpha=0.5, color=colour, label=label)
    top.axhline(result["idle_p99_ms"] * ADMITTED_FACTOR, color="tab:blue", ls="--", lw=1, label=f"{ADMITTED_FACTOR:g}× idle p99")
    top.axhline(REFUSAL_BOUND_S * 1e3, color="tab:orange", ls="--", lw=1, label="50 ms")
    top.set_yscale("log")
    top.set_ylabel("latency from scheduled arrival (ms)")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"{result['factor']:g}× capacity ({result['offered_per_s']:.0f} req/s offered, "
                  f"capacity {result['capacity_per_s']:.1f}/s), {result['tokens']}-token translations")
    edges = np.arange(0, result["overload_seconds"] + 1, 1.0)
    for status, colour, label in ((200, "tab:blue", "admitted"), (503, "tab:orange", "refused")):
        counts, _ = np.histogram([a["at"] for a in answers if a["status"] == status], edges)
        bottom.step(edges[:-1], counts, where="post", color=colour, label=label)
    bottom.axhline(result["capacity_per_s"], color="grey", ls=":", lw=1, label="capacity")
    bottom.set_yscale("symlog")
    bottom.set_xlabel("seconds into the overload")
    bottom.set_ylabel("requests per second")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(result: dict, args, stats: dict | None) -> str:
    s, c = result["overload"], result["capacity_phase"]
    lines = [
        f"# Overload at about {result['factor']:g}× capacity (latency bounds {args.bounds})", "",
        f"Command: `python tests/benchmarks/overload.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {args.machine}; {dt.date.today()}  ",
        f"Workload: HTTP `/v1/translate`, a text the model decodes for {result['tokens']} tokens; "
        f"client timeout {args.timeout:g} s.", "",
        "| phase | measured |", "|---|---|",
        f"| idle ({result['idle_requests']} requests, one at a time) | p50 {result['idle_p50_ms']:.0f} ms, p99 {result['idle_p99_ms']:.0f} ms |",
        f"| capacity (closed loop, {args.concurrency} clients, {args.capacity_seconds:g} s) | {result['capacity_per_s']:.1f} translations/s; "
        f"latency of its translations p50 {c['admitted_p50_ms']:.0f} ms, p99 {c['admitted_p99_ms']:.0f} ms "
        f"({c['admitted_p99_ms'] / result['idle_p99_ms']:.2f}× idle p99: the batch at full load, before any overload) |",
        f"| overload (Poisson, {result['factor']:g}×, {result['overload_seconds']:g} s) | {result['offered_per_s']:.0f} requests/s offered, "
        f"{s['requests']} sent: {', '.join(f'{n} × {k}' for k, n in sorted(s['statuses'].items()))}; "
        f"admitted {result['admitted_per_s']:.1f}/s |",
        f"| — admitted latency | p50 {s['admitted_p50_ms']:.0f} ms, p99 {s['admitted_p99_ms']:.0f} ms "
        f"({s['admitted_p99_ms'] / result['idle_p99_ms']:.2f}× idle p99) |",
        f"| — refusal latency | p50 {s['refused_p50_ms']:.1f} ms, p99 {s['refused_p99_ms']:.1f} ms, max {s['refused_max_ms']:.1f} ms |",
        "| — refused by | " + ", ".join(f"{w}: {v['n']} (p50 {v['p50_ms']:.0f} ms, p99 {v['p99_ms']:.0f} ms)"
                                          for w, v in s.get("refused_by", {}).items()) + " |",
        f"| — load generator's own delay in sending | p50 {s['client_lag_p50_ms']:.1f} ms, p99 {s['client_lag_p99_ms']:.1f} ms "
        "(counted in every latency above: it shares the CPUs) |",
        f"| recovery (closed loop again, best of {len(result['recovery_windows_per_s'])} window(s) of "
        f"{args.capacity_seconds:g} s: {', '.join(f'{w:.1f}' for w in result['recovery_windows_per_s'])}) | "
        f"{result['recovered_per_s']:.1f} translations/s ({result['recovery_ratio']:.2f}× before) |",
    ]
    if stats:
        lines.append(f"| translator replica | batch limit {stats.get('batch_limit')} of {stats.get('max_batch_size')} "
                     f"(max_step_slowdown {stats.get('max_step_slowdown')}), max_queue_wait_ms {stats.get('max_queue_wait_ms')}; "
                     f"sequences by outcome {stats.get('finished')} |")
    lines += cpu_table(result)
    lines += ["", "| check | holds |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in result["checks"].items()]
    lines.append(f"| recovery ≥ {args.recovery:g}× capacity | {'yes' if recovery_check(result, args.recovery) else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from frontend_bench import Process, cpu_name, free_port

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one as `make run` does)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--factor", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=30, help="length of the overload (default 30)")
    parser.add_argument("--idle-requests", type=int, default=200,
                        help="requests one at a time for the idle p99 (default 200: from 30 the p99 is their slowest, "
                             "which swung from 165 to 318 ms between runs)")
    parser.add_argument("--capacity-seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients for capacity (default 8)")
    parser.add_argument("--timeout", type=float, default=10, help="client timeout in seconds (default 10)")
    parser.add_argument("--bounds", choices=("on", "off"), default="on",
                        help="the translator's latency bounds as the serve config has them (on), or turned off (off)")
    parser.add_argument("--slowdown", type=float, default=None,
                        help="the translator's max_step_slowdown for this run instead of the serve config's")
    parser.add_argument("--recovery", type=float, default=0.9, help="recovered/initial capacity needed (default 0.9)")
    parser.add_argument("--recovery-windows", type=int, default=3,
                        help="closed-loop windows after the overload at most, the best counts (default 3)")
    parser.add_argument("--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository")))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"

    async def go(url: str) -> dict:
        with CpuSampler() as sampler:
            result = await run(url, tokens=args.tokens, concurrency=args.concurrency, idle_requests=args.idle_requests,
                               capacity_seconds=args.capacity_seconds,
                               overload_seconds=args.seconds, factor=args.factor, timeout_s=args.timeout,
                               recovery_target=args.recovery, recovery_windows=args.recovery_windows)
        result["cpus"] = {phase: sampler.cpus(*span) for phase, span in result["phases"].items()}
        return result

    def translator_stats() -> dict | None:
        try:  # the replica's own view (not part of the API); the report only quotes it
            import ray

            from tests.servicekit import stats as replica_stats

            ray.init(address="auto", logging_level="ERROR")
            try:
                return replica_stats("Translator")
            finally:  # before the service stops: a driver still connected then left a Ray dashboard agent running
                ray.shutdown()
        except Exception as e:
            print(f"(no translator stats: {e})")
            return None

    stats = None
    if args.url:
        result = asyncio.run(go(args.url))
    else:
        import requests

        repository = args.repository.resolve()
        if not (repository / "translator" / "1" / "config.json").exists():
            print(f"error: no model repository at {repository}; run `python -m export --out {repository}`", file=sys.stderr)
            return 2
        http = free_port()
        url = f"http://127.0.0.1:{http}"
        env = dict(os.environ) | {"MODEL_REPOSITORY": str(repository), "SERVE_HTTP_PORT": str(http),
                                  "SERVE_GRPC_PORT": str(free_port()), "METRICS_PORT": str(free_port())}
        if args.bounds == "off" or args.slowdown is not None:  # the serve config, changed for this run
            import yaml

            from service import config as serve_config

            config = serve_config.load()
            for name in ("Translator", "Captioner"):
                user_config = serve_config.deployment(config, name).setdefault("user_config", {})
                if args.bounds == "off":
                    for key in ("max_step_slowdown", "max_queue_wait_ms"):
                        user_config.pop(key, None)
                elif name == "Translator":
                    user_config["max_step_slowdown"] = args.slowdown
            changed = Path(tempfile.mkdtemp()) / "serve_config.yaml"
            changed.write_text(yaml.safe_dump(config))
            env["SERVE_CONFIG"] = str(changed)

        def ready() -> bool:
            try:
                return requests.get(url + "/readyz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        with tempfile.TemporaryDirectory() as tmp:
            print("starting the service…", flush=True)
            proc = Process("service", [sys.executable, "-m", "service.app"], env, ready, Path(tmp) / "service.log")
            try:
                result = asyncio.run(go(url))
                stats = translator_stats()
            finally:
                proc.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "overload" if args.bounds == "on" else "overload_bounds_off"
    result["translator"] = stats
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    text = report(result, args, stats)
    (args.out / f"{stem}.md").write_text(text)
    plot(result, args.out / f"{stem}.png")
    print(text)
    return 0 if all(result["checks"].values()) and recovery_check(result, args.recovery) else 1


if __name__ == "__main__":
    sys.exit(main())
