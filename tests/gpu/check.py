"""The GPU check: everything a lent GPU machine should show, in one run (``tests/gpu/check.sh`` sets it up).

    python tests/gpu/check.py --bundle .gpu --out tests/gpu/results           # on the GPU machine
    python tests/gpu/check.py --bundle .gpu --out /tmp/gpu-cpu --cpu          # the same code on the CPU provider

The bundle (``make gpu-bundle``, on this side: ``tests/gpu/bundle.py``) holds both model repositories (fp32, fp16),
token ids of test sentences and scenes with the CPU engine's outputs for them, and the wheels the machine lacks.
Each part is reported on its own; one that fails does not stop the others:

1. **providers**: every session of both repositories runs on CUDA, not on a silent CPU fallback;
2. **engine on CUDA = engine on CPU**: the decode engine (IOBinding, the cache on the device, in-graph reorder and
   top-k) gives the CPU's tokens for the bundled translations (greedy, beam 4) and captions (greedy), fp32; fp16
   agreement is reported;
3. **ViT-B/16 fp16** images/s at batch 1-256, against the GPU's measured fp16 matrix-multiply peak (torch):
   the fraction of peak (ViT-B/16 is 2 × 17.6 GFLOP per 224² image, here one channel);
4. **translation tokens/s** on CUDA: the engine at batch 1 / 32 / 128, greedy and beam 4, and CTranslate2 on the
   same weights where its wheel is in the bundle and loads on this CUDA.

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` (the GPU rows of BENCHMARKS.md). Exit 1 if part 1 or 2 fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VIT_B16 = dict(image_size=224, patch_size=16, channels=1, d_model=768, n_heads=12, d_ff=3072, layers=12, num_classes=1000)
VIT_B16_FLOP = 2 * 17.6e9  # per image (2 × multiply-adds)


def runtime_options(cpu: bool):
    from service.runtime import RuntimeOptions

    return RuntimeOptions(providers=("CPUExecutionProvider",) if cpu else ("CUDAExecutionProvider", "CPUExecutionProvider"))


def check_providers(bundle: Path, cpu: bool) -> dict:
    from service.providers import provider_problem
    from service.runtime import create_session

    want = "CPUExecutionProvider" if cpu else "CUDAExecutionProvider"
    sessions = {}
    for repo in ("repo32", "repo16"):
        for graph in sorted((bundle / repo).glob("*/1/*.onnx")):
            session = create_session(graph, runtime_options(cpu))
            sessions[f"{repo}/{graph.parent.parent.name}/{graph.name}"] = {
                "providers": session.get_providers(), "problem": provider_problem(session, want)}
    ok = bool(sessions) and all(s["problem"] is None for s in sessions.values())
    return {"ok": ok, "sessions": sessions}


def run_engine(directory: Path, cpu: bool, sources: list, beam: int, max_new: int, max_batch: int = 32):
    from service.engine import DecodeEngine, EngineOptions, Sequence
    from service.runtime import EncoderDecoderRuntime

    rt = EncoderDecoderRuntime(directory, runtime_options(cpu))
    engine = DecodeEngine(rt, EngineOptions(max_batch=max_batch, auto_width=False, max_queue=10**6, max_queue_wait_s=3600))
    seqs = engine.submit_all([Sequence(np.asarray(s), max_new, beam_size=beam) for s in sources])
    while engine.load != (0, 0):
        engine.step()
    return [list(map(int, s.future.result())) for s in seqs], rt


def check_engine(bundle: Path, cpu: bool) -> dict:
    expected = json.loads((bundle / "expected.json").read_text())
    scenes = np.load(bundle / "scenes.npy")
    out, ok = {}, True
    for repo in ("repo32", "repo16"):
        cases = {
            "translator greedy": ("translator", [np.asarray(s, dtype=np.int64) for s in expected["sources"]], 1, 128),
            "translator beam 4": ("translator", [np.asarray(s, dtype=np.int64) for s in expected["sources"]], 4, 128),
            "captioner greedy": ("captioner", list(scenes.astype(np.float32)), 1, 48),
        }
        for name, (model, sources, beam, max_new) in cases.items():
            got, rt = run_engine(bundle / repo / model / "1", cpu, sources, beam, max_new)
            want = expected[name]
            same = sum(g == w for g, w in zip(got, want))
            out[f"{repo} {name}"] = {"identical": f"{same}/{len(want)}", "device": rt.device}
            if repo == "repo32":
                ok &= same == len(want)
    return {"ok": ok, "cases": out}


def matmul_peak_tflops(cpu: bool) -> float | None:
    import torch

    if cpu or not torch.cuda.is_available():
        return None
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.float16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * n**3 / best / 1e12


def check_vit(workdir: Path, cpu: bool, batches: tuple[int, ...]) -> dict:
    import torch

    from export.onnx import convert_precision, export_classifier
    from models.vit import ViT, ViTConfig
    from service.runtime import create_session

    torch.manual_seed(0)
    model = ViT(ViTConfig(**VIT_B16)).eval()
    workdir.mkdir(parents=True, exist_ok=True)
    export_classifier(model, workdir)
    convert_precision(workdir / "model.onnx", "fp16")
    session = create_session(workdir / "model.onnx", runtime_options(cpu))
    peak = matmul_peak_tflops(cpu)
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).random((batch, 1, 224, 224), dtype=np.float32)
        for _ in range(3):
            session.run(None, {"images": x})
        best = float("inf")
        for _ in range(10):
            started = time.perf_counter()
            session.run(None, {"images": x})
            best = min(best, time.perf_counter() - started)
        images_s = batch / best
        tflops = images_s * VIT_B16_FLOP / 1e12
        rows.append({"batch": batch, "images_s": images_s, "tflops": tflops,
                     "fraction_of_peak": None if peak is None else tflops / peak})
    return {"matmul_fp16_peak_tflops": peak, "providers": session.get_providers(), "rows": rows}


def check_translation_speed(bundle: Path, cpu: bool, batches: tuple[int, ...]) -> dict:
    expected = json.loads((bundle / "expected.json").read_text())
    sources = [np.asarray(s, dtype=np.int64) for s in expected["sources"]]
    rows = []
    for beam in (1, 4):
        for batch in batches:
            batch_sources = (sources * (batch // len(sources) + 1))[:batch]
            best, tokens = float("inf"), 0
            for _ in range(3):
                started = time.perf_counter()
                got, _ = run_engine(bundle / "repo32" / "translator" / "1", cpu, batch_sources, beam, 128, batch * beam)
                best, tokens = min(best, time.perf_counter() - started), sum(map(len, got))
            rows.append({"engine": "ours", "beam": beam, "batch": batch, "tokens_s": tokens / best})
    rows += ct2_speed(bundle, cpu, sources, batches)
    return {"rows": rows}


def ct2_speed(bundle: Path, cpu: bool, sources: list, batches: tuple[int, ...]) -> list[dict]:
    model = bundle / "ct2_translator"
    if not model.exists():
        return [{"engine": "ctranslate2", "skipped": "no converted model in the bundle"}]
    try:
        import ctranslate2

        translator = ctranslate2.Translator(str(model), device="cpu" if cpu else "cuda")
    except Exception as error:  # noqa: BLE001 - its wheel's CUDA may not match this machine's: say so, go on
        return [{"engine": "ctranslate2", "skipped": f"{type(error).__name__}: {error}"}]
    vocabulary = json.loads((bundle / "ct2_vocabulary.json").read_text())
    rows = []
    for beam in (1, 4):
        for batch in batches:
            tokens_in = [[vocabulary[i] for i in s] for s in (sources * (batch // len(sources) + 1))[:batch]]
            best, tokens = float("inf"), 0
            for _ in range(3):
                started = time.perf_counter()
                out = translator.translate_batch(tokens_in, beam_size=beam, max_decoding_length=128, length_penalty=0.0)
                best = min(best, time.perf_counter() - started)
                tokens = sum(len(r.hypotheses[0]) for r in out)
            rows.append({"engine": "ctranslate2", "beam": beam, "batch": batch, "tokens_s": tokens / best})
    return rows


def guarded(name: str, fn, report: dict) -> None:
    started = time.time()
    try:
        report[name] = fn()
    except Exception:  # noqa: BLE001 - one part failing must not hide the others' results
        report[name] = {"ok": False, "error": traceback.format_exc(limit=6)}
    report[name]["seconds"] = round(time.time() - started, 1)
    print(f"{name}: {json.dumps(report[name])[:600]}", flush=True)


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['machine']})", "", f"- {report['versions']}", f"- command: `{report['command']}`", ""]
    for part in ("providers", "engine"):
        lines.append(f"- {part}: {'ok' if report[part].get('ok') else 'FAILED'}")
    cases = report["engine"].get("cases", {})
    if cases:
        lines += ["", "| engine case | identical to the CPU engine |", "|---|---|"]
        lines += [f"| {k} | {v['identical']} |" for k, v in cases.items()]
    vit = report.get("vit", {})
    if vit.get("rows"):
        lines += ["", f"ViT-B/16 fp16 (fp16 matmul peak measured: {vit['matmul_fp16_peak_tflops']} TFLOP/s)", "",
                  "| batch | images/s | TFLOP/s | fraction of peak |", "|---|---|---|---|"]
        for r in vit["rows"]:
            frac = "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.2f}"
            lines.append(f"| {r['batch']} | {r['images_s']:.0f} | {r['tflops']:.1f} | {frac} |")
    speed = report.get("translation", {}).get("rows", [])
    if speed:
        lines += ["", "| engine | beam | batch | tokens/s |", "|---|---|---|---|"]
        for r in speed:
            lines.append(f"| {r['engine']} | {r.get('beam', '-')} | {r.get('batch', '-')} | "
                         f"{r['tokens_s']:.0f} |" if "tokens_s" in r else f"| {r['engine']} | - | - | {r['skipped']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "gpu" / "results")
    parser.add_argument("--cpu", action="store_true", help="the CPU provider (checks this script where no GPU is)")
    parser.add_argument("--quick", action="store_true", help="small batches only")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    vit_batches = (1, 8) if args.quick else (1, 8, 32, 128, 256)
    speed_batches = (1, 8) if args.quick else (1, 32, 128)
    report = {"machine": platform.node(), "command": " ".join(["python", *sys.argv]),
              "versions": f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())}), "
                          f"Python {platform.python_version()}"}
    guarded("providers", lambda: check_providers(args.bundle, args.cpu), report)
    guarded("engine", lambda: check_engine(args.bundle, args.cpu), report)
    guarded("vit", lambda: check_vit(Path(os.environ.get("TMPDIR", "/tmp")) / "vit_b16", args.cpu, vit_batches), report)
    guarded("translation", lambda: check_translation_speed(args.bundle, args.cpu, speed_batches), report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {args.out}/gpu_check.{{json,md}}")
    return 0 if report["providers"].get("ok") and report["engine"].get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
