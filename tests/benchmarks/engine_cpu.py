"""The decoding engine's CPU per batch, and how much of it is the engine's own Python (outside ONNX Runtime).

    python tests/benchmarks/engine_cpu.py --repository REPO                       # this checkout, six workloads
    python tests/benchmarks/engine_cpu.py --repository REPO --against ../old      # old and this alternating, a table

A workload is a batch of the translator's test sentences (greedy or beam 4; 1, 8 or 32 of them) submitted at once to
a ``DecodeEngine`` stepped to the end without its thread, with one ONNX Runtime thread, so that the calling thread's
CPU time (``time.thread_time``) is the whole of the work: the batch's CPU, and the part of it spent outside
``InferenceSession.run`` (scheduling, the batch's layout, the search; the engine's "host" time). Thread CPU time, not
wall time: on a shared VM, wall-clock A/B runs of this differed by ±20 % between identical runs, CPU time by a few %.
Each figure is the best of ``--runs`` batches; ``--against`` runs each workload in a fresh process per checkout,
alternating ``--alternations`` times, and reports the minima (and that both gave the same tokens).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ((1, 1), (1, 8), (1, 32), (4, 1), (4, 8), (4, 32))  # (beam, sentences)


def measure(repository: Path, beam: int, batch: int, runs: int, texts: list[str] | None = None) -> dict:
    """In this process, with whatever ``service`` the import path finds first: ``batch`` of ``texts`` (default: the
    translator's test split) decoded ``runs`` times after three warm-up batches."""
    import numpy as np

    from models import checkpoint
    from models.data import text as text_data
    from service.engine import DecodeEngine, EngineOptions, Sequence
    from service.runtime import EncoderDecoderRuntime, RuntimeOptions

    _, tok = checkpoint.load("translator")
    texts = texts or [s for s, _ in text_data.build_corpus()["test"]]
    sources = [np.asarray(tok.encode(s)[:255] + [3], dtype=np.int64) for s in texts[:batch]]
    rt = EncoderDecoderRuntime(repository, RuntimeOptions(providers=("CPUExecutionProvider",), intra_op_threads=1))
    in_ort = [0.0]
    for session in (rt.encoder, rt.decoder):
        def timed(*args, _run=session.run, **kwargs):
            started = time.thread_time()
            try:
                return _run(*args, **kwargs)
            finally:
                in_ort[0] += time.thread_time() - started
        session.run = timed
    engine = DecodeEngine(rt, EngineOptions(max_batch=batch * beam, auto_width=False, max_queue=10**6, max_queue_wait_s=3600))

    def job() -> list[list[int]]:
        seqs = engine.submit_all([Sequence(s, 128, beam_size=beam, length_penalty=0.0) for s in sources])
        while engine.load != (0, 0):
            engine.step()
        return [s.future.result() for s in seqs]

    for _ in range(3):
        outputs = job()
    total, host = [], []
    for _ in range(runs):
        in_ort[0], started = 0.0, time.thread_time()
        job()
        total.append(time.thread_time() - started)
        host.append(total[-1] - in_ort[0])
    return {"beam": beam, "batch": batch, "cpu_ms": min(total) * 1e3, "host_ms": min(host) * 1e3,
            "tokens": hashlib.md5(json.dumps(outputs).encode()).hexdigest()[:12]}


def run_in(src: Path, repository: Path, beam: int, batch: int, runs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); sys.path.insert(0, {str(ROOT / 'tests' / 'benchmarks')!r});"
            f"import json, engine_cpu; print(json.dumps(engine_cpu.measure(engine_cpu.Path({str(repository)!r}), {beam}, {batch}, {runs})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=src, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="model repository (its translator/1)")
    parser.add_argument("--against", type=Path, help="another checkout of this project: alternate with it, print a table")
    parser.add_argument("--alternations", type=int, default=4)
    parser.add_argument("--runs", type=int, default=15, help="batches timed per process (the best counts)")
    args = parser.parse_args(argv)
    model = (args.repository / "translator" / "1").resolve()
    checkouts = [args.against.resolve(), ROOT] if args.against else [ROOT]
    best: dict[tuple, dict] = {}
    for _ in range(args.alternations if args.against else 1):
        for beam, batch in WORKLOADS:
            for src in checkouts:
                r = run_in(src, model, beam, batch, args.runs)
                key = (str(src), beam, batch)
                old = best.get(key)
                best[key] = r if old is None else {**r, "cpu_ms": min(r["cpu_ms"], old["cpu_ms"]), "host_ms": min(r["host_ms"], old["host_ms"])}
                print(f"{src.name}: {'greedy' if beam == 1 else f'beam {beam}'} × {batch}: CPU {r['cpu_ms']:.1f} ms, "
                      f"outside ONNX Runtime {r['host_ms']:.1f} ms, tokens {r['tokens']}", flush=True)
    print(f"\n{' '.join(sys.argv)}\n")
    if not args.against:
        return 0
    print("| workload | before: CPU | after: CPU | after ÷ before | outside ONNX Runtime, before → after | same tokens |")
    print("|---|---|---|---|---|---|")
    for beam, batch in WORKLOADS:
        a, b = best[(str(checkouts[0]), beam, batch)], best[(str(ROOT), beam, batch)]
        print(f"| {'greedy' if beam == 1 else f'beam {beam}'}, {batch} sentence{'s' if batch > 1 else ''} | {a['cpu_ms']:.1f} ms | "
              f"{b['cpu_ms']:.1f} ms | {b['cpu_ms'] / a['cpu_ms']:.2f}× | {a['host_ms']:.1f} → {b['host_ms']:.1f} ms | "
              f"{'yes' if a['tokens'] == b['tokens'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
