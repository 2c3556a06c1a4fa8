#!/usr/bin/env bash
# The GPU check, from a bare GPU machine: Python 3.12 with torch (CUDA 13) and onnx, no internet. The bundle made by
# `make gpu-bundle` travels with the working tree (.gpu/part-K: wheels in <= 60 MiB parts; .gpu/base: the model
# repositories, test inputs and the CPU engine's outputs). Under 8 minutes: no training, no export of the shipped
# models (the bundle has them), one ViT-B/16 export.
#
#   bash tests/gpu/check.sh            # writes tests/gpu/results/gpu_check.{json,md} (or $OUT when set)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=.gpu
OUT_DIR=${OUT:-tests/gpu/results}
WORK=${TMPDIR:-/tmp}/gpu-check
mkdir -p "$WORK/wheels" "$OUT_DIR"
# 1. join the wheel parts (part-K folders, in order) and install them beside the system's torch and onnx; the
#    venv's onnxruntime-gpu shadows the system's CPU onnxruntime (never both in one environment otherwise)
for part in $(find "$BUNDLE" -name '*.part-*' | awk -F/ '{print $NF" "$0}' | sort | cut -d' ' -f2); do
  name=$(basename "$part"); cat "$part" >> "$WORK/wheels/${name%.part-*}"
done
python3 -m venv --system-site-packages "$WORK/venv"
"$WORK/venv/bin/pip" install --no-index --no-deps --quiet "$WORK"/wheels/*.whl
# 2. CUDA and cuDNN: torch's nvidia-* packages; import torch first so the provider finds them loaded
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
time "$WORK/venv/bin/python" -c "import torch, runpy, sys; sys.argv = ['check.py', '--bundle', '$BUNDLE/base', '--out', '$OUT_DIR']; runpy.run_path('tests/gpu/check.py', run_name='__main__')"
