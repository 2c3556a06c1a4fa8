"""Does the CUDA provider of the installed onnxruntime-gpu find every library it needs? Run it in the image's
environment (no Docker daemon is needed: the image's Python packages are the environment):

    python -m venv /tmp/gpuenv && /tmp/gpuenv/bin/pip install "onnxruntime-gpu[cuda,cudnn]==1.31.1"
    /tmp/gpuenv/bin/python tests/gpu/ldd_check.py

``libonnxruntime_providers_cuda.so`` links the CUDA 13 runtime, cuBLAS(Lt), cuRAND, cuFFT and cuDNN 9 libraries,
which the ``[cuda,cudnn]`` extras install under ``site-packages/nvidia/*/lib``: not on the loader's path, so without
``onnxruntime.preload_dlls()`` (``service.providers.preload_cuda``) the provider fails to load and ORT serves on the
CPU. This script runs ``ldd`` on the provider twice, as the loader sees it by default and with the pip packages'
library folders (what ``preload_dlls`` loads from), then loads it the way the service does (``preload_dlls`` and
``dlopen``). It passes (exit 0) when, with the folders, everything resolves except the driver's ``libcuda.so.1``,
which a GPU node's driver provides (the NVIDIA container toolkit mounts it into the pod).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path

DRIVER_LIBRARIES = {"libcuda.so.1"}  # the node's driver provides these


def parse_ldd(text: str) -> tuple[dict[str, str], list[str]]:
    """``ldd`` output → ({library: the path it resolves to}, [libraries not found])."""
    found, missing = {}, []
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(.*?)\s*(\(0x[0-9a-f]+\))?$", line)
        if not m:
            continue
        name, target = m.group(1), m.group(2)
        if target == "not found":
            missing.append(name)
        else:
            found[name] = target
    return found, missing


def verdict(missing: list[str]) -> bool:
    return set(missing) <= DRIVER_LIBRARIES


def pip_library_dirs(site: Path) -> list[str]:
    return sorted(str(p) for p in (site / "nvidia").glob("**/lib") if p.is_dir())


def main() -> int:
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    provider = capi / "libonnxruntime_providers_cuda.so"
    if not provider.exists():
        print(f"no {provider.name} in {capi}: this is not an onnxruntime-gpu install", file=sys.stderr)
        return 2
    site = Path(ort.__file__).parents[1]
    dirs = pip_library_dirs(site)
    report = {"onnxruntime": ort.__version__, "provider": str(provider), "pip_library_dirs": dirs}
    for name, extra in (("default loader path", []), ("with the pip CUDA/cuDNN folders", dirs)):
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(extra + [str(capi)]))
        out = subprocess.run(["ldd", str(provider)], capture_output=True, text=True, env=env).stdout
        found, missing = parse_ldd(out)
        report[name] = {"resolved": {k: v for k, v in found.items() if "nvidia" in v or "cu" in k},
                        "not_found": missing, "only_the_driver_missing": verdict(missing)}
    try:
        ort.preload_dlls()
        ctypes.CDLL(str(provider))
        report["dlopen after preload_dlls"] = "loaded"
    except OSError as error:  # without a driver: libcuda.so.1 is what it stops at
        report["dlopen after preload_dlls"] = str(error)
    print(json.dumps(report, indent=2))
    ok = report["with the pip CUDA/cuDNN folders"]["only_the_driver_missing"]
    print("PASS: every library but the driver's resolves" if ok else "FAIL: libraries missing besides the driver's")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
