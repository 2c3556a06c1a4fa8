"""Tiny Hugging Face checkpoints, built with ``transformers`` itself and saved with ``save_pretrained`` (no download):
what the import tests and the service tests' repository import."""

from pathlib import Path

LABELS = {0: "cat", 1: "dog", 2: "fox"}
IMPORTED = "pets"  # the imported classifier in the tests' model repository (conftest.py)


def tiny_vit(directory: Path, *, channels: int = 3, size: int = 32, layers: int = 2, mean=(0.5, 0.4, 0.3),
             std=(0.2, 0.25, 0.3)) -> Path:
    """A random-weight ViTForImageClassification (seeded) with its ViTImageProcessor, in ``directory``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(image_size=size, patch_size=8, num_channels=channels, hidden_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, intermediate_size=64, num_labels=len(LABELS), id2label=LABELS,
                       label2id={v: k for k, v in LABELS.items()})
    ViTForImageClassification(config).save_pretrained(directory, safe_serialization=True)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=list(mean)[:channels],
                      image_std=list(std)[:channels]).save_pretrained(directory)
    return directory
