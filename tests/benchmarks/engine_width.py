"""The decode loop's answers per second by batch width, in-process: fixed widths beside the width the engine chooses.

    python tests/benchmarks/engine_width.py --repository REPO      # → tests/benchmarks/results/engine_width.md

One ``DecodeEngine`` (the service's, one ONNX Runtime thread as a replica on one CPU has) on the translator, 64
closed-loop client threads each submitting one ordinary translation (a date, greedy or ``beam_size`` 4) as soon as
the last is answered, 1.5 s of warm-up then ``--seconds`` measured, for widths 4, 8, 16 and 32 (``auto_width``
off) and for ``auto`` (the width the engine chooses: calibrated at start, re-chosen from the loop's own time a step
as it runs, ``service/engine/calibration.py``). Each round runs every setting once, in the same order.
No HTTP: what is measured is the loop and its width, not the front end.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TEXT = "Friday, March 14, 2025"
WIDTHS = (4, 8, 16, 32)


def measure(directory: Path, width: int | None, beam: int, clients: int = 64, seconds: float = 5.0,
            warm_up: float = 1.5) -> dict:
    """Answers per second of ``clients`` closed-loop threads; ``width`` None: auto width (max 32)."""
    from models.data.tokenizer import Tokenizer
    from service.engine import DecodeEngine, EngineOptions, Sequence
    from service.runtime import EncoderDecoderRuntime, RuntimeOptions

    rt, tok = EncoderDecoderRuntime(directory, RuntimeOptions(intra_op_threads=1)), Tokenizer.load(directory)
    source = np.array(tok.encode(TEXT) + [rt.config["special_tokens"]["eos"]], dtype=np.int64)
    options = EngineOptions(max_batch=32) if width is None else EngineOptions(max_batch=width, auto_width=False)
    engine = DecodeEngine(rt, options).start()
    done, stop, reasons = [0], threading.Event(), {}

    def client() -> None:
        while not stop.is_set():
            seq = engine.submit(Sequence(source, 128, beam_size=beam))
            seq.future.result(timeout=120)
            reasons[seq.finish_reason] = reasons.get(seq.finish_reason, 0) + 1
            done[0] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        time.sleep(warm_up)
        before, started = done[0], time.monotonic()
        time.sleep(seconds)
        rate = (done[0] - before) / (time.monotonic() - started)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        engine.stop()
    loop = engine.loop_width
    return {"width": "auto" if width is None else width, "beam": beam, "per_s": rate, "final_width": engine.batch_limit,
            "loop_ms": None if loop is None or loop.host_s is None else loop.host_s * 1e3, "reasons": reasons}


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                platform.processor() or platform.machine())


def table(results: list[dict], command: str) -> str:
    settings = [*WIDTHS, "auto"]
    lines = [f"# The decode loop's answers per second by width ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {cpu_name()}, Python {platform.python_version()}. Command: "
             f"`{command}`. 64 closed-loop clients in-process, one ONNX Runtime thread; each cell: every round's rate.",
             "", "| beam | " + " | ".join(f"width {s}" for s in settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for beam in sorted({r["beam"] for r in results}):
        cells = []
        for s in settings:
            runs = [r for r in results if r["beam"] == beam and r["width"] == s]
            text = ", ".join(f"{r['per_s']:.0f}/s" for r in runs)
            if s == "auto" and runs:
                text += " (chose " + ", ".join(str(r["final_width"]) for r in runs) + ")"
            cells.append(text)
        lines.append(f"| {beam} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    results = []
    for _ in range(args.rounds):
        for beam in (1, 4):
            for width in (*WIDTHS, None):
                results.append(measure(args.repository / "translator" / "1", width, beam, seconds=args.seconds))
                print(results[-1], flush=True)
    command = "python tests/benchmarks/engine_width.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = table(results, command.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_width.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
