"""``python -m export [--device cpu|cuda] [--precision fp32|fp16|int8] [--out DIR]``, or
``python -m export --hf PATH --name NAME [--out DIR]`` (a Hugging Face checkpoint: ``export.hf``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.onnx import PRECISIONS, ExportError, ExportOptions
from export.repository import MODELS, export_repository


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description="Export the three trained models to an ONNX model repository, with fused attention, and check each graph against PyTorch.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the parity and quality checks run")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default), fp16 (for GPUs), int8 (dynamic quantization, for CPUs)")
    parser.add_argument("--out", type=Path, default=Path("model_repository"), help="repository directory (default model_repository/)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="export only these")
    parser.add_argument("--no-check", action="store_true", help="skip the test-split parity/quality checks (graph and fusion checks still run)")
    parser.add_argument("--hf", type=Path, metavar="PATH", help="import a Hugging Face checkpoint (a save_pretrained directory) instead; needs --name and the [hf] extra")
    parser.add_argument("--name", help="the imported model's name in the repository (with --hf)")
    args = parser.parse_args(argv)
    if args.hf is not None:
        return import_hf(parser, args)
    if args.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            parser.error("--device cuda needs onnxruntime-gpu and a GPU; this onnxruntime offers " + ", ".join(ort.get_available_providers()))
    try:
        report = export_repository(args.out, ExportOptions(args.precision, args.device, not args.no_check), tuple(args.models))
    except ExportError as e:
        print(f"export failed its own check: {e}", file=sys.stderr)
        return 1
    for name, cfg in report.items():
        quality = {k: v for k, v in cfg.get("quality", {}).items() if k != "measured_on"}
        print(f"{name}: {cfg['fused_attention']} {quality}")
    print(f"wrote {args.out}/")
    return 0


def import_hf(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.name:
        parser.error("--hf needs --name (the model's directory in the repository)")
    if args.precision != "fp32" or args.device != "cpu":
        parser.error("--hf imports fp32 on the CPU for now (its parity check against transformers is fp32)")
    try:
        import transformers  # noqa: F401
    except ImportError:
        parser.error("--hf needs transformers: pip install -e '.[hf]'")
    from export.hf import import_checkpoint

    try:
        config = import_checkpoint(args.hf, args.name, args.out)
    except ExportError as e:
        print(f"import failed: {e}", file=sys.stderr)
        return 1
    print(f"{args.name}: {config['architecture']} {config['fused_attention']} {config['quality']}")
    print(f"wrote {args.out}/{args.name}/1/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
