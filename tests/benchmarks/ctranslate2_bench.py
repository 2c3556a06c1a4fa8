"""Translation engine vs CTranslate2 on the very same weights.

    python tests/benchmarks/ctranslate2_bench.py            # → tests/benchmarks/results/ctranslate2_bench.{md,png,json}
    python tests/benchmarks/ctranslate2_bench.py --quick    # fewer sentences and repetitions (smoke run)

Needs the benchmark extra: ``pip install -e ".[bench]"`` (ctranslate2 4.8.5).

1. The trained translator's weights are written into a CTranslate2 ``TransformerSpec`` (pre-norm, ReLU, shared
   embeddings, the model's own sinusoidal table) and both engines translate the test split greedily: the outputs
   must be identical (the count is reported).
2. Throughput (generated tokens / s) and latency at batch 1, 8, 32, greedy and beam 4, same thread count for
   both: the trained model (real test sentences) and a Transformer-base-sized one (6+6 layers, d 512, 8 heads,
   FFN 2048, 32k vocabulary, random weights, EOS disabled so both engines decode exactly ``--tokens`` tokens).

"Our engine" is ``service.runtime.EncoderDecoderRuntime.generate``: the ONNX graphs with the KV cache and
IOBinding, exactly what the service runs per step (the service's iteration-level loop adds scheduling on top).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
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
from service.runtime import EncoderDecoderRuntime, RuntimeOptions  # noqa: E402
from service.runtime import bench_providers  # noqa: E402

BASE = TranslatorConfig(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, encoder_layers=6, decoder_layers=6, max_len=256)
BATCHES = (1, 8, 32)
BOS, EOS, PAD = 2, 3, 0


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


class Ours:
    def __init__(self, directory: Path, threads: int) -> None:
        self.rt = EncoderDecoderRuntime(directory, RuntimeOptions(providers=bench_providers(), intra_op_threads=threads))

    def run(self, sources: list[list[int]], beam: int, max_new: int) -> list[list[int]]:
        src = np.full((len(sources), max(map(len, sources))), PAD, dtype=np.int64)
        for i, s in enumerate(sources):
            src[i, : len(s)] = s
        return self.rt.generate(src, src != PAD, DecodingOptions(beam_size=beam, max_new_tokens=max_new))


class CT2:
    def __init__(self, directory: Path, vocabulary: list[str], threads: int) -> None:
        import ctranslate2

        self.translator = ctranslate2.Translator(str(directory), device="cpu", inter_threads=1, intra_threads=threads)
        self.vocabulary, self.index = vocabulary, {p: i for i, p in enumerate(vocabulary)}

    def run(self, sources: list[list[int]], beam: int, max_new: int) -> list[list[int]]:
        batch = [[self.vocabulary[i] for i in s] for s in sources]
        results = self.translator.translate_batch(batch, beam_size=beam, max_decoding_length=max_new, max_batch_size=0,
                                                  length_penalty=0.0, return_scores=False)
        return [[self.index[t] for t in r.hypotheses[0]] for r in results]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


# ------------------------------------------------------------------------------------------ benchmark


def base_model() -> Translator:
    torch.manual_seed(0)
    model = Translator(BASE).eval()
    with torch.no_grad():
        model.decoder.output.bias[EOS] = -1e4  # never stop: every engine decodes exactly max_new tokens
    return model


def speed(name: str, ours: Ours, ct2: CT2, sentences: list[list[int]], max_new: int, repeats: int) -> list[dict]:
    rows = []
    for beam in (1, 4):
        for batch in BATCHES:
            chunk = (sentences * ((batch // len(sentences)) + 1))[:batch]
            row = {"model": name, "beam": beam, "batch": batch}
            for label, engine in (("ours", ours), ("ct2", ct2)):
                out = engine.run(chunk, beam, max_new)
                tokens = sum(len(o) for o in out)
                seconds = timed(lambda: engine.run(chunk, beam, max_new), repeats)
                row[f"{label}_tok_s"], row[f"{label}_ms"], row[f"{label}_tokens"] = tokens / seconds, seconds * 1e3, tokens
            row["throughput_ratio"] = row["ours_tok_s"] / row["ct2_tok_s"]
            row["latency_ratio"] = row["ours_ms"] / row["ct2_ms"]
            rows.append(row)
            print(f"  {name} beam {beam} batch {batch}: ours {row['ours_tok_s']:.0f} tok/s ({row['ours_ms']:.1f} ms), "
                  f"ct2 {row['ct2_tok_s']:.0f} tok/s ({row['ct2_ms']:.1f} ms) → {row['throughput_ratio']:.2f}×", flush=True)
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_report(identity: dict, rows: list[dict], out: Path, args, threads: int, seconds: float) -> None:
    import ctranslate2
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    (out / "ctranslate2_bench.json").write_text(json.dumps({"identity": identity, "rows": rows}, indent=2))
    lines = [
        "# Translation engine vs CTranslate2 (same weights)", "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs; both engines on {threads} threads (ORT intra-op / CT2 intra_threads, one inter thread)",
        f"- versions: onnxruntime {ort.__version__}, ctranslate2 {ctranslate2.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `python tests/benchmarks/ctranslate2_bench.py{' --quick' if args.quick else ''}` ({seconds:.0f} s), {dt.date.today()}",
        "- ours: `EncoderDecoderRuntime.generate` (ONNX Runtime, fused attention, KV cache, IOBinding); CT2: `Translator.translate_batch`, fp32",
        "- time: best of the repetitions, whole batch (encode + decode); tokens/s counts generated tokens", "",
        "## Same outputs", "",
        f"Greedy translations of {identity['n']} test sentences identical on both engines: **{identity['identical']}/{identity['n']}**"
        + (f" (differences: {identity['examples']})" if identity["examples"] else ""), "",
        "## Throughput and latency", "",
        "| model | beam | batch | ours tok/s | CT2 tok/s | throughput ours/CT2 | ours ms | CT2 ms | latency ours/CT2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['beam']} | {r['batch']} | {r['ours_tok_s']:.0f} | {r['ct2_tok_s']:.0f} | "
                     f"{r['throughput_ratio']:.2f}× | {r['ours_ms']:.1f} | {r['ct2_ms']:.1f} | {r['latency_ratio']:.2f}× |")
    (out / "ctranslate2_bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for beam, style in ((1, "-o"), (4, "--s")):
            sel = [r for r in rows if r["model"] == model and r["beam"] == beam]
            ax.plot([r["batch"] for r in sel], [r["ours_tok_s"] for r in sel], style, color="tab:blue", label=f"ours, beam {beam}")
            ax.plot([r["batch"] for r in sel], [r["ct2_tok_s"] for r in sel], style, color="tab:orange", label=f"CTranslate2, beam {beam}")
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
    parser.add_argument("--quick", action="store_true", help="200 sentences for the identity check, 1 repetition")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per sentence by the base-sized model")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        print('error: needs ctranslate2: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    started = time.time()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
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
        ours, ct2 = Ours(trained, args.threads), CT2(trained_ct2, vocabulary, args.threads)

        test = [s for s, _ in text_data.build_corpus()["test"]]
        n = 200 if args.quick else len(test)
        sources = [tok.encode(s)[: model.config.max_len - 1] + [EOS] for s in test[:n]]
        same, examples = 0, []
        for i in range(0, n, 64):
            a, b = ours.run(sources[i : i + 64], 1, 128), ct2.run(sources[i : i + 64], 1, 128)
            for j, (x, y) in enumerate(zip(a, b)):
                if x == y:
                    same += 1
                elif len(examples) < 3:
                    examples.append(f"{test[i + j]!r}: {tok.decode(x)!r} vs {tok.decode(y)!r}")
        identity = {"n": n, "identical": same, "examples": examples}
        print(f"identical greedy outputs: {same}/{n}", flush=True)

        rows = speed("trained (3+3, d 128)", ours, ct2, sources[:32], 128, repeats)

        base = base_model()
        base_dir, base_ct2 = tmp / "base", tmp / "base_ct2"
        base_dir.mkdir()
        export_encoder_decoder(base, base_dir, text_source=True)
        (base_dir / "config.json").write_text(json.dumps(runtime_config(base)))
        base_vocab = ["<pad>", "<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(4, BASE.vocab_size)]
        convert(base, base_vocab, base_ct2)
        rng = np.random.default_rng(0)
        base_sources = [list(rng.integers(4, BASE.vocab_size, size=24)) + [EOS] for _ in range(32)]
        rows += speed("Transformer-base (6+6, d 512, random)", Ours(base_dir, args.threads), CT2(base_ct2, base_vocab, args.threads),
                      base_sources, args.tokens, repeats)
    write_report(identity, rows, args.out, args, args.threads, time.time() - started)
    print(f"wrote {args.out / 'ctranslate2_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
