"""Build the GPU check's bundle (``make gpu-bundle``): everything ``tests/gpu/check.sh`` needs on a GPU machine that
has Python 3.12, torch (CUDA 13) and onnx but no internet, in pieces under the device tool's 64 MiB per call.

    .gpu/base/      repo32/ (the fp32 repository), repo16/ (fp16), expected.json + scenes.npy (test inputs and the
                    CPU engine's outputs for them), ct2_translator/ (the translator for CTranslate2, if installed)
    .gpu/part-K/    the wheels the machine lacks (onnxruntime-gpu for cp312, ...), split into ≤ 60 MiB parts

Carry ``.gpu/part-0`` … ``.gpu/part-N`` one per call while the machine stays warm, then ``.gpu/base`` with the call
that runs ``bash tests/gpu/check.sh`` (README of BENCHMARKS.md, "GPU check").
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.contract import MODELS  # noqa: E402

PART_BYTES = 60 * 2**20
WHEELS = ["onnxruntime-gpu==1.31.1", "onnxscript==0.7.2", "onnx-ir", "ml_dtypes"]  # ORT, and the exporter for ViT-B/16
N_SENTENCES, N_SCENES = 64, 64


def split(path: Path, out: Path, start: int) -> int:
    """``path`` into ≤ PART_BYTES pieces ``out/part-K/<name>.part-NN``; returns the next K."""
    data, k = path.read_bytes(), start
    for i in range(0, len(data), PART_BYTES):
        folder = out / f"part-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{path.name}.part-{i // PART_BYTES:02d}").write_bytes(data[i : i + PART_BYTES])
        k += 1
    return k


def wheels(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                        "3.12", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                        "--platform", "manylinux2014_x86_64", "-d", tmp, *WHEELS], check=True)
        k = 0
        for wheel in sorted(Path(tmp).glob("*.whl")):
            k = split(wheel, out, k)


def expected(base: Path) -> None:
    from models.data import digits as digit_data
    from models.data import text as text_data
    from models.data.tokenizer import Tokenizer
    from tests.gpu.check import run_engine

    tok = Tokenizer.load(base / "repo32" / "translator" / "1")
    test = [s for s, _ in text_data.build_corpus()["test"]][:N_SENTENCES]
    sources = [tok.encode(s) + [3] for s in test]
    canvases, _, _ = digit_data.make_scenes(digit_data.digit_splits()["test"], N_SCENES, seed=2)
    scenes = canvases[:, None].astype(np.float32) / 255.0
    np.save(base / "scenes.npy", scenes)
    report = {"sources": sources}
    translator, captioner = base / "repo32" / "translator" / "1", base / "repo32" / "captioner" / "1"
    ids = [np.asarray(s, dtype=np.int64) for s in sources]
    report["translator greedy"] = run_engine(translator, True, ids, 1, 128)[0]
    report["translator beam 4"] = run_engine(translator, True, ids, 4, 128)[0]
    report["captioner greedy"] = run_engine(captioner, True, list(scenes), 1, 48)[0]
    (base / "expected.json").write_text(json.dumps(report))


def ct2(base: Path) -> None:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        print("ctranslate2 is not installed here (pip install -e '.[bench]'): the check will run without it")
        return
    from models import checkpoint
    from tests.benchmarks.ctranslate2_bench import convert

    model, tok = checkpoint.load("translator")
    vocabulary = tok.pieces(range(model.config.vocab_size))
    convert(model, vocabulary, base / "ct2_translator")
    (base / "ct2_vocabulary.json").write_text(json.dumps(vocabulary))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository", help="the fp32 repository to check")
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu")
    parser.add_argument("--no-wheels", action="store_true", help="skip the downloads (a CPU run of the check needs none)")
    args = parser.parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    base = args.out / "base"
    base.mkdir(parents=True)
    for name in MODELS:  # the shipped models (a repository may also hold imported ones: not what this check measures)
        shutil.copytree(args.repository / name, base / "repo32" / name)
    subprocess.run([sys.executable, "-m", "export", "--out", str(base / "repo16"), "--precision", "fp16", "--no-check"],
                   check=True, cwd=ROOT)
    expected(base)
    ct2(base)
    if not args.no_wheels:
        wheels(args.out)
    for folder in sorted(args.out.iterdir()):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{folder}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
