"""The service's decoding engine vs CTranslate2 on the very same weights.

    python tests/benchmarks/ctranslate2_bench.py            # → tests/benchmarks/results/ctranslate2_bench.{md,png,json}
    python tests/benchmarks/ctranslate2_bench.py --quick    # fewer sentences and rounds (smoke run)

Needs the benchmark extra: ``pip install -e ".[bench]"`` (ctranslate2 4.8.5).

1. The trained translator's weights are written into a CTranslate2 ``TransformerSpec`` (pre-norm, ReLU, shared
   embeddings, the model's own sinusoidal table). Greedy outputs of the test split must be identical on both
   engines; beam-4 agreement is reported too (both without length normalisation, ``length_penalty`` 0).
2. Throughput (generated tokens / s) and latency at batch 1, 8, 32, greedy and beam 4, same thread count for
   both: the trained model (real test sentences) and a Transformer-base-sized one (6+6 layers, d 512, 8 heads,
   FFN 2048, 32k vocabulary, random weights, EOS disabled so both engines decode exactly ``--tokens`` tokens).

"The engine" is the service's: ``service.engine.DecodeEngine`` stepped without its thread. A batch's sentences are
submitted at once (``submit_all``; a beam request is ``beam_size`` rows of the shared batch), then ``step()`` runs
until the engine is empty: one run is the whole batch, encode + decode, as one ``translate_batch`` is for CT2.
``--generate`` adds ``EncoderDecoderRuntime.generate`` (the offline path: IOBinding, a Gather session per layer
for beams), which the service no longer uses for requests.

CTranslate2 at its best. CT2 picks its GEMM backend and kernels (ISA) from the CPU and from environment variables
read at the first ``Translator``: on an Intel CPU 4.8.5 uses MKL with *packed* SGEMM weights and AVX2 kernels
(AVX-512 only if forced), on AMD oneDNN. Packed MKL SGEMM on two threads is what made CT2 slow. On the 2-vCPU
Xeon (Sapphire Rapids) VM, trained model, greedy, 2 intra threads, best of 15, tok/s at batch 1 / 8 / 32
(two quiet runs, separate processes):

    default: MKL, packed, AVX2       1627 / 5151-5428  / 11266-12091
    CT2_PACKED_GEMM=0: MKL unpacked  4526-4845 / 11400-11649 / 21413-22052   (2.8x / 2.2x / 1.9x)
    CT2_USE_MKL=0: oneDNN, and either with CT2_FORCE_CPU_ISA=AVX512: within noise of MKL unpacked, not faster
    intra_threads=1 with packed MKL: as fast as unpacked on 2 threads (so: MKL's packed path on 2 OpenMP threads)

So the script does not trust the defaults: before timing it runs each setting of ``CT2_CANDIDATES`` in a
subprocess (trained model, greedy, batch 1 / 8 / 32) and uses the fastest (geometric mean); the report lists every
candidate and the backend CT2 logged for the one used (``--ct2-env`` fixes a setting instead). ``OPENBLAS_*``
variables do not matter to CT2: the wheel links MKL and oneDNN statically and loads no OpenBLAS (measured: no
difference); they are left as they are. The script sets no CT2 variable of its own in this process until tuning.

Time: each row warms both engines up, then runs ``--rounds`` rounds; in a round each engine in turn runs 1-5 times
(up to 0.3 s), after a 0.2 s pause. Interleaving makes a burst of load elsewhere on a shared 2-vCPU machine hit
both engines alike (a busy neighbour halves 2-thread CT2 at batch 8), and the pause lets the other runtime's
threads stop spinning (ONNX Runtime's workers keep a CPU busy for ~50-70 ms after a run; CT2 right after one
is several times slower). Figures are the best run (median in the JSON); tokens/s counts generated tokens.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from service.decoding import DecodingOptions  # noqa: E402
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
    "MKL, packed SGEMM": {"CT2_USE_MKL": "1", "CT2_PACKED_GEMM": "1"},
    "oneDNN": {"CT2_USE_MKL": "0"},
    "MKL, unpacked, AVX-512": {"CT2_USE_MKL": "1", "CT2_PACKED_GEMM": "0", "CT2_FORCE_CPU_ISA": "AVX512"},
    "oneDNN, AVX-512": {"CT2_USE_MKL": "0", "CT2_FORCE_CPU_ISA": "AVX512"},
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

    def __init__(self, directory: Path, threads: int) -> None:
        self.rt = EncoderDecoderRuntime(directory, RuntimeOptions(providers=bench_providers(), intra_op_threads=threads))

    def job(self, sources: list[list[int]], beam: int, max_new: int):
        engine = DecodeEngine(self.rt, EngineOptions(max_batch=len(sources) * beam, auto_width=False, max_queue=10**6,
                                                     max_queue_wait_s=3600))
        sources = [np.asarray(s, dtype=np.int64) for s in sources]

        def run() -> list[list[int]]:
            seqs = engine.submit_all([Sequence(s, max_new, beam_size=beam, length_penalty=LENGTH_PENALTY) for s in sources])
            while engine.load != (0, 0):
                engine.step()
            return [s.future.result() for s in seqs]
        return run


class Generate(Engine):
    """``EncoderDecoderRuntime.generate``: the offline path (``--generate``)."""

    def job(self, sources: list[list[int]], beam: int, max_new: int):
        src = np.full((len(sources), max(map(len, sources))), PAD, dtype=np.int64)
        for i, s in enumerate(sources):
            src[i, : len(s)] = s
        options = DecodingOptions(beam_size=beam, max_new_tokens=max_new, length_penalty=LENGTH_PENALTY)
        return lambda: self.rt.generate(src, src != PAD, options)


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


def ct2_probe(path: Path, threads: int, reps: int) -> None:
    """Subprocess: time greedy translate_batch at each batch of ``path`` (interleaved, best of ``reps``); print JSON."""
    import ctranslate2

    job = json.loads(path.read_text())
    translator = ctranslate2.Translator(job["model"], device="cpu", inter_threads=1, intra_threads=threads)
    run = lambda b: translator.translate_batch(b, beam_size=1, max_decoding_length=128, max_batch_size=0, return_scores=False)
    tokens = [sum(len(r.hypotheses[0]) for r in run(b)) for b in job["batches"]]
    best = [math.inf] * len(tokens)
    for _ in range(reps):
        for i, b in enumerate(job["batches"]):
            t = time.perf_counter()
            run(b)
            best[i] = min(best[i], time.perf_counter() - t)
    print(json.dumps([n / s for n, s in zip(tokens, best)]))


def tune_ct2(model: Path, batches: list[list[list[str]]], threads: int, rounds: int, tmp: Path) -> tuple[str, dict, list[dict]]:
    """Each of ``CT2_CANDIDATES`` in its own process (the knobs are read once), ``rounds`` interleaved rounds →
    (the fastest's name, its env, every candidate's tok/s per batch and the backend CT2 logged)."""
    job = tmp / "ct2_probe.json"
    job.write_text(json.dumps({"model": str(model), "batches": batches}))
    avx512 = "avx512f" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    names = [n for n in CT2_CANDIDATES if avx512 or "AVX512" not in CT2_CANDIDATES[n].values()]
    found = {n: {"name": n, "env": CT2_CANDIDATES[n], "tok_s": None, "backend": ""} for n in names}
    for _ in range(rounds):
        for name in names:
            env = {k: v for k, v in os.environ.items() if k not in CT2_KNOBS} | CT2_CANDIDATES[name] | {"CT2_VERBOSE": "1"}
            p = subprocess.run([sys.executable, __file__, "--ct2-probe", str(job), "--threads", str(threads)],
                               env=env, capture_output=True, text=True, timeout=600)
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
    return best["name"], best["env"], list(found.values())


# ------------------------------------------------------------------------------------------ benchmark


def base_model() -> Translator:
    torch.manual_seed(0)
    model = Translator(BASE).eval()
    with torch.no_grad():
        model.decoder.output.bias[EOS] = -1e4  # never stop: every engine decodes exactly max_new tokens
    return model


def speed(name: str, engines: dict, sentences: list[list[int]], max_new: int, rounds: int) -> list[dict]:
    rows = []
    for beam in (1, 4):
        for batch in BATCHES:
            chunk = (sentences * ((batch // len(sentences)) + 1))[:batch]
            row, runs = {"model": name, "beam": beam, "batch": batch}, {}
            for label, engine in engines.items():
                time.sleep(PAUSE_S)
                runs[label] = engine.job(chunk, beam, max_new)
                row[f"{label}_tokens"] = sum(len(o) for o in runs[label]())  # and the warm-up
            for label, (best, median) in measure(runs, rounds).items():
                row[f"{label}_tok_s"], row[f"{label}_ms"] = row[f"{label}_tokens"] / best, best * 1e3
                row[f"{label}_median_ms"] = median * 1e3
            row["throughput_ratio"] = row["engine_tok_s"] / row["ct2_tok_s"]
            row["latency_ratio"] = row["engine_ms"] / row["ct2_ms"]
            rows.append(row)
            extra = f", generate {row['generate_tok_s']:.0f} tok/s" if "generate" in engines else ""
            print(f"  {name} beam {beam} batch {batch}: engine {row['engine_tok_s']:.0f} tok/s ({row['engine_ms']:.1f} ms), "
                  f"ct2 {row['ct2_tok_s']:.0f} tok/s ({row['ct2_ms']:.1f} ms) → {row['throughput_ratio']:.2f}×{extra}", flush=True)
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
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_report(identity: dict, ct2_setting: dict, rows: list[dict], out: Path, args, threads: int, seconds: float) -> None:
    import ctranslate2
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    (out / "ctranslate2_bench.json").write_text(json.dumps({"identity": identity, "ct2_setting": ct2_setting, "rows": rows}, indent=2))
    gen = "generate_tok_s" in rows[0]
    env = " ".join(f"{k}={v}" for k, v in ct2_setting["env"].items()) or "no CT2 variable"
    greedy, beam = identity["greedy"], identity["beam"]
    lines = [
        "# Translation engine vs CTranslate2 (same weights)", "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs; both engines on {threads} threads (ORT intra-op / CT2 intra_threads, one inter thread)",
        f"- versions: onnxruntime {ort.__version__}, ctranslate2 {ctranslate2.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `python tests/benchmarks/ctranslate2_bench.py{' --quick' if args.quick else ''}` ({seconds:.0f} s), {dt.date.today()}",
        "- engine: the service's `service.engine.DecodeEngine` (ONNX Runtime, KV cache; beams as rows of the shared batch), "
        "the batch submitted at once, stepped until empty"
        + ("; generate: `EncoderDecoderRuntime.generate` (offline path, IOBinding)" if gen else ""),
        f"- CT2: `Translator.translate_batch`, fp32, setting **{ct2_setting['name']}** ({env}; {ct2_setting['backend']}), "
        f"the fastest of {len(ct2_setting['candidates'])} measured (below); `length_penalty` 0 on both",
        f"- time: best run of {args.rounds} interleaved rounds (1-5 runs each, 0.2 s pause between engines), whole batch "
        "(encode + decode); tokens/s counts generated tokens", "",
        "## Same outputs", "",
        f"Greedy translations of {greedy['n']} test sentences identical on both engines: **{greedy['identical']}/{greedy['n']}**"
        + (f" (differences: {greedy['examples']})" if greedy["examples"] else ""), "",
        f"Beam 4, first {beam['n']} test sentences: {beam['identical']}/{beam['n']} identical"
        + (f" (differences: {beam['examples']})" if beam["examples"] else ""), "",
        "## CTranslate2's CPU setting", "",
        "Trained model, greedy, tok/s at batch " + " / ".join(map(str, BATCHES)) + f" ({threads} threads, best of each candidate's runs):", "",
        "| setting | environment | tok/s | geometric mean | backend |", "|---|---|---|---|---|",
    ]
    for c in ct2_setting["candidates"]:
        figures = " / ".join(f"{x:.0f}" for x in c["tok_s"]) if c["tok_s"] else "-"
        lines.append(f"| {c['name']} | {' '.join(f'{k}={v}' for k, v in c['env'].items()) or '-'} | {figures} | {c['score']:.0f} | {c['backend']} |")
    lines += ["", "## Throughput and latency", "",
              "| model | beam | batch | engine tok/s | CT2 tok/s | throughput engine/CT2 | engine ms | CT2 ms | latency engine/CT2 |"
              + (" generate tok/s | generate/CT2 |" if gen else ""),
              "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if gen else "")]
    for r in rows:
        lines.append(f"| {r['model']} | {r['beam']} | {r['batch']} | {r['engine_tok_s']:.0f} | {r['ct2_tok_s']:.0f} | "
                     f"{r['throughput_ratio']:.2f}× | {r['engine_ms']:.1f} | {r['ct2_ms']:.1f} | {r['latency_ratio']:.2f}× |"
                     + (f" {r['generate_tok_s']:.0f} | {r['generate_tok_s'] / r['ct2_tok_s']:.2f}× |" if gen else ""))
    (out / "ctranslate2_bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for beam_size, style in ((1, "-o"), (4, "--s")):
            sel = [r for r in rows if r["model"] == model and r["beam"] == beam_size]
            for key, color, label in (("engine", "tab:blue", "engine"), ("ct2", "tab:orange", "CTranslate2"), ("generate", "tab:gray", "generate")):
                if f"{key}_tok_s" in sel[0]:
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
    parser.add_argument("--generate", action="store_true", help="also time EncoderDecoderRuntime.generate (offline path)")
    parser.add_argument("--ct2-env", help="use this CT2 setting (e.g. CT2_PACKED_GEMM=0,CT2_USE_MKL=1) instead of measuring the candidates")
    parser.add_argument("--ct2-probe", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.ct2_probe:
        ct2_probe(args.ct2_probe, args.threads, 7)
        return 0
    try:
        import ctranslate2  # noqa: F401  (its CPU knobs are read at the first Translator, after tuning below)
    except ImportError:
        print('error: needs ctranslate2: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    started = time.time()
    torch.set_num_threads(args.threads)
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

        if args.ct2_env:
            env = dict(kv.split("=", 1) for kv in args.ct2_env.split(","))
            setting = {"name": "--ct2-env", "env": env, "backend": "", "candidates": []}
        else:
            name, env, candidates = tune_ct2(trained_ct2, [[[vocabulary[i] for i in s] for s in sources[:b]] for b in BATCHES],
                                             args.threads, 1 if args.quick else 2, tmp)
            setting = {"name": name, "env": env, "backend": next(c["backend"] for c in candidates if c["name"] == name),
                       "candidates": candidates}
        for knob in CT2_KNOBS:  # this process only, before its first Translator
            os.environ.pop(knob, None)
        os.environ.update(env)
        print(f"CT2 setting: {setting['name']} {env}", flush=True)

        engine, ct2 = Engine(trained, args.threads), CT2(trained_ct2, vocabulary, args.threads)
        identity = {"greedy": agreement(engine, ct2, sources, 1, tok, test),
                    "beam": agreement(engine, ct2, sources[: 64 if args.quick else 512], 4, tok, test)}
        engines = {"engine": engine, "ct2": ct2} | ({"generate": Generate(trained, args.threads)} if args.generate else {})
        rows = speed("trained (3+3, d 128)", engines, sources[:32], 128, args.rounds)

        base = base_model()
        base_dir, base_ct2 = tmp / "base", tmp / "base_ct2"
        base_dir.mkdir()
        export_encoder_decoder(base, base_dir, text_source=True)
        (base_dir / "config.json").write_text(json.dumps(runtime_config(base)))
        base_vocab = ["<pad>", "<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(4, BASE.vocab_size)]
        convert(base, base_vocab, base_ct2)
        rng = np.random.default_rng(0)
        base_sources = [list(rng.integers(4, BASE.vocab_size, size=24)) + [EOS] for _ in range(32)]
        engines = {"engine": Engine(base_dir, args.threads), "ct2": CT2(base_ct2, base_vocab, args.threads)}
        if args.generate:
            engines["generate"] = Generate(base_dir, args.threads)
        rows += speed("Transformer-base (6+6, d 512, random)", engines, base_sources, args.tokens, args.rounds)
    write_report(identity, setting, rows, args.out, args, args.threads, time.time() - started)
    print(f"wrote {args.out / 'ctranslate2_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
