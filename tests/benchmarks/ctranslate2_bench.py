"""The service's decoding engine vs CTranslate2 on the very same weights.

    python tests/benchmarks/ctranslate2_bench.py            # → tests/benchmarks/results/ctranslate2_bench.{md,png,json}
    python tests/benchmarks/ctranslate2_bench.py --quick    # fewer sentences and rounds (smoke run)

Needs the benchmark extra: ``pip install -e ".[bench]"`` (ctranslate2 4.8.5).

1. The trained translator's weights are written into a CTranslate2 ``TransformerSpec``; greedy outputs of the test
   split must be identical on both engines, beam-4 agreement is reported too (``length_penalty`` 0 on both).
2. Throughput (generated tokens / s) and latency at batch 1, 8, 32, greedy and beam 4, same threads for both: the
   trained model (real test sentences) and a Transformer-base-sized one (6+6 layers, d 512, FFN 2048, 32k vocabulary,
   random weights, EOS disabled so both engines decode exactly ``--tokens`` tokens).

"The engine" is the service's ``service.engine.DecodeEngine``, stepped without its thread: a batch's sentences are
submitted at once (a beam request is ``beam_size`` rows of the shared batch) and ``step()`` runs until the engine is
empty; one run is the whole batch, encode + decode, as one ``translate_batch`` is. (``decode_bench.py`` times the
offline ``EncoderDecoderRuntime.generate``.)

CTranslate2 at its best. On the 2-vCPU Xeon (Sapphire Rapids) VM, trained model, greedy, 2 threads, tok/s at batch
1 / 8 / 32, best of 7-15 runs, separate processes, quiet machine:

* Torch must not run multi-threaded in this process. CT2's wheel ships a libgomp, but CT2's OpenMP calls bind to
  the one torch loads globally (``LD_DEBUG=bindings``); once torch's 2-thread team exists CT2 is 2-3x slower at
  every batch, with MKL or oneDNN alike (batch 1 after this script's export and conversion: 11.1-11.5 ms with
  torch on 2 threads, 2.8-3.8 ms on 1). Torch only loads, exports and converts here, on 1 thread.
* CT2 4.8.5 on an Intel CPU uses MKL with packed SGEMM weights (on AMD oneDNN), AVX2 kernels: 1.4-1.6k / 4.4-5.4k /
  11-12k tok/s; ``CT2_PACKED_GEMM=0``: 4.3-4.9k / 10.5-12.2k / 20.5-22.5k; oneDNN (``CT2_USE_MKL=0``) and
  ``CT2_FORCE_CPU_ISA=AVX512`` no faster. The knobs are read once, at a process's first ``Translator``: each of
  ``CT2_CANDIDATES`` is timed in a clean subprocess (both models, greedy) and the fastest overall (geometric mean)
  serves both (``--ct2-env`` fixes one); the report lists them all, and CT2's greedy rows here against the chosen
  one's probe (well under 1×: something in this process slows CT2). ``OPENBLAS_*`` are left as they are: CT2 loads
  no OpenBLAS (measured: no difference).
* One CTranslate2 ``Translator`` at a time: a second one, created after the first had run, decoded the base-sized
  model 2.5x slower than in a clean process (greedy, batch 1, 64 tokens: ~800 against ~310 ms); the tables of
  2026-12-02 and before measured the base-sized rows that way. The trained model's engines are released before the
  base-sized ones, and the probe times the base-sized model at ``--tokens``, so both models' greedy rows are checked
  against a clean process.
* The repetition guard is off for the base-sized model (random weights repeat themselves; CT2 decodes every token),
  and its rows fail unless both engines decoded exactly ``--tokens`` tokens per sentence.
* Time: each row warms both engines up, then ``--rounds`` rounds; in a round each engine in turn runs 1-5 times
  (up to 0.3 s) after a 0.2 s pause. Interleaving makes load elsewhere on a shared machine hit both alike (one busy
  neighbour process halves 2-thread CT2 at batch 8); the pause lets the other runtime's threads stop spinning (ONNX
  Runtime's keep a CPU busy ~50-70 ms after a run; CT2 started within that is several times slower). Figures are
  the best run (medians in the JSON); tokens/s counts generated tokens.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from export.onnx import export_encoder_decoder  # noqa: E402
from export.repository import runtime_config  # noqa: E402
from models import checkpoint  # noqa: E402
from models.data import text as text_data  # noqa: E402
from models.translator import Translator, TranslatorConfig  # noqa: E402
from service.engine import DecodeEngine, EngineOptions, Sequence  # noqa: E402
from service.runtime import EncoderDecoderRuntime, RuntimeOptions  # noqa: E402
from service.runtime import bench_providers  # noqa: E402

BASE = TranslatorConfig(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, encoder_layers=6, decoder_layers=6, max_len=256)
BATCHES = (1, 8, 32)
BOS, EOS, PAD = 2, 3, 0
LENGTH_PENALTY = 0.0  # beam scores: plain sum of log-probabilities on both engines
PAUSE_S = 0.2  # between two engines: ONNX Runtime's intra-op workers spin ~50-70 ms after a run
CT2_KNOBS = ("CT2_USE_MKL", "CT2_PACKED_GEMM", "CT2_FORCE_CPU_ISA")
CT2_CANDIDATES = {  # CTranslate2's documented CPU knobs; a setting the build or CPU lacks fails and is skipped
    "default": {},
    "MKL, unpacked SGEMM": {"CT2_USE_MKL": "1", "CT2_PACKED_GEMM": "0"},
    "oneDNN": {"CT2_USE_MKL": "0"},
    "MKL, unpacked, AVX-512": {"CT2_USE_MKL": "1", "CT2_PACKED_GEMM": "0", "CT2_FORCE_CPU_ISA": "AVX512"},
}


# ------------------------------------------------------------------------------------------ conversion


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _linear(spec, module) -> None:
    spec.weight = _np(module.weight)
    spec.bias = _np(module.bias)


def _norm(spec, module) -> None:
    spec.gamma = _np(module.weight)
    spec.beta = _np(module.bias)


def _fused(spec, modules) -> None:
    spec.weight = np.concatenate([_np(m.weight) for m in modules])
    spec.bias = np.concatenate([_np(m.bias) for m in modules])


def _ffn(spec, ffn, norm) -> None:
    _norm(spec.layer_norm, norm)
    _linear(spec.linear_0, ffn.linear1)
    _linear(spec.linear_1, ffn.linear2)


def convert(model: Translator, vocabulary: list[str], out: Path) -> Path:
    """Write ``model`` as a CTranslate2 model directory (same weights, no quantization)."""
    from ctranslate2.specs import transformer_spec

    c = model.config
    spec = transformer_spec.TransformerSpec.from_config((c.encoder_layers, c.decoder_layers), c.n_heads, pre_norm=True)
    positions = _np(model.positions)
    enc, dec = spec.encoder, spec.decoder
    enc.embeddings[0].weight = _np(model.src_embed.weight)
    enc.position_encodings.encodings = positions
    for layer, ours in zip(enc.layer, model.encoder.layers):
        a = ours.self_attn
        _norm(layer.self_attention.layer_norm, ours.self_attn_norm)
        _fused(layer.self_attention.linear[0], [a.q_proj, a.k_proj, a.v_proj])
        _linear(layer.self_attention.linear[1], a.out_proj)
        _ffn(layer.ffn, ours.ffn, ours.ffn_norm)
    _norm(enc.layer_norm, model.encoder.norm)
    dec.embeddings.weight = _np(model.decoder.embed.weight)
    dec.position_encodings.encodings = positions
    for layer, ours in zip(dec.layer, model.decoder.layers):
        s, x = ours.self_attn, ours.cross_attn
        _norm(layer.self_attention.layer_norm, ours.self_attn_norm)
        _fused(layer.self_attention.linear[0], [s.q_proj, s.k_proj, s.v_proj])
        _linear(layer.self_attention.linear[1], s.out_proj)
        _norm(layer.attention.layer_norm, ours.cross_attn_norm)
        _linear(layer.attention.linear[0], x.q_proj)
        _fused(layer.attention.linear[1], [x.k_proj, x.v_proj])
        _linear(layer.attention.linear[2], x.out_proj)
        _ffn(layer.ffn, ours.ffn, ours.ffn_norm)
    _norm(dec.layer_norm, model.decoder.norm)
    _linear(dec.projection, model.decoder.output)
    spec.register_source_vocabulary(vocabulary)
    spec.register_target_vocabulary(vocabulary)
    spec.validate()
    spec.optimize(quantization=None)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    return out


# ------------------------------------------------------------------------------------------ engines


class Engine:
    """The service's ``DecodeEngine`` (no thread): a run submits the batch at once and steps until it is empty."""

    def __init__(self, directory: Path, threads: int, guard: bool = True) -> None:
        self.rt = EncoderDecoderRuntime(directory, RuntimeOptions(providers=bench_providers(), intra_op_threads=threads))
        self.guard = guard  # the repetition guard; off for the random base-sized model, which CT2 decodes to the end

    def job(self, sources: list[list[int]], beam: int, max_new: int):
        engine = DecodeEngine(self.rt, EngineOptions(max_batch=len(sources) * beam, auto_width=False, max_queue=10**6,
                                                     max_queue_wait_s=3600, stop_on_repetition=self.guard))
        sources = [np.asarray(s, dtype=np.int64) for s in sources]

        def run() -> list[list[int]]:
            seqs = engine.submit_all([Sequence(s, max_new, beam_size=beam, length_penalty=LENGTH_PENALTY) for s in sources])
            while engine.load != (0, 0):
                engine.step()
            return [s.future.result() for s in seqs]
        return run


class CT2:
    def __init__(self, directory: Path, vocabulary: list[str], threads: int) -> None:
        import ctranslate2

        self.translator = ctranslate2.Translator(str(directory), device="cpu", inter_threads=1, intra_threads=threads)
        self.vocabulary, self.index = vocabulary, {p: i for i, p in enumerate(vocabulary)}

    def job(self, sources: list[list[int]], beam: int, max_new: int):
        batch = [[self.vocabulary[i] for i in s] for s in sources]

        def run() -> list[list[int]]:
            results = self.translator.translate_batch(batch, beam_size=beam, max_decoding_length=max_new, max_batch_size=0,
                                                      length_penalty=LENGTH_PENALTY, return_scores=False)
            return [[self.index[t] for t in r.hypotheses[0]] for r in results]
        return run


def measure(runs: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """(best, median) seconds of each job: ``rounds`` rounds, each job in turn within a round (1-5 runs, up to
    0.3 s) after a pause, so that load elsewhere hits every engine alike and none runs while another's threads spin."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(PAUSE_S)
            started = time.perf_counter()
            for _ in range(5):
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
                if time.perf_counter() - started > 0.3:
                    break
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


# ------------------------------------------------------------------------------------------ CTranslate2's setting


PROBE = """import json, sys, time, ctranslate2
out = []
for job in json.load(open(sys.argv[1])):
    tr = ctranslate2.Translator(job["model"], device="cpu", inter_threads=1, intra_threads=int(sys.argv[2]))
    run = lambda b: tr.translate_batch(b, beam_size=1, max_decoding_length=job["max_len"], max_batch_size=0)
    tokens, best = [sum(len(r.hypotheses[0]) for r in run(b)) for b in job["batches"]], [1e9] * len(job["batches"])
    for _ in range(job["reps"]):
        for i, b in enumerate(job["batches"]):
            t = time.perf_counter(); run(b); best[i] = min(best[i], time.perf_counter() - t)
    out += [n / s for n, s in zip(tokens, best)]
print(json.dumps(out))"""  # greedy tok/s of each model at each batch, interleaved, best of the reps


def tune_ct2(jobs: list[dict], threads: int, rounds: int, tmp: Path) -> dict:
    """Each of ``CT2_CANDIDATES`` in its own process (the knobs are read once per process, so one setting serves both
    models), ``rounds`` interleaved rounds → the fastest setting (geometric mean over every model and batch): name,
    env, backend (as CT2 logs it), and every candidate's greedy tok/s."""
    job = tmp / "ct2_probe.json"
    job.write_text(json.dumps(jobs))
    avx512 = Path("/proc/cpuinfo").exists() and "avx512f" in Path("/proc/cpuinfo").read_text()
    names = [n for n in CT2_CANDIDATES if avx512 or "AVX512" not in CT2_CANDIDATES[n].values()]
    found = {n: {"name": n, "env": CT2_CANDIDATES[n], "tok_s": None, "backend": ""} for n in names}
    for _ in range(rounds):
        for name in names:
            env = {k: v for k, v in os.environ.items() if k not in CT2_KNOBS} | CT2_CANDIDATES[name] | {"CT2_VERBOSE": "1"}
            p = subprocess.run([sys.executable, "-c", PROBE, str(job), str(threads)], env=env, capture_output=True, text=True,
                               timeout=600)
            if p.returncode:
                found[name]["backend"] = "failed: " + (p.stderr.strip().splitlines() or ["?"])[-1][:120]
                continue
            tok_s = json.loads(p.stdout.strip().splitlines()[-1])
            f = found[name]
            f["tok_s"] = tok_s if f["tok_s"] is None else [max(a, b) for a, b in zip(f["tok_s"], tok_s)]
            f["backend"] = "; ".join(line.split("] ")[-1].strip(" -") for line in p.stderr.splitlines()
                                     if "Selected ISA" in line or "SGEMM backend" in line)
    for f in found.values():
        f["score"] = math.exp(statistics.fmean(map(math.log, f["tok_s"]))) if f["tok_s"] else 0.0
        print(f"  CT2 {f['name']}: {f['tok_s'] and ' / '.join(f'{x:.0f}' for x in f['tok_s'])} tok/s ({f['backend']})", flush=True)
    best = max(found.values(), key=lambda f: f["score"])
    return {"name": best["name"], "env": best["env"], "backend": best["backend"], "candidates": list(found.values())}


# ------------------------------------------------------------------------------------------ benchmark


def base_model() -> Translator:
    torch.manual_seed(0)
    model = Translator(BASE).eval()
    with torch.no_grad():
        model.decoder.output.bias[EOS] = -1e4  # never stop: every engine decodes exactly max_new tokens
    return model


def speed(name: str, engines: dict, sentences: list[list[int]], max_new: int, rounds: int, exact: bool = False) -> list[dict]:
    """Tokens/s of each engine at each beam and batch. ``exact``: every output must be ``max_new`` tokens long on
    both engines (the base-sized model, EOS disabled), else the two did different work and the row would lie."""
    rows = []
    for beam in (1, 4):
        for batch in BATCHES:
            chunk = (sentences * ((batch // len(sentences)) + 1))[:batch]
            row, runs = {"model": name, "beam": beam, "batch": batch}, {}
            for label, engine in engines.items():
                time.sleep(PAUSE_S)
                runs[label] = engine.job(chunk, beam, max_new)
                outputs = runs[label]()  # and the warm-up
                row[f"{label}_tokens"] = sum(len(o) for o in outputs)
                if exact and any(len(o) != max_new for o in outputs):
                    raise RuntimeError(f"{name}: {label} decoded {sorted({len(o) for o in outputs})} tokens, not {max_new}")
            for label, (best, median) in measure(runs, rounds).items():
                row[f"{label}_tok_s"], row[f"{label}_ms"] = row[f"{label}_tokens"] / best, best * 1e3
                row[f"{label}_median_ms"] = median * 1e3
            row["throughput_ratio"] = row["engine_tok_s"] / row["ct2_tok_s"]
            row["latency_ratio"] = row["engine_ms"] / row["ct2_ms"]
            rows.append(row)
            print(f"  {name} beam {beam} batch {batch}: engine {row['engine_tok_s']:.0f} tok/s ({row['engine_ms']:.1f} ms), "
                  f"ct2 {row['ct2_tok_s']:.0f} tok/s ({row['ct2_ms']:.1f} ms) → {row['throughput_ratio']:.2f}×", flush=True)
    return rows


def agreement(engine: Engine, ct2: CT2, sources: list[list[int]], beam: int, tok, texts: list[str]) -> dict:
    same, examples = 0, []
    for i in range(0, len(sources), 64):
        a, b = engine.job(sources[i : i + 64], beam, 128)(), ct2.job(sources[i : i + 64], beam, 128)()
        for j, (x, y) in enumerate(zip(a, b)):
            if x == y:
                same += 1
            elif len(examples) < 3:
                examples.append(f"{texts[i + j]!r}: {tok.decode(x)!r} vs {tok.decode(y)!r}")
    print(f"beam {beam}: identical outputs {same}/{len(sources)}", flush=True)
    return {"n": len(sources), "identical": same, "examples": examples}


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor() or "unknown")


def write_report(identity: dict, ct2_setting: dict, rows: list[dict], out: Path, args, threads: int, seconds: float) -> None:
    import ctranslate2
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    (out / "ctranslate2_bench.json").write_text(json.dumps({"identity": identity, "ct2_setting": ct2_setting, "rows": rows}, indent=2))
    env = " ".join(f"{k}={v}" for k, v in ct2_setting["env"].items()) or "no CT2 variable"
    greedy, beam = identity["greedy"], identity["beam"]
    lines = [
        "# Translation engine vs CTranslate2 (same weights)", "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs; both engines on {threads} threads (ORT intra-op / CT2 intra_threads, one inter thread)",
        f"- versions: onnxruntime {ort.__version__}, ctranslate2 {ctranslate2.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `python tests/benchmarks/ctranslate2_bench.py{' --quick' if args.quick else ''}` ({seconds:.0f} s), {dt.date.today()}",
        "- engine: the service's `service.engine.DecodeEngine` (ONNX Runtime, KV cache; beams as rows of the shared batch), "
        "the batch submitted at once, stepped until empty",
        f"- CT2: `Translator.translate_batch`, fp32, setting **{ct2_setting['name']}** ({env}; {ct2_setting['backend']}), "
        f"the fastest of {len(ct2_setting['candidates'])} measured (below); `length_penalty` 0 on both; torch on 1 thread",
        f"- time: best run of {args.rounds} interleaved rounds (1-5 runs each, 0.2 s pause between engines), whole batch "
        "(encode + decode); tokens/s counts generated tokens", "",
        "## Same outputs", "",
        f"Greedy translations of {greedy['n']} test sentences identical on both engines: **{greedy['identical']}/{greedy['n']}**"
        + (f" (differences: {greedy['examples']})" if greedy["examples"] else ""), "",
        f"Beam 4, first {beam['n']} test sentences: {beam['identical']}/{beam['n']} identical"
        + (f" (differences: {beam['examples']})" if beam["examples"] else ""), "",
        "## CTranslate2's CPU setting", "",
        f"Each in a clean process, {threads} threads, greedy tok/s at batch " + " / ".join(map(str, BATCHES))
        + f": the trained model, then the base-sized one ({args.tokens} tokens):", "",
        "| setting | environment | tok/s | geometric mean | backend |", "|---|---|---|---|---|",
    ]
    for c in ct2_setting["candidates"]:
        figures = " / ".join(f"{x:.0f}" for x in c["tok_s"]) if c["tok_s"] else "-"
        lines.append(f"| {c['name']} | {' '.join(f'{k}={v}' for k, v in c['env'].items()) or '-'} | {figures} | {c['score']:.0f} | {c['backend']} |")
    if "here_vs_probe" in ct2_setting:
        lines += ["", "CT2's greedy rows below (trained model, then base-sized), against the chosen setting's clean process: "
                  + " / ".join(f"{x:.2f}×" for x in ct2_setting["here_vs_probe"]) + " (interleaved with the engine; well under 1× would "
                  "mean something in this process slows CT2, as a multi-threaded torch did by 2-3×, and a second Translator 2.5×)"]
    lines += ["", "## Throughput and latency", "",
              "| model | beam | batch | engine tok/s | CT2 tok/s | throughput engine/CT2 | engine ms | CT2 ms | latency engine/CT2 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['beam']} | {r['batch']} | {r['engine_tok_s']:.0f} | {r['ct2_tok_s']:.0f} | "
                     f"{r['throughput_ratio']:.2f}× | {r['engine_ms']:.1f} | {r['ct2_ms']:.1f} | {r['latency_ratio']:.2f}× |")
    (out / "ctranslate2_bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for beam_size, style in ((1, "-o"), (4, "--s")):
            sel = [r for r in rows if r["model"] == model and r["beam"] == beam_size]
            for key, color, label in (("engine", "tab:blue", "engine"), ("ct2", "tab:orange", "CTranslate2")):
                ax.plot([r["batch"] for r in sel], [r[f"{key}_tok_s"] for r in sel], style, color=color, label=f"{label}, beam {beam_size}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
        ax.set_xlabel("batch size")
        ax.set_ylabel("generated tokens / s")
        ax.set_title(model)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ctranslate2_bench.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 sentences (64 for beam 4) for the identity check, 1 round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per sentence by the base-sized model")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds per row (default 5, --quick 1)")
    parser.add_argument("--ct2-env", help="use this CT2 setting (e.g. CT2_PACKED_GEMM=0,CT2_USE_MKL=1) instead of measuring the candidates")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    try:
        import ctranslate2  # noqa: F401  (its CPU knobs are read at the first Translator, after tuning below)
    except ImportError:
        print('error: needs ctranslate2: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    started = time.time()
    torch.set_num_threads(1)  # before any torch op: a multi-threaded torch team slows CT2 2-3x (see the docstring)
    args.rounds = args.rounds or (1 if args.quick else 5)
    model, tok = checkpoint.load("translator")
    model.eval()
    vocabulary = tok.pieces(range(model.config.vocab_size))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trained, trained_ct2 = tmp / "trained", tmp / "trained_ct2"
        trained.mkdir()
        export_encoder_decoder(model, trained, text_source=True)
        (trained / "config.json").write_text(json.dumps(runtime_config(model)))
        convert(model, vocabulary, trained_ct2)
        test = [s for s, _ in text_data.build_corpus()["test"]]
        n = 200 if args.quick else len(test)
        sources = [tok.encode(s)[: model.config.max_len - 1] + [EOS] for s in test[:n]]
        base = base_model()
        base_dir, base_ct2 = tmp / "base", tmp / "base_ct2"
        base_dir.mkdir()
        export_encoder_decoder(base, base_dir, text_source=True)
        (base_dir / "config.json").write_text(json.dumps(runtime_config(base)))
        base_vocab = ["<pad>", "<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(4, BASE.vocab_size)]
        convert(base, base_vocab, base_ct2)
        rng = np.random.default_rng(0)
        base_sources = [list(rng.integers(4, BASE.vocab_size, size=24)) + [EOS] for _ in range(32)]

        if args.ct2_env:
            env = dict(kv.split("=", 1) for kv in args.ct2_env.split(","))
            setting = {"name": "--ct2-env", "env": env, "backend": "", "candidates": []}
        else:
            job = lambda directory, vocab, batch, max_len, reps: {
                "model": str(directory), "batches": [[[vocab[i] for i in s] for s in batch[:b]] for b in BATCHES],
                "max_len": max_len, "reps": reps}
            setting = tune_ct2([job(trained_ct2, vocabulary, sources, 128, 7), job(base_ct2, base_vocab, base_sources, args.tokens, 1)],
                               args.threads, 1 if args.quick else 2, tmp)
        for knob in CT2_KNOBS:  # this process only, before its first Translator
            os.environ.pop(knob, None)
        os.environ.update(setting["env"])
        print(f"CT2 setting: {setting['name']} {setting['env']}", flush=True)

        engine, ct2 = Engine(trained, args.threads), CT2(trained_ct2, vocabulary, args.threads)
        identity = {"greedy": agreement(engine, ct2, sources, 1, tok, test),
                    "beam": agreement(engine, ct2, sources[: 64 if args.quick else 512], 4, tok, test)}
        rows = speed("trained (3+3, d 128)", {"engine": engine, "ct2": ct2}, sources[:32], 128, args.rounds)
        # A CTranslate2 Translator that has run slows the next one in the same process 2.5x (base-sized model, greedy,
        # batch 1: 800 against 310 ms, measured 2026-12-02): the trained model's engines go before the base-sized ones
        del engine, ct2
        gc.collect()
        # Random weights repeat themselves: the engine's repetition guard would end its outputs after a few tokens
        # while CT2 decodes all --tokens of them (EOS is disabled in both), so the guard is off for this model
        engines = {"engine": Engine(base_dir, args.threads, guard=False), "ct2": CT2(base_ct2, base_vocab, args.threads)}
        rows += speed("Transformer-base (6+6, d 512, random)", engines, base_sources, args.tokens, args.rounds, exact=True)
        probe = next((c["tok_s"] for c in setting["candidates"] if c["name"] == setting["name"]), None)
        if probe:  # greedy rows of both models, in the probe's order
            greedy = [r for r in rows if r["beam"] == 1]
            setting["here_vs_probe"] = [r["ct2_tok_s"] / x for r, x in zip(greedy, probe)]
            print("CT2 here vs its clean process (greedy):", " / ".join(f"{x:.2f}×" for x in setting["here_vs_probe"]), flush=True)
    write_report(identity, setting, rows, args.out, args, args.threads, time.time() - started)
    print(f"wrote {args.out / 'ctranslate2_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
