"""Our engine (ONNX Runtime, fused attention) vs PyTorch eager on the same weights, side by side.

    python tests/benchmarks/engine_vs_eager.py           # → tests/benchmarks/results/engine_vs_eager.{md,png,json}
    python tests/benchmarks/engine_vs_eager.py --quick   # one repetition

1. A ViT-B/16-sized classifier (224×224 input, 16×16 patches → 196 tokens + CLS, d 768, 12 heads, FFN 3072,
   12 layers, 1,000 classes; one input channel like the shipped classifier; random weights: speed does not depend on
   them): images/s at batch 1, 8 and 32. Goal ≥ 1.3×.
2. The trained translator, greedy decoding of real test sentences: generated tokens/s at batch 1, 8 and 32, eager
   ``Translator.generate`` (KV cache, PyTorch SDPA) vs ``EncoderDecoderRuntime.generate``. Goal ≥ 2×.

Both sides get the same threads (torch.set_num_threads / ORT intra-op). Times are the best of the repetitions.
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

from export.onnx import export_classifier, export_encoder_decoder  # noqa: E402
from export.repository import runtime_config  # noqa: E402
from models import checkpoint  # noqa: E402
from models.data import text as text_data  # noqa: E402
from models.vit import ViT, ViTConfig  # noqa: E402
from service.decoding import DecodingOptions  # noqa: E402
from service.runtime import EncoderDecoderRuntime, RuntimeOptions, create_session  # noqa: E402
from service.runtime import bench_providers  # noqa: E402

VIT_B16 = ViTConfig(image_size=224, patch_size=16, channels=1, d_model=768, n_heads=12, d_ff=3072, layers=12,
                    num_classes=1000, dropout=0.0)
BATCHES = (1, 8, 32)


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_vit(workdir: Path, threads: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = ViT(VIT_B16).eval()
    export_classifier(model, workdir)
    session = create_session(workdir / "model.onnx", RuntimeOptions(providers=bench_providers(), intra_op_threads=threads))
    rows = []
    for batch in BATCHES:
        x = np.random.default_rng(batch).random((batch, 1, 224, 224), dtype=np.float32)
        ours = session.run(None, {"images": x})[0]
        with torch.no_grad():
            eager = model(torch.from_numpy(x)).numpy()
        assert np.abs(ours - eager).max() < 1e-3, np.abs(ours - eager).max()  # same function
        t_ours = timed(lambda: session.run(None, {"images": x}), repeats)
        with torch.no_grad():
            t_eager = timed(lambda: model(torch.from_numpy(x)), repeats)
        rows.append({"model": "ViT-B/16-sized classifier", "batch": batch, "unit": "images/s", "ours": batch / t_ours,
                     "eager": batch / t_eager})
        print(f"  ViT-B/16 batch {batch}: ours {batch / t_ours:.1f} vs eager {batch / t_eager:.1f} images/s", flush=True)
    return rows


def bench_translator(workdir: Path, threads: int, repeats: int) -> list[dict]:
    model, tok = checkpoint.load("translator")
    model.eval()
    export_encoder_decoder(model, workdir, text_source=True)
    (workdir / "config.json").write_text(json.dumps(runtime_config(model)))
    rt = EncoderDecoderRuntime(workdir, RuntimeOptions(providers=bench_providers(), intra_op_threads=threads))
    texts = [s for s, _ in text_data.build_corpus()["test"][:32]]
    ids = [tok.encode(t) + [tok.eos_id] for t in texts]
    src = np.zeros((32, max(map(len, ids))), dtype=np.int64)
    for i, r in enumerate(ids):
        src[i, : len(r)] = r
    rows = []
    for batch in BATCHES:
        x = src[:batch, : max(len(r) for r in ids[:batch])]  # padded to this batch's longest source only
        ours = rt.generate(x, x != 0, DecodingOptions(max_new_tokens=128))
        with torch.no_grad():
            eager = model.generate(torch.from_numpy(x), max_new_tokens=128)
        assert ours == eager, "the engines disagree"
        tokens = sum(len(o) for o in ours)
        t_ours = timed(lambda: rt.generate(x, x != 0, DecodingOptions(max_new_tokens=128)), repeats)
        with torch.no_grad():
            t_eager = timed(lambda: model.generate(torch.from_numpy(x), max_new_tokens=128), repeats)
        rows.append({"model": "translator (trained)", "batch": batch, "unit": "tokens/s", "ours": tokens / t_ours,
                     "eager": tokens / t_eager})
        print(f"  translator batch {batch}: ours {tokens / t_ours:.0f} vs eager {tokens / t_eager:.0f} tokens/s", flush=True)
    return rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_report(rows: list[dict], out: Path, args, seconds: float) -> None:
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["ratio"] = r["ours"] / r["eager"]
    (out / "engine_vs_eager.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "# Engine (ONNX Runtime) vs PyTorch eager", "",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs; {args.threads} threads on both sides",
        f"- versions: onnxruntime {ort.__version__}, torch {torch.__version__}, Python {platform.python_version()}",
        f"- command: `python tests/benchmarks/engine_vs_eager.py{' --quick' if args.quick else ''}` ({seconds:.0f} s), {dt.date.today()}",
        "- outputs checked equal first (ViT logits within 1e-3, translator tokens identical)", "",
        "| model | batch | unit | ours | PyTorch eager | ours / eager |", "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['unit']} | {r['ours']:.1f} | {r['eager']:.1f} | {r['ratio']:.2f}× |")
    (out / "engine_vs_eager.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, model in zip(axes, ("ViT-B/16-sized classifier", "translator (trained)")):
        sel = [r for r in rows if r["model"] == model]
        xs = np.arange(len(sel))
        ax.bar(xs - 0.2, [r["ours"] for r in sel], 0.4, label="ours (ONNX Runtime)")
        ax.bar(xs + 0.2, [r["eager"] for r in sel], 0.4, label="PyTorch eager")
        ax.set_xticks(xs, [f"batch {r['batch']}\n{r['ratio']:.2f}×" for r in sel])
        ax.set_ylabel(sel[0]["unit"] if sel else "")
        ax.set_title(model)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "engine_vs_eager.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "benchmarks" / "results")
    args = parser.parse_args(argv)
    started = time.time()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vit").mkdir()
        (Path(tmp) / "translator").mkdir()
        rows = bench_vit(Path(tmp) / "vit", args.threads, repeats)
        rows += bench_translator(Path(tmp) / "translator", args.threads, repeats)
    write_report(rows, args.out, args, time.time() - started)
    print(f"wrote {args.out / 'engine_vs_eager.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
