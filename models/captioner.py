"""Image captioner: a ViT encoder over image patches and a Transformer text decoder whose
cross-attention looks at those patches ("Show, Attend and Tell", Xu et al. 2015, with Transformer
blocks on both sides).

The encoder keeps every patch token (no CLS): the decoder attends over the ``grid × grid`` patch states,
which is what makes the caption-word ↔ image-patch attention maps meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from models.attention import KV
from models.layers import TextDecoder, greedy_decode
from models.vit import ViTConfig, ViTEncoder


@dataclass
class CaptionerConfig:
    image_size: int = 32
    patch_size: int = 8  # a 4×4 grid: each quadrant (one digit) is 2×2 patches
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 2
    vocab_size: int = 32  # caption sentencepiece vocabulary
    max_len: int = 48  # longest caption in tokens (incl. BOS/EOS)
    dropout: float = 0.1
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def vit(self) -> ViTConfig:
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            layers=self.encoder_layers,
            dropout=self.dropout,
        )


class Captioner(nn.Module):
    def __init__(self, config: CaptionerConfig, fused: bool = True) -> None:
        super().__init__()
        c = self.config = config
        self.encoder = ViTEncoder(c.vit(), cls_token=False, fused=fused)
        self.decoder = TextDecoder(c.vocab_size, c.decoder_layers, c.d_model, c.n_heads, c.d_ff, c.max_len, "gelu", fused, tie_output=True)

    def encode(self, images: Tensor) -> Tensor:
        """images ``(B, 1, H, W)`` in [0, 1] → patch states ``(B, N, D)`` (N = grid², reading order)."""
        return self.encoder(images)

    def forward(self, images: Tensor, tgt_in: Tensor) -> Tensor:
        memory = self.encode(images)
        cross: list[KV] = self.decoder.cross_kv(memory)
        return self.decoder(tgt_in, cross, None)[0]  # (B, T, V)

    def generate(self, images: Tensor, max_new_tokens: int = 40) -> list[list[int]]:
        return greedy_decode(self.decoder, self.encode(images), None, self.config.bos_id, self.config.eos_id, max_new_tokens)
