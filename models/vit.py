"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", 2021).

The image is cut into non-overlapping ``patch × patch`` squares; each is flattened and linearly projected
to a token. A learned CLS token is prepended, learned position embeddings are added, pre-norm encoder
layers mix the tokens, and the CLS token's final state is classified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.layers import Encoder


@dataclass
class ViTConfig:
    image_size: int = 8  # square, grayscale, values scaled to [0, 1]
    patch_size: int = 2
    channels: int = 1
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 128
    layers: int = 4
    num_classes: int = 10
    dropout: float = 0.1  # training only (embeddings and before the head)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


class PatchEmbedding(nn.Module):
    """``(B, C, H, W)`` → ``(B, N, D)``: a strided convolution is a linear map of each flattened patch."""

    def __init__(self, channels: int, patch: int, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, d_model, kernel_size=patch, stride=patch)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, N, D), patches in reading order


class ViTEncoder(nn.Module):
    """Patch tokens (+ optional CLS) with learned positions through the encoder; returns all token states."""

    def __init__(self, c: ViTConfig, cls_token: bool, fused: bool = True) -> None:
        super().__init__()
        if c.image_size % c.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.patches = PatchEmbedding(c.channels, c.patch_size, c.d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, c.d_model)) if cls_token else None
        n_tokens = c.num_patches + (1 if cls_token else 0)
        self.pos = nn.Parameter(torch.randn(1, n_tokens, c.d_model) * 0.02)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = Encoder(c.layers, c.d_model, c.n_heads, c.d_ff, "gelu", fused)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patches(images)  # (B, N, D)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], dim=1)  # (B, 1 + N, D)
        return self.encoder(self.dropout(x + self.pos))


class ViT(nn.Module):
    """Digit classifier: images ``(B, 1, H, W)`` in [0, 1] → logits ``(B, num_classes)``."""

    def __init__(self, config: ViTConfig, fused: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTEncoder(config, cls_token=True, fused=fused)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, config.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.encoder(images)[:, 0]))  # CLS token → (B, num_classes)
