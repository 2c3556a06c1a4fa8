"""``python -m export --hf PATH --name NAME``: a Hugging Face checkpoint into this repository's layout.

PATH is a local directory written by ``transformers``' ``save_pretrained`` (weights in safetensors, ``config.json``,
and the preprocessor's files). The model is loaded with ``transformers`` itself (the optional ``[hf]`` extra: needed
to import, never to serve), with PyTorch's fused attention (``attn_implementation="sdpa"``), exported to ONNX at
opset 23 so that every attention is one fused ``Attention`` node (the same fusion check as the shipped models), and
checked against ``transformers`` on the same weights before anything is written.

Pre- and post-processing come from the checkpoint, never from assumptions: the image processor's size, rescale
factor, mean and std, and the model's ``id2label``. The graph takes images as the shipped classifier does (float32,
N × C × H × W, pixel values / 255) and applies the checkpoint's rescale and normalisation itself, so whoever feeds it
needs only the size and the channel order, which ``config.json`` states.

Supported now: ``ViTForImageClassification``, ``MarianMTModel`` (``export/hf_marian.py``: the shipped translator's
encoder/decoder contract, KV cache included) and ``VisionEncoderDecoderModel`` with a ViT encoder and a GPT-2 decoder
(``export/hf_caption.py``: the shipped captioner's contract). Anything else is refused with a message naming it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.onnx import OPSET, ExportError, check_fused, export_graph

SUPPORTED = ("ViTForImageClassification", "MarianMTModel", "VisionEncoderDecoderModel")
PARITY_TOLERANCE = 1e-4  # max |logit difference| against transformers, fp32
PARITY_IMAGES = 16


class UnsupportedCheckpoint(ExportError):
    """The checkpoint is readable but asks for something this importer does not do; the message names it."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UnsupportedCheckpoint(f"{path.parent}: no {path.name} (a directory written by save_pretrained has one)") from None
    except json.JSONDecodeError as e:
        raise UnsupportedCheckpoint(f"{path}: not valid JSON ({e})") from None


def architecture(source: Path) -> str:
    """The checkpoint's architecture, refused unless supported; weights must be safetensors (never a pickle)."""
    config = read_json(source / "config.json")
    names = config.get("architectures") or []
    if len(names) != 1:
        raise UnsupportedCheckpoint(f"{source}: config.json names {names or 'no'} architectures; one is needed")
    name = names[0]
    if name not in SUPPORTED:
        raise UnsupportedCheckpoint(f"{source}: architecture {name} is not supported; supported: {', '.join(SUPPORTED)}")
    if not (source / "model.safetensors").exists() and not (source / "model.safetensors.index.json").exists():
        pickles = sorted(p.name for p in source.glob("*.bin")) + sorted(p.name for p in source.glob("*.pt*"))
        found = f" (found {', '.join(pickles)}: pickles are never loaded)" if pickles else ""
        raise UnsupportedCheckpoint(f"{source}: no model.safetensors{found}; save the model with safe_serialization=True")
    return name


def image_processing(source: Path, config: Any) -> dict[str, Any]:
    """The image processor's own settings (``preprocessor_config.json``), as the service and the graph use them."""
    pre = read_json(source / "preprocessor_config.json")
    size = pre.get("size", {})
    if isinstance(size, int):
        height = width = size
    elif "height" in size and "width" in size:
        height, width = int(size["height"]), int(size["width"])
    else:
        raise UnsupportedCheckpoint(f"{source}: preprocessor size {size} is not supported (height and width are needed)")
    if (height, width) != (config.image_size, config.image_size):
        raise UnsupportedCheckpoint(f"{source}: the processor resizes to {height}×{width} but the model takes {config.image_size}×{config.image_size}")
    channels = config.num_channels
    mean, std = pre.get("image_mean", [0.0] * channels), pre.get("image_std", [1.0] * channels)
    if not pre.get("do_normalize", True):
        mean, std = [0.0] * channels, [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise UnsupportedCheckpoint(f"{source}: image_mean/image_std have {len(mean)}/{len(std)} values for {channels} channels")
    rescale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    return {"size": [height, width], "channels": channels, "color": "RGB" if channels == 3 else "L",
            "rescale_factor": rescale, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "resample": pre.get("resample"), "processor": pre.get("image_processor_type")}


class NormalisedClassifier(nn.Module):
    """images (pixel values / 255) → the checkpoint's rescale and normalisation → logits."""

    def __init__(self, model: nn.Module, processing: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        scale = 255.0 * processing["rescale_factor"]
        std = torch.tensor(processing["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("gain", scale / std)
        self.register_buffer("shift", torch.tensor(processing["mean"], dtype=torch.float32).view(1, -1, 1, 1) / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images * self.gain - self.shift).logits


def import_vit_classifier(source: Path, directory: Path, name: str) -> dict[str, Any]:
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(source, attn_implementation="sdpa", use_safetensors=True).eval()
    c = model.config
    processing = image_processing(source, c)
    labels = [str(c.id2label.get(i, c.id2label.get(str(i), i))) for i in range(c.num_labels)]
    graph = NormalisedClassifier(model, processing).eval()
    path = directory / "model.onnx"
    size = c.image_size
    export_graph(graph, (torch.rand(2, c.num_channels, size, size),), path,
            ({0: torch.export.Dim("batch", min=1, max=4096)},), ["images"], ["logits"])
    fused = check_fused(path, c.num_hidden_layers)
    parity = check_classifier_parity(path, model, processing)
    return {
        "name": name, "version": 1, "precision": "fp32", "opset": OPSET, "task": "classification",
        "architecture": "ViTForImageClassification",
        "source": {"format": "huggingface", "path": str(source.resolve()), "model_type": c.model_type},
        "model_config": {"image_size": size, "patch_size": c.patch_size, "channels": c.num_channels,
                         "d_model": c.hidden_size, "n_heads": c.num_attention_heads, "d_ff": c.intermediate_size,
                         "layers": c.num_hidden_layers, "num_classes": c.num_labels},
        "inputs": {"images": {"dtype": "float32", "shape": [-1, c.num_channels, size, size], "range": [0.0, 1.0],
                              "note": f"{processing['color']} pixel values / 255; the graph applies the checkpoint's rescale and normalisation"}},
        "outputs": {"logits": {"dtype": "float32", "shape": [-1, c.num_labels]}},
        "labels": labels,
        "processing": processing,
        "fused_attention": {"model.onnx": fused},
        "quality": {"max_abs_logit_diff_vs_transformers": parity, "tolerance": PARITY_TOLERANCE, "images": PARITY_IMAGES},
    }


def check_classifier_parity(path: Path, model: nn.Module, processing: dict[str, Any]) -> float:
    """The graph against ``transformers`` on the same weights: random images, normalised the processor's way."""
    from service.runtime import RuntimeOptions, create_session

    rng = np.random.default_rng(0)
    h, w = processing["size"]
    pixels = rng.integers(0, 256, (PARITY_IMAGES, processing["channels"], h, w)).astype(np.float32)
    mean = np.asarray(processing["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(processing["std"], np.float32).reshape(1, -1, 1, 1)
    pixel_values = (pixels * processing["rescale_factor"] - mean) / std  # what the image processor computes
    with torch.no_grad():
        reference = model(pixel_values=torch.from_numpy(pixel_values)).logits.numpy()
    session = create_session(path, RuntimeOptions())
    logits = session.run(None, {"images": pixels / 255.0})[0]
    diff = float(np.abs(logits - reference).max())
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"{path.name}: logits differ from transformers by {diff:.3g} (tolerance {PARITY_TOLERANCE})")
    return diff


def import_marian(source: Path, directory: Path, name: str) -> dict[str, Any]:
    from export.hf_marian import import_marian as run

    return run(source, directory, name)


def import_captioner(source: Path, directory: Path, name: str) -> dict[str, Any]:
    from export.hf_caption import import_captioner as run

    return run(source, directory, name)


IMPORTERS = {"ViTForImageClassification": import_vit_classifier, "MarianMTModel": import_marian,
             "VisionEncoderDecoderModel": import_captioner}


def import_checkpoint(source: str | Path, name: str, out: str | Path) -> dict[str, Any]:
    """Write ``out/name/1/`` from the checkpoint at ``source``; returns its ``config.json``. Nothing is written
    unless every check passed (the version directory is built aside and moved into place)."""
    source, out = Path(source), Path(out)
    if not name or "/" in name or name.startswith("."):
        raise UnsupportedCheckpoint(f"model name {name!r}: a plain directory name is needed")
    arch = architecture(source)
    target = out / name / "1"
    staging = out / name / ".1.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        config = IMPORTERS[arch](source, staging, name)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return config
