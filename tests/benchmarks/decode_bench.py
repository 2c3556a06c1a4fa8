"""Decoding benchmark: KV cache vs recomputing the prefix, ONNX Runtime vs PyTorch eager, fused vs unfused.

    python tests/benchmarks/decode_bench.py            # writes tests/benchmarks/results/decode_bench.{md,png}
    python tests/benchmarks/decode_bench.py --quick    # fewer repetitions, for a smoke run

Four tables:
1. per-token latency of a forced 16…128-token decode at batch 1, with and without the KV cache, on PyTorch
   eager and on ONNX Runtime, for the trained translator and a Transformer-base-sized one (6+6 layers,
   d 512, 8 heads, FFN 2048, 32k vocabulary, random weights: speed does not depend on the weights);
2. end-to-end ORT engine vs PyTorch eager on the three trained models (greedy, real inputs);
3. fused (`Attention` node) vs unfused (MatMul/Softmax) graphs on ONNX Runtime;
4. the machine, versions and command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from export.onnx import export_classifier, export_graph, export_encoder_decoder  # noqa: E402
from export.repository import runtime_config  # noqa: E402
from models import checkpoint  # noqa: E402
from models.data import digits as digit_data  # noqa: E402
from models.data import text as text_data  # noqa: E402
from models.attention import causal_mask  # noqa: E402
from models.layers import set_fused  # noqa: E402
from models.translator import Translator, TranslatorConfig  # noqa: E402
from models.reference import TorchInference  # noqa: E402
from service.decoding import DecodingOptions  # noqa: E402
from service.runtime import EncoderDecoderRuntime, RuntimeOptions, create_session, kv_names  # noqa: E402
from service.runtime import bench_providers  # noqa: E402

BASE = TranslatorConfig(vocab_size=32000, d_model=512, n_heads=8, d_ff=2048, encoder_layers=6, decoder_layers=6, max_len=256)
LENGTHS = (16, 32, 64, 128)


class FullPrefixDecoderGraph(nn.Module):
    """No cache: the whole prefix ``(B, T)`` goes through the decoder at every step; returns the last logits."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder, self.layers = decoder, len(decoder.layers)

    def forward(self, input_ids, cross_mask, cross_k, cross_v):
        n, t = self.layers, input_ids.size(1)
        cross = cross_mask[:, None, None, :].expand(-1, -1, t, -1)  # (B, 1, T, S): ORT wants the query axis spelled out
        logits, _, _ = self.decoder(input_ids, [(cross_k[i], cross_v[i]) for i in range(n)], cross, self_mask=causal_mask(t, t, input_ids.device))
        return logits[:, -1]


def export_full_prefix(model: Translator, path: Path) -> None:
    c = model.config
    n, h, dh = c.decoder_layers, c.n_heads, c.d_model // c.n_heads
    b, t, s = Dim("batch", min=1, max=64), Dim("tgt", min=1, max=c.max_len), Dim("src", min=1, max=512)
    args = (torch.randint(4, 20, (2, 4)), torch.ones(2, 5, dtype=torch.bool),
            [torch.randn(2, h, 5, dh) for _ in range(n)], [torch.randn(2, h, 5, dh) for _ in range(n)])
    ds = ({0: b, 1: t}, {0: b, 1: s}, [{0: b, 2: s}] * n, [{0: b, 2: s}] * n)
    export_graph(FullPrefixDecoderGraph(model.decoder), args, path, ds, ["input_ids", "cross_mask"] + kv_names("cross", n), ["logits"])


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def forced_tokens(length: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(4, vocab, size=length)


def bench_cache(model: Translator, name: str, workdir: Path, repeats: int, threads: int) -> list[dict]:
    """Per-token latency of decoding ``L`` forced tokens for a 12-token source, batch 1."""
    export_encoder_decoder(model, workdir, text_source=True)
    (workdir / "config.json").write_text(json.dumps(runtime_config(model)))
    export_full_prefix(model, workdir / "decoder_full.onnx")
    opts = RuntimeOptions(providers=bench_providers(), intra_op_threads=threads)
    rt = EncoderDecoderRuntime(workdir, opts)
    full = create_session(workdir / "decoder_full.onnx", opts)
    src = np.random.default_rng(1).integers(4, model.config.vocab_size, size=(1, 12))
    cross, mask = rt.encode(src, np.ones_like(src, dtype=bool))
    with torch.no_grad():
        memory, tmask = model.encode(torch.from_numpy(src))
        tcross = model.decoder.cross_kv(memory)
    n = model.config.decoder_layers
    rows = []
    for length in LENGTHS:
        toks = np.concatenate([[2], forced_tokens(length - 1, model.config.vocab_size)])

        def ort_cached():
            state = rt.start(cross, mask)
            for t in toks:
                state.logits(np.array([t]))

        def ort_full():
            feeds = {"cross_mask": mask, **{name: a for name, a in zip(kv_names("cross", n), cross)}}
            for i in range(1, length + 1):
                full.run(None, {"input_ids": toks[None, :i], **feeds})

        def torch_cached():
            state = TorchInference(model.decoder, tcross, tmask)
            for t in toks:
                state.logits(np.array([t]))

        @torch.no_grad()
        def torch_full():
            ids = torch.from_numpy(toks)[None]
            for i in range(1, length + 1):
                model.decoder(ids[:, :i], tcross, tmask)

        r = max(1, repeats // (2 if length >= 64 else 1))
        row = {"model": name, "tokens": length}
        for key, fn in (("ort_cached", ort_cached), ("ort_no_cache", ort_full), ("torch_cached", torch_cached), ("torch_no_cache", torch_full)):
            row[key] = timed(fn, r) / length * 1e3  # ms per token
        rows.append(row)
        print(f"  {name} L={length}: " + ", ".join(f"{k} {v:.2f} ms/tok" for k, v in row.items() if k.endswith("cache") or k.endswith("cached")), flush=True)
    return rows


def bench_models(workdir: Path, repeats: int, threads: int) -> list[dict]:
    """ORT engine vs PyTorch eager on the trained models, greedy on real test inputs."""
    opts = RuntimeOptions(providers=bench_providers(), intra_op_threads=threads)
    rows = []
    # classifier
    model, _ = checkpoint.load("classifier")
    export_classifier(model, workdir)
    sess = create_session(workdir / "model.onnx", opts)
    images = digit_data.digit_splits()["test"].images[:, None].astype(np.float32)
    for batch in (1, 64):
        x = images[:batch]
        t_ort = timed(lambda: sess.run(None, {"images": x}), repeats * 5)
        with torch.no_grad():
            t_pt = timed(lambda: model(torch.from_numpy(x)), repeats * 5)
        rows.append({"model": "classifier", "batch": batch, "unit": "images/s", "ort": batch / t_ort, "torch": batch / t_pt})
    # translator and captioner: greedy decoding of real inputs
    for name in ("translator", "captioner"):
        model, tok = checkpoint.load(name)
        d = workdir / name
        d.mkdir()
        export_encoder_decoder(model, d, text_source=name == "translator")
        (d / "config.json").write_text(json.dumps(runtime_config(model)))
        rt = EncoderDecoderRuntime(d, opts)
        if name == "translator":
            texts = [s for s, _ in text_data.build_corpus()["test"][:32]]
            ids = [tok.encode(t) + [3] for t in texts]
            src = np.zeros((len(ids), max(map(len, ids))), dtype=np.int64)
            for i, r in enumerate(ids):
                src[i, : len(r)] = r
            inputs, masks = src, src != 0
        else:
            canvases, _, _ = digit_data.make_scenes(digit_data.digit_splits()["test"], 32, seed=2)
            inputs, masks = canvases[:, None].astype(np.float32) / 255.0, None
        for batch in (1, 32):
            x, m = inputs[:batch], None if masks is None else masks[:batch]
            out = rt.generate(x, m, DecodingOptions(max_new_tokens=64))
            n_tokens = sum(len(o) + 1 for o in out)
            t_ort = timed(lambda: rt.generate(x, m, DecodingOptions(max_new_tokens=64)), repeats)

            @torch.no_grad()
            def torch_run():
                model.generate(torch.from_numpy(x), max_new_tokens=64)

            t_pt = timed(torch_run, repeats)
            rows.append({"model": name, "batch": batch, "unit": "tokens/s", "ort": n_tokens / t_ort, "torch": n_tokens / t_pt})
    for r in rows:
        print(f"  {r['model']} batch {r['batch']}: ORT {r['ort']:.0f} vs PyTorch {r['torch']:.0f} {r['unit']}", flush=True)
    return rows


def bench_fusion(workdir: Path, repeats: int, threads: int) -> list[dict]:
    """The same weights exported with the fused Attention node and with explicit MatMul/Softmax."""
    opts = RuntimeOptions(providers=bench_providers(), intra_op_threads=threads)
    rows = []
    torch.manual_seed(0)
    base = Translator(BASE).eval()
    for label, model_name in (("classifier (trained)", "classifier"), ("translator (trained)", "translator"), ("Transformer-base", None)):
        times = {}
        for fused in (True, False):
            d = workdir / f"{label.split()[0]}_{fused}"
            d.mkdir()
            if model_name == "classifier":
                model, _ = checkpoint.load("classifier")
                set_fused(model, fused)
                export_classifier(model, d)
                sess = create_session(d / "model.onnx", opts)
                x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
                times[fused] = timed(lambda: sess.run(None, {"images": x}), repeats * 5) * 1e3
                unit = "ms per batch of 64 images"
            else:
                model = checkpoint.load("translator")[0] if model_name else base
                set_fused(model, fused)
                export_encoder_decoder(model, d, text_source=True)
                (d / "config.json").write_text(json.dumps(runtime_config(model)))
                rt = EncoderDecoderRuntime(d, opts)
                src = np.random.default_rng(1).integers(4, model.config.vocab_size, size=(8, 16))
                cross, mask = rt.encode(src, np.ones_like(src, dtype=bool))
                toks = forced_tokens(64, model.config.vocab_size)

                def run():
                    state = rt.start(cross, mask)
                    for t in toks:
                        state.logits(np.full(8, t))

                times[fused] = timed(run, repeats) / 64 * 1e3
                unit = "ms per decoding step, batch 8, 64 steps"
        set_fused(base, True)
        rows.append({"model": label, "unit": unit, "fused": times[True], "unfused": times[False]})
        print(f"  {label}: fused {times[True]:.3f} vs unfused {times[False]:.3f} {unit}", flush=True)
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_report(cache_rows, model_rows, fusion_rows, out: Path, args, threads: int, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, name in zip(axes, ("translator (trained)", "Transformer-base")):
        rows = [r for r in cache_rows if r["model"] == name]
        for key, style in (("ort_cached", "o-"), ("ort_no_cache", "o--"), ("torch_cached", "s-"), ("torch_no_cache", "s--")):
            ax.plot([r["tokens"] for r in rows], [r[key] for r in rows], style, label=key.replace("_", " "))
        ax.set_title(f"{name}: per-token latency, batch 1")
        ax.set_xlabel("output length (tokens)")
        ax.set_ylabel("ms per token")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "decode_bench.png")
    plt.close(fig)

    lines = [
        "# Decoding benchmark",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {cpu_name()}, {os.cpu_count()} CPU cores, no GPU; {platform.platform()}",
        f"- versions: Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}; threads: {threads} (ORT intra-op and torch)",
        f"- command: `python tests/benchmarks/decode_bench.py{' --quick' if args.quick else ''}` ({seconds:.0f} s); medians of repeated runs",
        "",
        "## 1. KV cache vs recomputing the prefix (batch 1, 12-token source, forced tokens, ms per token)",
        "",
        "| model | tokens | ORT cached | ORT no cache | cache speed-up (ORT) | PyTorch cached | PyTorch no cache | cache speed-up (PyTorch) | ORT vs PyTorch (cached) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in cache_rows:
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['ort_cached']:.3f} | {r['ort_no_cache']:.3f} | {r['ort_no_cache'] / r['ort_cached']:.1f}× | "
            f"{r['torch_cached']:.3f} | {r['torch_no_cache']:.3f} | {r['torch_no_cache'] / r['torch_cached']:.1f}× | {r['torch_cached'] / r['ort_cached']:.2f}× |"
        )
    lines += ["", "## 2. ORT engine vs PyTorch eager, trained models (greedy, real test inputs)", "",
              "| model | batch | unit | ORT | PyTorch eager | ORT / PyTorch |", "|---|---:|---|---:|---:|---:|"]
    for r in model_rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['unit']} | {r['ort']:.0f} | {r['torch']:.0f} | {r['ort'] / r['torch']:.2f}× |")
    lines += ["", "## 3. Fused `Attention` node vs unfused MatMul/Softmax graph (ONNX Runtime)", "",
              "| model | measure | fused | unfused | unfused / fused |", "|---|---|---:|---:|---:|"]
    for r in fusion_rows:
        lines.append(f"| {r['model']} | {r['unit']} | {r['fused']:.3f} | {r['unfused']:.3f} | {r['unfused'] / r['fused']:.2f}× |")
    lines += ["", "![per-token latency](decode_bench.png)", ""]
    (out / "decode_bench.md").write_text("\n".join(lines))
    (out / "decode_bench.json").write_text(json.dumps({"cache": cache_rows, "models": model_rows, "fusion": fusion_rows}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition per measurement (smoke run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads for ORT and torch")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cache", "models", "fusion"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 5
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache_rows = []
        if "cache" not in args.skip:
            print("1. KV cache vs no cache", flush=True)
            (tmp / "small").mkdir()
            (tmp / "base").mkdir()
            cache_rows += bench_cache(checkpoint.load("translator")[0], "translator (trained)", tmp / "small", repeats, args.threads)
            torch.manual_seed(0)
            cache_rows += bench_cache(Translator(BASE).eval(), "Transformer-base", tmp / "base", max(1, repeats // 2), args.threads)
        model_rows = []
        if "models" not in args.skip:
            print("2. ORT vs PyTorch eager", flush=True)
            (tmp / "models").mkdir()
            model_rows = bench_models(tmp / "models", repeats, args.threads)
        fusion_rows = []
        if "fusion" not in args.skip:
            print("3. fused vs unfused", flush=True)
            (tmp / "fusion").mkdir()
            fusion_rows = bench_fusion(tmp / "fusion", repeats, args.threads)
    write_report(cache_rows, model_rows, fusion_rows, args.out, args, args.threads, time.time() - started)
    print(f"wrote {args.out / 'decode_bench.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
