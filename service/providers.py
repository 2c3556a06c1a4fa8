"""Where ONNX Runtime sessions run: provider choice, the CUDA libraries, CUDA options, and saying so when a session
does not run where it was asked to.

Providers come from ``ORT_PROVIDERS`` (comma-separated, in order of preference), else CUDA first when this
onnxruntime build offers it, then CPU. Providers the installed build does not have are dropped with a warning, and
the CPU provider is always last, so a machine without a GPU runs everything on CPU. The first provider
``ORT_PROVIDERS`` names is *required*: a session that ends up elsewhere (ONNX Runtime falls back to the CPU with one
log line when the CUDA provider's libraries do not load) is reported by ``provider_problem``, and the replica is
not ready until it is fixed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# A replica's GPU memory share (``num_gpus`` × the device's memory, less CUDA context headroom), split between its
# sessions: the decoders hold the KV caches of a whole batch, the encoders one pass, the classifier one batch.
HEADROOM = 0.9
MODEL_SHARE = {"classifier": 0.2, "translator": 0.4, "captioner": 0.4}
DECODER_SHARE = 0.75  # of an encoder-decoder model's share; the encoder gets the rest


def select_providers(requested: str | None = None, available: Sequence[str] | None = None) -> list[str]:
    """Providers to use, in order: ``requested`` (or ``$ORT_PROVIDERS``) filtered by what is available, CPU last."""
    available = list(ort.get_available_providers() if available is None else available)
    requested = os.environ.get("ORT_PROVIDERS") if requested is None else requested
    wanted = [p.strip() for p in requested.split(",") if p.strip()] if requested else [CUDA, CPU]
    chosen = []
    for p in wanted:
        if p in available and p not in chosen:
            chosen.append(p)
        elif p not in available and requested:
            log.warning("ORT provider %s is not available in this onnxruntime build (has %s); skipping it", p, available)
    if CPU in chosen:
        chosen.remove(CPU)
    return chosen + [CPU]


def bench_providers() -> tuple[str, ...]:
    """Providers for the benchmark scripts: ``$ORT_PROVIDERS`` where set (``CUDAExecutionProvider`` on a GPU machine),
    else CPU only, so that a CPU table never silently mixes in a GPU."""
    return tuple(select_providers(os.environ.get("ORT_PROVIDERS", CPU)))


def required_provider() -> str | None:
    """The provider ``ORT_PROVIDERS`` names first: the one this process was asked to run on. None when unset (the
    best one here, CUDA where this build has it, else CPU, is fine)."""
    requested = [p.strip() for p in os.environ.get("ORT_PROVIDERS", "").split(",") if p.strip()]
    return requested[0] if requested else None


def provider_problem(session: ort.InferenceSession, required: str | None = None) -> str | None:
    """Why ``session`` does not run where it was asked to (``required``, default ``required_provider()``), or None."""
    required = required_provider() if required is None else required
    active = session.get_providers()[0]
    if not required or active == required:
        return None
    available = ort.get_available_providers()
    if required not in available:
        why = f"this onnxruntime build has no {required} (it has {', '.join(available)})"
    else:
        why = f"{required} did not load (its libraries: see this replica's log and tests/gpu/ldd_check.py)"
    return f"asked for {required} (ORT_PROVIDERS) but runs on {active}: {why}"


_cuda_preloaded = False


def preload_cuda() -> None:
    """Load the CUDA and cuDNN libraries the pip packages of ``onnxruntime-gpu[cuda,cudnn]`` put under
    ``site-packages/nvidia/*/lib``, which are not on the loader's path (``onnxruntime.preload_dlls``, ORT ≥ 1.21).
    Without it the CUDA provider fails to load and ORT falls back to the CPU. Once per process; CPU builds: nothing."""
    global _cuda_preloaded
    if _cuda_preloaded or CUDA not in ort.get_available_providers() or not hasattr(ort, "preload_dlls"):
        return
    _cuda_preloaded = True
    try:
        ort.preload_dlls()
    except Exception as error:  # noqa: BLE001 - a base image with the libraries on its path needs none of this
        log.warning("onnxruntime.preload_dlls() failed (%s); relying on the system's CUDA libraries", error)


def cuda_options(device_id: int = 0, memory_limit: int | None = None) -> dict[str, str]:
    """The CUDA provider's options: cuDNN picks convolution algorithms by heuristic (the default, ``EXHAUSTIVE``,
    times every algorithm on each new input shape: ViT's patch convolution, at every new batch size), and the arena
    grows only by what is asked, up to ``memory_limit`` bytes (replicas share a GPU by ``num_gpus`` fractions)."""
    options = {"device_id": str(device_id), "cudnn_conv_algo_search": "HEURISTIC",
               "arena_extend_strategy": "kSameAsRequested"}
    if memory_limit:
        options["gpu_mem_limit"] = str(int(memory_limit))
    return options


def gpu_memory_bytes(device: str | None = None) -> int | None:
    """Total memory of the GPU this process sees first (``CUDA_VISIBLE_DEVICES``' first entry, as nvidia-smi numbers
    them), from ``nvidia-smi``; ``GPU_MEMORY_BYTES`` overrides. None when neither says."""
    if os.environ.get("GPU_MEMORY_BYTES"):
        return int(os.environ["GPU_MEMORY_BYTES"])
    if shutil.which("nvidia-smi") is None:
        return None
    device = device or (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    try:
        out = subprocess.run(["nvidia-smi", f"--id={device}", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        return int(float(out.strip().splitlines()[0]) * 2**20)  # MiB
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def replica_memory_limit(gpus: float, total: int | None) -> int | None:
    """Bytes of GPU memory a replica granted ``gpus`` of a device (Ray's ``num_gpus``) may use: its share, less
    headroom for the CUDA context and cuDNN workspaces. None without a GPU or a known device size."""
    if not gpus or not total:
        return None
    return int(total * min(gpus, 1.0) * HEADROOM)


def model_memory_limits(replica_limit: int | None) -> dict[str, int | None]:
    """A replica's limit split between its three models (``MODEL_SHARE``)."""
    return {name: None if replica_limit is None else int(replica_limit * share) for name, share in MODEL_SHARE.items()}


def warm_up_widths(max_batch: int) -> list[int]:
    """The batch sizes a replica runs once at start on a GPU: powers of two up to ``max_batch``, and ``max_batch``.
    A CUDA session plans (and cuDNN picks convolution algorithms) per new input shape; doing it here keeps that
    first-time cost off the first requests of each size."""
    widths, b = [], 1
    while b < max_batch:
        widths.append(b)
        b *= 2
    return widths + [max(1, max_batch)]


def warm_up(run, max_batch: int) -> list[int]:
    """``run(b)`` once per ``warm_up_widths(max_batch)``; returns the widths run."""
    widths = warm_up_widths(max_batch)
    for b in widths:
        run(b)
    return widths
