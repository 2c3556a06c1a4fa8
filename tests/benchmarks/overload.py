"""Overload: the service offered ten times what it can serve. Does it keep doing the work it can, and turn the rest
away quickly?

    python tests/benchmarks/overload.py --repository /tmp/mr   # → tests/benchmarks/results/overload.{md,png,json}
    python tests/benchmarks/overload.py --seconds 30 --factor 10 --deadline-ms 5000

Starts the service as ``make run`` does (or drives ``--url``) and sends it, over HTTP, a mix of ordinary requests
(``MIX``): 55 % short greedy translations (dates, numbers), 20 % long greedy ones (a 56-word input allowed
``--long-tokens`` tokens; the retrained translator ends it after 19, the longest decode it makes of any input tried,
so "long" is longer only by its input), 20 % short beam-4 ones (four rows of the batch each), 5 % short ones streamed (``/v1/translate/stream``,
the SSE response read to its end: 200 means a complete stream). Every request carries a deadline
(``X-Request-Timeout-Ms: --deadline-ms``); the client's own timeout is longer, so a 504 is the server's answer.

1. **idle** (for reference; ``--idle-requests 0`` skips it): the mix, one request at a time;
2. **capacity**: closed loop, ``--concurrency`` clients (enough to keep the batch full; a refused client waits 50 ms)
   → successful requests per second: the measured capacity;
3. **overload**: open loop (Poisson arrivals) at ``--factor`` × that capacity for ``--seconds``;
4. **recovery**: the closed loop again, window by window (up to ``--recovery-windows``) until one reaches
   ``--recovery`` × the capacity; the best counts.

Holds when: the goodput during the overload (200s completed per second of it) is at least 0.8 × the capacity (a
service that refuses work it could have done fails this); refusals are 503 with ``Retry-After``, p99 under 50 ms; no
client waits past its deadline + 100 ms (from sending the request to the end of its answer); no answer but 200, 503
and 504; ``GET /readyz`` is 200 afterwards; the capacity after is at least ``--recovery`` × the capacity before.

The load generator (Python, aiohttp) shares the CPUs with the service: the report gives its delay in sending (counted
in the latencies from scheduled arrival) and the rate it really sent, and says when the overload asked for was more
than the machine could send and turn away (then the checks judge the run, not the service at that factor).
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
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

# One of the longest decodes of the shipped translator: 19 tokens since its retraining (2026-12-02; it looped to
# max_new_tokens before, and the repetition guard now ends any loop). Results committed before then decoded 256.
LOOPING_TEXT = "nine hundred ninety-nine thousand nine hundred ninety-nine, " * 8
SHORT_TEXTS = ("Friday, March 14, 2025", "Monday, January 6, 2025", "Saturday, 21 June 2025",
               "There were 1,250 people at the concert.", "It costs 42 euros.")
MIX = {"short": 0.55, "long": 0.20, "beam": 0.20, "stream": 0.05}
REFUSAL_BOUND_S, DEADLINE_SLACK_S, GOODPUT_FACTOR = 0.050, 0.100, 0.8
STREAM_ERRORS = {"deadline_exceeded": 504}  # an `event: error` mid-stream, as the status it stands for (else 500)


@dataclass
class Answer:
    kind: str  # a key of MIX
    at: float  # when it was due to be sent, seconds since the phase began
    latency: float  # seconds from then to the end of the answer (or to the client giving up)
    waited: float  # seconds from sending it to the end of the answer: what its deadline bounds
    status: int  # HTTP status (a stream's: 200 only if complete); 0 = no answer (client timeout, connection error)
    retry_after: bool = False
    lag: float = 0.0  # seconds from when it was due to when the client got to send it (the load generator's delay)
    refused_by: str = ""  # for a 503: "expected wait", "waited" or "queue" (the engine's admission)


class Client:
    def __init__(self, session, url: str, deadline_ms: float, long_tokens: int, seed: int = 0) -> None:
        self.session, self.url, self.rng = session, url.rstrip("/"), random.Random(seed)  # session: an aiohttp.ClientSession
        self.headers = {"content-type": "application/json", "X-Request-Timeout-Ms": f"{deadline_ms:g}"}
        self.long = json.dumps({"text": LOOPING_TEXT, "max_new_tokens": long_tokens}).encode()

    def pick(self) -> str:
        return self.rng.choices(list(MIX), weights=list(MIX.values()))[0]

    async def send(self, kind: str, due: float, origin: float) -> Answer:
        """One request of ``kind``; ``due``: its scheduled time (monotonic), ``latency`` counts from it."""
        text = self.rng.choice(SHORT_TEXTS)
        body = self.long if kind == "long" else json.dumps({"text": text, "beam_size": 4} if kind == "beam" else {"text": text}).encode()
        sent = time.monotonic()
        try:
            async with self.session.post(self.url + ("/v1/translate/stream" if kind == "stream" else "/v1/translate"),
                                         data=body, headers=self.headers) as r:
                data = await r.read()  # a stream: to its end
                status, retry = r.status, "Retry-After" in r.headers
        except Exception:  # a client timeout or a dropped connection: an answer that never came
            status, retry, data = 0, False, b""
        end = time.monotonic()
        if kind == "stream" and status == 200:
            status = stream_status(data)
        return Answer(kind, due - origin, end - due, end - sent, status, retry, sent - due, refused_by(data) if status == 503 else "")

    async def get(self, path: str) -> int:
        try:
            async with self.session.get(self.url + path) as r:
                return r.status
        except Exception:
            return 0


def stream_status(body: bytes) -> int:
    """A 200 stream's outcome: 200 if it ran to its "done" event, its error event's status, 0 if it just stopped."""
    events = [line[6:] for line in body.decode(errors="replace").splitlines() if line.startswith("data: ")]
    try:
        last = json.loads(events[-1]) if events else {}
    except ValueError:
        return 0
    return 200 if last.get("done") else STREAM_ERRORS.get(last["error"].get("code"), 500) if "error" in last else 0


def refused_by(body: bytes) -> str:
    """Which rule of the engine's admission said no, from the 503's message (service.engine.scheduler)."""
    text = body.decode(errors="replace")
    for marker, where in (("would wait about", "expected wait"),
                          ("waited over", "waited"), ("queue full", "queue"), ("rows already waiting", "queue")):
        if marker in text:
            return where
    return "other"


async def closed_loop(client: Client, concurrency: int, seconds: float = float("inf"), requests: int | None = None) -> list[Answer]:
    """``concurrency`` clients, each sending its next request when the last is answered (50 ms later if refused),
    for ``seconds`` or until ``requests`` have been sent."""
    origin, out, sent = time.monotonic(), [], [0]

    async def worker() -> None:
        while (now := time.monotonic()) < origin + seconds and (requests is None or sent[0] < requests):
            sent[0] += 1
            out.append(answer := await client.send(client.pick(), now, origin))
            if answer.status != 200:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def open_loop(client: Client, rate: float, seconds: float, seed: int = 0) -> list[Answer]:
    rng, origin = random.Random(seed), time.monotonic()
    due, tasks = origin, []
    while (due := due + rng.expovariate(rate)) < origin + seconds:
        if due > time.monotonic():  # (one behind sends at once: a sleep(0) per request would cap the rate at the loop's pace)
            await asyncio.sleep(due - time.monotonic())
        tasks.append(asyncio.create_task(client.send(client.pick(), due, origin)))
    return list(await asyncio.gather(*tasks))


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if len(values) else float("nan")  # seconds in, milliseconds out


def summarize(answers: list[Answer], deadline_s: float) -> dict:
    def count(some: list[Answer]) -> dict[str, int]:
        return {str(k): n for k in sorted({a.status for a in some}) for n in [sum(a.status == k for a in some)]}

    ok, refused = [a.latency for a in answers if a.status == 200], [a for a in answers if a.status == 503]
    return {"requests": len(answers), "statuses": count(answers), "admitted_p50_ms": pct(ok, 50), "admitted_p99_ms": pct(ok, 99),
            "refused_p50_ms": pct([a.latency for a in refused], 50), "refused_p99_ms": pct([a.latency for a in refused], 99),
            "refused_max_ms": max((a.latency * 1e3 for a in refused), default=float("nan")),
            "refused_without_retry_after": sum(not a.retry_after for a in refused),
            "past_deadline": sum(a.waited > deadline_s + DEADLINE_SLACK_S for a in answers),
            "waited_max_ms": max((a.waited * 1e3 for a in answers), default=float("nan")),
            "client_lag_p50_ms": pct([a.lag for a in answers], 50), "client_lag_p99_ms": pct([a.lag for a in answers], 99),
            "refused_by": {where: {"n": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)}
                           for where in sorted({a.refused_by for a in refused})
                           for ms in [[a.latency for a in refused if a.refused_by == where]]},
            "kinds": {kind: {"statuses": count(mine), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99)}
                      for kind in MIX for mine in [[a for a in answers if a.kind == kind]]
                      for ms in [[a.latency for a in mine if a.status == 200]]}}


async def run(url: str, *, deadline_ms: float = 5000, long_tokens: int = 64, concurrency: int = 32, idle_requests: int = 40,
              capacity_seconds: float = 10, overload_seconds: float = 60, factor: float = 10, timeout_s: float | None = None,
              recovery_target: float = 0.9, recovery_windows: int = 3, progress=print) -> dict:
    """The four phases against a running service; the measurements and the verdicts (``checks``) as a dict.

    Recovery is measured in closed-loop windows as long as the capacity phase, until one reaches
    ``recovery_target`` × the capacity before, or ``recovery_windows`` of them (0: no recovery phase, no check): the
    best counts. One window is at the mercy of the machine; a service the overload left slower stays slow in all.
    """
    import aiohttp

    deadline_s = deadline_ms / 1e3
    timeout_s = timeout_s or deadline_s + 5.0  # longer than the deadline: a 504 is the server's, a 0 a hang
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        client = Client(session, url, deadline_ms, long_tokens)
        await closed_loop(client, 1, requests=8)  # warm: connections, kernels
        q = summarize(await closed_loop(client, 1, requests=idle_requests), deadline_s)
        progress("idle: " + ", ".join(f"{k} p50 {v['p50_ms']:.0f} ms" for k, v in q["kinds"].items()))
        phases = {"capacity": [time.monotonic()]}
        before = await closed_loop(client, concurrency, capacity_seconds)
        phases["capacity"].append(time.monotonic())
        capacity = sum(a.status == 200 for a in before) / capacity_seconds
        rate = factor * capacity
        progress(f"capacity: {capacity:.1f} requests/s ({concurrency} clients, {capacity_seconds:g} s); "
                 f"overload: {rate:.0f} requests/s offered for {overload_seconds:g} s")
        phases["overload"] = [time.monotonic()]
        over = await open_loop(client, rate, overload_seconds)
        phases["overload"].append(time.monotonic())
        await asyncio.sleep(1.0)  # what was cancelled leaves the batch
        windows: list[float] = []  # closed-loop throughput after the overload, window by window
        phases["recovery"] = [time.monotonic()]
        while len(windows) < recovery_windows and (not windows or windows[-1] < recovery_target * capacity):
            windows.append(sum(a.status == 200 for a in await closed_loop(client, concurrency, capacity_seconds)) / capacity_seconds)
            progress(f"recovery: {windows[-1]:.1f} requests/s ({windows[-1] / capacity:.2f}× before)")
        phases["recovery"].append(time.monotonic())
        readyz = await client.get("/readyz")
    s = summarize(over, deadline_s)
    goodput = sum(a.status == 200 and a.at + a.latency <= overload_seconds for a in over) / overload_seconds
    sent_for = max([overload_seconds] + [a.at + a.lag for a in over])  # until the last request really left
    result = {"deadline_ms": deadline_ms, "long_tokens": long_tokens, "mix": MIX, "concurrency": concurrency, "factor": factor,
              "capacity_seconds": capacity_seconds, "overload_seconds": overload_seconds, "client_timeout_s": timeout_s,
              "idle": q, "capacity_per_s": capacity, "capacity_phase": summarize(before, deadline_s),
              "offered_per_s": rate, "sent_per_s": len(over) / sent_for, "overload": s,
              "answered_per_s": sum(a.status != 0 for a in over) / max([overload_seconds] + [a.at + a.latency for a in over]),
              "goodput_per_s": goodput, "goodput_ratio": goodput / capacity if capacity else float("nan"),
              "recovered_per_s": max(windows, default=float("nan")), "recovery_windows_per_s": windows,
              "recovery_ratio": max(windows, default=float("nan")) / capacity if capacity else float("nan"),
              "readyz_after": readyz, "phases": phases, "answers": [asdict(a) for a in over]}
    # the load generator could not keep to its schedule: the CPUs it shares with the service ran out first
    result["beyond_the_machine"] = result["sent_per_s"] < 0.95 * rate or s["client_lag_p50_ms"] > 50 or s["client_lag_p99_ms"] > 1000
    result["checks"] = {
        f"goodput ≥ {GOODPUT_FACTOR:g}× capacity": goodput >= GOODPUT_FACTOR * capacity,
        f"refusals are 503 with Retry-After, p99 < {REFUSAL_BOUND_S * 1e3:.0f} ms": not s["refused_without_retry_after"]
        and (not s["statuses"].get("503") or s["refused_p99_ms"] < REFUSAL_BOUND_S * 1e3),
        f"no client waits past its deadline + {DEADLINE_SLACK_S * 1e3:.0f} ms": s["past_deadline"] == 0 and not s["statuses"].get("0"),
        "no answer but 200, 503, 504": set(s["statuses"]) <= {"200", "503", "504"},
        "GET /readyz is 200 afterwards": readyz == 200,
    }
    if recovery_windows:
        result["checks"][f"recovery ≥ {recovery_target:g}× capacity"] = result["recovery_ratio"] >= recovery_target
    return result


# --------------------------------------------------------------------------------------------- by hand


STEAL = "hypervisor steal"  # CPU time the VM was ready to run but the host ran something else (/proc/stat)


class CpuSampler(threading.Thread):
    """CPU time of every process on this machine (Linux ``/proc``), sampled once a second, to say afterwards where
    each phase's CPU went: the model, the front-end, Ray's own processes, or the load generator (whose share
    includes this sampler's: about 1 % of a CPU); and how much the hypervisor took (``STEAL``), which tells a run
    spoilt by a noisy neighbour from one spoilt by the service."""

    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()  # samples: (monotonic, {pid: (cpu s, label)})

    def __enter__(self) -> CpuSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()

    def run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.stop.is_set():
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
            self.stop.wait(self.every_s)

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
        a, b = (min(self.samples, key=lambda x: abs(x[0] - t)) for t in (start, end))
        if b[0] <= a[0]:
            return {}
        used: dict[str, float] = {}
        for pid, (cpu, label) in b[1].items():
            used[label] = used.get(label, 0.0) + (cpu - a[1].get(pid, (0.0, label))[0]) / (b[0] - a[0])
        return dict(sorted(((k, v) for k, v in used.items() if v > 0.002), key=lambda kv: -kv[1]))


def cpu_table(result: dict) -> list[str]:
    """Markdown: CPUs per process kind in each phase (result["cpus"])."""
    cpus = {phase: c for phase, c in (result.get("cpus") or {}).items() if c}
    if not cpus:
        return []
    top = sorted({k for c in cpus.values() for k in list(c)[:8]} - {STEAL}, key=lambda k: -max(c.get(k, 0) for c in cpus.values()))
    lines = ["", f"Where the CPU went (CPUs in use, of {os.cpu_count()}; from /proc):", "",
             "| process | " + " | ".join(cpus) + " |", "|---|" + "---|" * len(cpus)]
    lines += [f"| {k} | " + " | ".join(f"{c.get(k, 0):.2f}" for c in cpus.values()) + " |" for k in top]
    lines.append("| **all processes** | " + " | ".join(f"**{sum(v for k, v in c.items() if k != STEAL):.2f}**" for c in cpus.values()) + " |")
    lines.append(f"| {STEAL} (taken by the host) | " + " | ".join(f"{c.get(STEAL, 0):.2f}" for c in cpus.values()) + " |")
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    answers, deadline_ms = result["answers"], result["deadline_ms"]
    colours = {200: ("tab:blue", "200"), 503: ("tab:orange", "503 (refused)"), 504: ("tab:red", "504 (deadline)"), 0: ("grey", "no answer")}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for status, (colour, label) in colours.items():
        if points := [(a["at"], a["latency"] * 1e3) for a in answers if a["status"] == status]:
            top.scatter(*zip(*points), s=4, alpha=0.5, color=colour, label=label)
    top.axhline(deadline_ms + DEADLINE_SLACK_S * 1e3, color="tab:red", ls="--", lw=1, label="deadline + 100 ms")
    top.axhline(REFUSAL_BOUND_S * 1e3, color="tab:orange", ls="--", lw=1, label="50 ms")
    top.set(yscale="log", ylabel="latency from scheduled arrival (ms)",
            title=f"{result['factor']:g}× capacity ({result['offered_per_s']:.0f} req/s offered, capacity {result['capacity_per_s']:.1f}/s, "
                  f"goodput {result['goodput_per_s']:.1f}/s), {deadline_ms:g} ms deadlines")
    top.legend(loc="lower right", fontsize=8)
    edges = np.arange(0, result["overload_seconds"] + deadline_ms / 1e3 + 2, 1.0)
    for status, (colour, label) in colours.items():  # 200s when they completed, the others when they arrived
        times = [a["at"] + (a["latency"] if status == 200 else 0) for a in answers if a["status"] == status]
        bottom.step(edges[:-1], np.histogram(times, edges)[0], where="post", color=colour,
                    label=label + (", by completion" if status == 200 else ", by arrival"))
    bottom.axhline(result["capacity_per_s"], color="grey", ls=":", lw=1, label="capacity")
    bottom.axvline(result["overload_seconds"], color="grey", lw=0.5)
    bottom.set(yscale="symlog", ylim=(0, None), xlabel="seconds into the overload", ylabel="answers per second")
    bottom.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(result: dict, args, stats: dict | None) -> str:
    s, c, q = result["overload"], result["capacity_phase"], result["idle"]
    fmt = lambda statuses: ", ".join(f"{n} × {k}" for k, n in statuses.items())  # noqa: E731
    lines = [
        f"# Overload at about {result['factor']:g}× capacity: the mix, {result['deadline_ms']:g} ms deadlines", "",
        f"Command: `python tests/benchmarks/overload.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {args.machine}; {dt.date.today()}  ",
        "Workload: HTTP, " + ", ".join(f"{share:.0%} {kind}" for kind, share in MIX.items()) + " (short: a date or number "
        f"text, greedy; long: a 56-word input, greedy, up to {result['long_tokens']} tokens (the translator stops after 19); beam: beam_size 4; stream: `/v1/translate/stream`, SSE "
        f"read to its end); every request with `X-Request-Timeout-Ms: {result['deadline_ms']:g}`; client timeout "
        f"{result['client_timeout_s']:g} s.", "", "| phase | measured |", "|---|---|",
        f"| idle ({q['requests']} requests, one at a time) | {fmt(q['statuses']) or '(skipped)'}; p50 {q['admitted_p50_ms']:.0f} ms, "
        f"p99 {q['admitted_p99_ms']:.0f} ms |",
        f"| capacity (closed loop, {result['concurrency']} clients, {result['capacity_seconds']:g} s) | **{result['capacity_per_s']:.1f} "
        f"requests/s**; {fmt(c['statuses'])}; latency of the 200s p50 {c['admitted_p50_ms']:.0f} ms, p99 {c['admitted_p99_ms']:.0f} ms |",
        f"| overload (Poisson, {result['factor']:g}×, {result['overload_seconds']:g} s) | {result['offered_per_s']:.0f} requests/s "
        f"offered, {result['sent_per_s']:.0f}/s sent: {fmt(s['statuses'])} |",
        f"| — goodput (200s completed per second of the overload) | **{result['goodput_per_s']:.1f}/s, {result['goodput_ratio']:.2f}× capacity** |",
        f"| — latency of the 200s (from scheduled arrival) | p50 {s['admitted_p50_ms']:.0f} ms, p99 {s['admitted_p99_ms']:.0f} ms |",
        f"| — refusal latency | p50 {s['refused_p50_ms']:.1f} ms, p99 {s['refused_p99_ms']:.1f} ms, max {s['refused_max_ms']:.1f} ms |",
        "| — refused by | " + ", ".join(f"{w}: {v['n']} (p50 {v['p50_ms']:.0f} ms, p99 {v['p99_ms']:.0f} ms)"
                                          for w, v in s["refused_by"].items()) + " |",
        f"| — longest wait, send to answer | {s['waited_max_ms']:.0f} ms; {s['past_deadline']} past the deadline + "
        f"{DEADLINE_SLACK_S * 1e3:.0f} ms |",
        f"| — load generator's own delay in sending | p50 {s['client_lag_p50_ms']:.1f} ms, p99 {s['client_lag_p99_ms']:.1f} ms "
        "(counted in the latencies from scheduled arrival: it shares the CPUs) |",
        f"| recovery (closed loop again, best of {len(result['recovery_windows_per_s'])} window(s) of {result['capacity_seconds']:g} s: "
        f"{', '.join(f'{w:.1f}' for w in result['recovery_windows_per_s'])}) | {result['recovered_per_s']:.1f} requests/s "
        f"({result['recovery_ratio']:.2f}× before); then `GET /readyz` {result['readyz_after']} |",
    ]
    if stats:
        lines.append(f"| translator replica | batch limit {stats.get('batch_limit')} of {stats.get('max_batch_size')} "
                     f"(auto_width {stats.get('auto_width')}), max_queue_wait_ms {stats.get('max_queue_wait_ms')}; "
                     f"sequences by outcome {stats.get('finished')} |")
    if result["beyond_the_machine"]:
        lines += ["", f"**{result['factor']:g}× this capacity ({result['offered_per_s']:.0f} requests/s) is more than this machine "
                  f"could send and turn away**: the load generator sent {result['sent_per_s']:.0f}/s (its delay p50 "
                  f"{s['client_lag_p50_ms']:.0f} ms, p99 {s['client_lag_p99_ms']:.0f} ms), {s['statuses'].get('0', 0)} requests got "
                  f"no answer within the client's {result['client_timeout_s']:g} s, the others were answered at "
                  f"{result['answered_per_s']:.0f}/s. The front-end (HAProxy, the ingress) and the load generator share "
                  f"{os.cpu_count()} CPUs with the decoder (table below): the checks judge this run as it went, not the service "
                  f"at a {result['factor']:g}× overload."]
    lines += ["", "Per kind (latency of the 200s from scheduled arrival, ms):", "",
              "| kind | idle p50 | capacity p50 / p99 | overload: answers | overload p50 / p99 |", "|---|---|---|---|---|"]
    lines += [f"| {k} ({share:.0%}) | {q['kinds'][k]['p50_ms']:.0f} | {c['kinds'][k]['p50_ms']:.0f} / {c['kinds'][k]['p99_ms']:.0f} | "
              f"{fmt(s['kinds'][k]['statuses'])} | {s['kinds'][k]['p50_ms']:.0f} / {s['kinds'][k]['p99_ms']:.0f} |" for k, share in MIX.items()]
    lines += cpu_table(result)
    lines += ["", "| check | holds |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in result["checks"].items()]
    return "\n".join(lines) + "\n"


def translator_stats() -> dict | None:
    try:  # the replica's own view (not part of the API); the report only quotes it
        import ray

        from tests.servicekit import stats as replica_stats

        ray.init(address="auto", logging_level="ERROR")
        try:
            return replica_stats("translator")
        finally:  # before the service stops: a driver still connected then left a Ray dashboard agent running
            ray.shutdown()
    except Exception as e:
        print(f"(no translator stats: {e})")
        return None


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from frontend_bench import cpu_name, local_service

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one as `make run` does)")
    parser.add_argument("--deadline-ms", type=float, default=5000, help="every request's X-Request-Timeout-Ms (default 5000)")
    parser.add_argument("--long-tokens", type=int, default=64, help="max_new_tokens of the long translations (default 64)")
    parser.add_argument("--factor", type=float, default=10)
    parser.add_argument("--seconds", type=float, default=60, help="length of the overload (default 60)")
    parser.add_argument("--idle-requests", type=int, default=40, help="the mix one at a time, for reference (default 40; 0: none)")
    parser.add_argument("--capacity-seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients for capacity (default 32)")
    parser.add_argument("--timeout", type=float, default=None, help="client timeout in seconds (default: the deadline + 5 s)")
    parser.add_argument("--recovery", type=float, default=0.9, help="recovered/initial capacity needed (default 0.9)")
    parser.add_argument("--recovery-windows", type=int, default=3, help="closed-loop windows after the overload at most (default 3)")
    parser.add_argument("--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository")))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.deadline_ms <= 0 or (args.timeout is not None and args.timeout <= args.deadline_ms / 1e3):
        parser.error("--deadline-ms must be positive, and --timeout longer than the deadline (to see the server's 504s)")
    args.machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"

    def measure(url: str) -> tuple[dict, dict | None]:
        with CpuSampler() as sampler:
            result = asyncio.run(run(url, deadline_ms=args.deadline_ms, long_tokens=args.long_tokens, concurrency=args.concurrency,
                                     idle_requests=args.idle_requests, capacity_seconds=args.capacity_seconds,
                                     overload_seconds=args.seconds, factor=args.factor, timeout_s=args.timeout,
                                     recovery_target=args.recovery, recovery_windows=args.recovery_windows))
        result["cpus"] = {phase: sampler.cpus(*span) for phase, span in result["phases"].items()}
        return result, translator_stats()

    if args.url:
        result, stats = measure(args.url)
    else:
        repository = args.repository.resolve()
        if not (repository / "translator" / "1" / "config.json").exists():
            print(f"error: no model repository at {repository}; run `python -m export --out {repository}`", file=sys.stderr)
            return 2
        with local_service(repository) as url:
            result, stats = measure(url)
    args.out.mkdir(parents=True, exist_ok=True)
    result["translator"] = stats
    (args.out / "overload.json").write_text(json.dumps(result, indent=1))
    text = report(result, args, stats)
    (args.out / "overload.md").write_text(text)
    plot(result, args.out / "overload.png")
    print(text)
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
