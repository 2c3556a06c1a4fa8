"""Concurrency sweep: ordinary requests from 1 to 64 closed-loop clients on every route, as a user's load would be.

    python tests/benchmarks/concurrency.py                 # → tests/benchmarks/results/concurrency.{md,png,json}
    python tests/benchmarks/concurrency.py --url http://127.0.0.1:8000 --seconds 5

Starts the service as ``make run`` does (or drives ``--url``) and, for each workload (greedy and beam-4
translations, greedy and beam-4 captions, classifications), runs ``hey`` (Debian's Go load generator:
``apt-get install hey``; a low-overhead client, so that the client's own CPU does not decide the result; its CPU
is measured and reported) at 1, 2, 4, 8, 16, 32 and 64 clients, each client sending its next request when the last
is answered.

Holds when: every answer at every point is a 200 (no refusal below capacity: closed-loop clients cannot overload
a service, they only queue); answers per second never fall as clients are added (each point ≥ 0.9 × the best
before it: this VM's run-to-run noise); at 32 clients the translator's and the captioner's greedy throughput are
≥ 3× their one-client throughput, beam 4 ≥ 2×.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = (1, 2, 4, 8, 16, 32, 64)
NOT_FALLING = 0.9  # a point may be this much below the best before it (noise), no lower
SPEEDUP_AT_32 = {"translate": 3.0, "caption": 3.0, "translate beam 4": 2.0, "caption beam 4": 2.0}


def png_b64(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def workloads() -> dict[str, tuple[str, dict]]:
    """name → (route, JSON body): one ordinary request each (a scene of three digits, a date, a digit)."""
    from sklearn.datasets import load_digits

    from models.data import digits as D

    scenes, _, _ = D.make_scenes(D.digit_splits()["test"], 1, seed=2)
    scene, digit = png_b64(scenes[0]), png_b64(load_digits().images[0] * 15)
    text = "Friday, March 14, 2025"
    return {
        "translate": ("/v1/translate", {"text": text}),
        "translate beam 4": ("/v1/translate", {"text": text, "beam_size": 4}),
        "caption": ("/v1/caption", {"image": scene}),
        "caption beam 4": ("/v1/caption", {"image": scene, "beam_size": 4}),
        "classify": ("/v1/classify", {"image": digit}),
    }


def hey(url: str, body: dict, clients: int, seconds: float, workdir: Path) -> dict:
    """One point: ``hey`` for ``seconds`` at ``clients`` → answers/s, latency percentiles, statuses, hey's CPU."""
    path = workdir / "body.json"
    path.write_text(json.dumps(body))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", "application/json",
                          "-D", str(path), "-o", "csv", url], capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = [line.split(",") for line in out.splitlines()[1:] if line and line[0].isdigit()]
    latency = np.array([float(r[0]) for r in rows])
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r[6]] = statuses.get(r[6], 0) + 1
    offsets = np.array([float(r[7]) for r in rows])
    span = max(offsets.max() + latency[offsets.argmax()] if len(rows) else seconds, 1e-9)
    return {"clients": clients, "requests": len(rows), "statuses": statuses,
            "per_s": float(statuses.get("200", 0) / span),
            "p50_ms": float(np.percentile(latency, 50) * 1e3), "p99_ms": float(np.percentile(latency, 99) * 1e3),
            "hey_cpu": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall}


def sweep(url: str, seconds: float, clients=CLIENTS, progress=print) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (route, body) in workloads().items():
            hey(url + route, body, 4, 1, Path(tmp))  # warm: connections, kernels
            results[name] = []
            for c in clients:
                point = hey(url + route, body, c, seconds, Path(tmp))
                results[name].append(point)
                progress(f"{name:17s} {c:3d} clients: {point['per_s']:7.1f}/s  p50 {point['p50_ms']:6.1f} ms  "
                         f"p99 {point['p99_ms']:6.1f} ms  {point['statuses']}  hey {point['hey_cpu']:.2f} CPU")
    return {"workloads": results, "checks": checks(results)}


def checks(results: dict) -> dict[str, bool]:
    out = {}
    for name, points in results.items():
        out[f"{name}: every answer a 200"] = all(set(p["statuses"]) == {"200"} for p in points)
        best, falls = 0.0, []
        for p in points:
            if p["per_s"] < NOT_FALLING * best:
                falls.append(p["clients"])
            best = max(best, p["per_s"])
        out[f"{name}: answers/s never fall as clients are added (≥ {NOT_FALLING:g}× the best before)"] = not falls
        if name in SPEEDUP_AT_32:
            by = {p["clients"]: p["per_s"] for p in points}
            if 1 in by and 32 in by:
                out[f"{name}: 32 clients ≥ {SPEEDUP_AT_32[name]:g}× one client"] = bool(by[32] >= SPEEDUP_AT_32[name] * by[1])
    return out


def report(result: dict, machine: str, command: str) -> str:
    lines = [f"# Concurrency sweep ({result['when']})", "", f"Machine: {machine}. Command: `{command}`; "
             f"{result['seconds']:g} s per point, closed loop (`hey -z`), ordinary requests.", "",
             "| workload | " + " | ".join(f"{c} clients" for c in result["clients"]) + " | 32 ÷ 1 |",
             "|---|" + "---|" * (len(result["clients"]) + 1)]
    for name, points in result["workloads"].items():
        by = {p["clients"]: p for p in points}
        ratio = by[32]["per_s"] / by[1]["per_s"] if 32 in by and 1 in by else float("nan")
        cells = [f"{p['per_s']:.0f}/s, p50 {p['p50_ms']:.0f} ms" + ("" if set(p["statuses"]) == {"200"} else f" **{p['statuses']}**")
                 for p in points]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}× |")
    lines += ["", f"Every answer was a 200 unless a cell says otherwise. `hey`'s own CPU: at most "
              f"{max(p['hey_cpu'] for ps in result['workloads'].values() for p in ps):.2f} of a CPU at any point.", "",
              "| check | holds |", "|---|---|"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in result["checks"].items()]
    if result.get("replicas"):
        lines += ["", "Replicas after the sweep: " + "; ".join(
            f"{name}: width {s.get('batch_limit')} of {s.get('max_batch_size')}, finished {s.get('finished')}"
            for name, s in result["replicas"].items())]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for name, points in result["workloads"].items():
        clients = [p["clients"] for p in points]
        top.plot(clients, [p["per_s"] for p in points], marker="o", label=name)
        bottom.plot(clients, [p["p50_ms"] for p in points], marker="o", label=name)
    top.set_ylabel("answers / s (all 200)")
    top.set_title("Closed-loop clients against answers per second and median latency")
    bottom.set_ylabel("p50 latency (ms)")
    bottom.set_xlabel("concurrent clients")
    bottom.set_xscale("log", base=2)
    bottom.set_yscale("log")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from frontend_bench import cpu_name, local_service

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one as `make run` does)")
    parser.add_argument("--seconds", type=float, default=6, help="seconds per point (default 6)")
    parser.add_argument("--repository", type=Path, default=Path(os.environ.get("MODEL_REPOSITORY", ROOT / "model_repository")))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        print("error: needs `hey` (Debian: apt-get install hey)", file=sys.stderr)
        return 2
    machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"
    command = " ".join(["python tests/benchmarks/concurrency.py", *(argv or sys.argv[1:])])
    replicas = {}
    if args.url:
        result = sweep(args.url.rstrip("/"), args.seconds)
    else:
        with local_service(args.repository) as url:
            result = sweep(url, args.seconds)
            replicas = replica_stats()
    result |= {"when": time.strftime("%Y-%m-%d"), "seconds": args.seconds, "clients": list(CLIENTS), "machine": machine,
               "replicas": replicas}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concurrency.json").write_text(json.dumps(result, indent=1))
    text = report(result, machine, command)
    (args.out / "concurrency.md").write_text(text)
    plot(result, args.out / "concurrency.png")
    print(text)
    return 0 if all(result["checks"].values()) else 1


def replica_stats() -> dict:
    """The decoders' own view (width, finish reasons); the report only quotes it."""
    try:
        import ray

        from tests.servicekit import stats

        ray.init(address="auto", logging_level="ERROR")
        try:
            return {name: stats(name) for name in ("translator", "captioner")}
        finally:
            ray.shutdown()
    except Exception as e:  # the sweep's verdicts do not depend on it
        print(f"(no replica stats: {e})")
        return {}


if __name__ == "__main__":
    sys.exit(main())
