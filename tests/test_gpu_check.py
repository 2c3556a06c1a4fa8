"""The GPU check's CPU-side parts (tests/gpu/): the bundle is built, the check runs end to end on the CPU provider
and writes its report, and the ldd reading of the CUDA provider's libraries."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))

from ldd_check import parse_ldd, verdict  # noqa: E402

LDD = """\tlinux-vdso.so.1 (0x00007ffd5c1e2000)
\tlibcublasLt.so.13 => /venv/lib/python3.11/site-packages/nvidia/cu13/lib/libcublasLt.so.13 (0x00007f0c1c000000)
\tlibcurand.so.10 => not found
\tlibcuda.so.1 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c0a000000)
"""


def test_ldd_output_is_read_and_only_the_driver_may_be_missing():
    found, missing = parse_ldd(LDD)
    assert found["libcublasLt.so.13"].endswith("nvidia/cu13/lib/libcublasLt.so.13") and "libc.so.6" in found
    assert missing == ["libcurand.so.10", "libcuda.so.1"]
    assert not verdict(missing) and verdict(["libcuda.so.1"]) and verdict([])


def test_the_committed_ldd_report_resolves_everything_but_the_driver():
    text = (ROOT / "tests" / "gpu" / "results" / "ldd_check.txt").read_text()
    report = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert report["onnxruntime"] == "1.31.1"
    assert report["with the pip CUDA/cuDNN folders"]["not_found"] == ["libcuda.so.1"]
    assert report["default loader path"]["only_the_driver_missing"] is False  # why preload_dlls is needed
    assert text.rstrip().endswith("PASS: every library but the driver's resolves")


def test_the_check_runs_end_to_end_on_the_cpu_provider(repo, tmp_path):
    bundle, out = tmp_path / "bundle", tmp_path / "out"
    subprocess.run([sys.executable, "tests/gpu/bundle.py", "--repository", str(repo), "--out", str(bundle),
                    "--no-wheels"], cwd=ROOT, check=True, capture_output=True, text=True)
    assert (bundle / "base" / "repo16" / "translator" / "1" / "decoder.onnx").exists()
    run = subprocess.run([sys.executable, "tests/gpu/check.py", "--bundle", str(bundle / "base"), "--out", str(out),
                          "--cpu", "--quick"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["providers"]["ok"] and len(report["providers"]["sessions"]) == 10  # 5 graphs × 2 repositories
    assert report["engine"]["ok"] and report["engine"]["cases"]["repo32 translator beam 4"]["identical"] == "64/64"
    assert [r["batch"] for r in report["vit"]["rows"]] == [1, 8] and report["vit"]["rows"][0]["images_s"] > 0
    assert {r["engine"] for r in report["translation"]["rows"]} >= {"ours"}
    assert "| engine case |" in (out / "gpu_check.md").read_text()
