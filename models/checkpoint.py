"""Saving and loading trained models: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.model``).

Weights are read only from safetensors, never from pickles. ``config.json`` holds the model's config
dataclass, from which the module is rebuilt before the weights are loaded (strictly: every tensor must match).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from models.captioner import Captioner, CaptionerConfig
from models.data.tokenizer import FILENAME as TOKENIZER_FILE
from models.data.tokenizer import Tokenizer
from models.translator import Translator, TranslatorConfig
from models.vit import ViT, ViTConfig

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
REGISTRY: dict[str, tuple[type, type[nn.Module]]] = {
    "translator": (TranslatorConfig, Translator),
    "classifier": (ViTConfig, ViT),
    "captioner": (CaptionerConfig, Captioner),
}


def build(name: str, config: Any, fused: bool = True) -> nn.Module:
    return REGISTRY[name][1](config, fused=fused)


def save(directory: str | Path, name: str, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))  # tied matrices are stored once
    meta = {"model": name, "config": asdict(model.config), **(extra or {})}
    (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load(name_or_dir: str | Path, fused: bool = True, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer | None]:
    """Rebuild a model from a checkpoint directory (or the shipped one, by model name), in eval mode."""
    directory = Path(name_or_dir)
    if not directory.is_dir():
        directory = CHECKPOINTS / str(name_or_dir)
    meta = json.loads((directory / "config.json").read_text())
    config_cls, _ = REGISTRY[meta["model"]]
    model = build(meta["model"], config_cls(**meta["config"]), fused=fused)
    missing, unexpected = load_model(model, str(directory / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    model.to(device).eval()
    tok = Tokenizer.load(directory) if (directory / TOKENIZER_FILE).exists() else None
    return model, tok
