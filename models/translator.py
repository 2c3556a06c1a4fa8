"""English → French encoder-decoder Transformer (Vaswani et al., 2017), pre-norm.

Source and target tokens are embedded (scaled by √d_model) and given the same sinusoidal positions; the
decoder's output layer has a bias. By default source embedding, target embedding and output layer are one
shared matrix (Press & Wolf, 2017): digits and the many names that French and English spell alike are then
the same vectors on both sides, which makes copying them easy to learn. This is exactly what CTranslate2's
``TransformerSpec.from_config((enc_layers, dec_layers), num_heads, pre_norm=True, activation=ReLU)``
describes, so the trained weights can be loaded into CTranslate2 for side-by-side benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.attention import KV, padding_mask
from models.data.tokenizer import Tokenizer
from models.layers import Encoder, TextDecoder, greedy_decode, scaled_embedding, sinusoidal_positions


@dataclass
class TranslatorConfig:
    vocab_size: int = 2000  # shared sentencepiece vocabulary (source and target)
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    encoder_layers: int = 3
    decoder_layers: int = 3
    max_len: int = 256  # longest source or target sequence, in tokens (incl. BOS/EOS)
    activation: str = "relu"
    share_embeddings: bool = True  # one matrix for source, target and output (joint vocabulary)
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3


class Translator(nn.Module):
    def __init__(self, config: TranslatorConfig, fused: bool = True) -> None:
        super().__init__()
        c = self.config = config
        self.register_buffer("positions", sinusoidal_positions(c.max_len, c.d_model), persistent=False)
        self.encoder = Encoder(c.encoder_layers, c.d_model, c.n_heads, c.d_ff, c.activation, fused)
        self.decoder = TextDecoder(
            c.vocab_size, c.decoder_layers, c.d_model, c.n_heads, c.d_ff, c.max_len, c.activation, fused,
            tie_output=c.share_embeddings,
        )
        self.src_embed = self.decoder.embed if c.share_embeddings else scaled_embedding(c.vocab_size, c.d_model)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src ids ``(B, S)`` (padded with ``pad_id``) → memory ``(B, S, D)`` and its padding mask ``(B, 1, 1, S)``."""
        mask = padding_mask(src, self.config.pad_id)
        x = self.src_embed(src) * math.sqrt(self.config.d_model) + self.positions[: src.size(1)]  # (B, S, D)
        # ONNX Runtime's Attention kernel wants the mask's query dimension spelled out: (B, 1, S, S), not (B, 1, 1, S).
        return self.encoder(x, mask.expand(-1, -1, src.size(1), -1)), mask

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for target inputs ``tgt_in`` ``(B, T)`` (BOS + target)."""
        memory, mask = self.encode(src)
        cross: list[KV] = self.decoder.cross_kv(memory)
        return self.decoder(tgt_in, cross, mask)[0]

    def generate(self, src: Tensor, max_new_tokens: int = 128) -> list[list[int]]:
        memory, mask = self.encode(src)
        return greedy_decode(self.decoder, memory, mask, self.config.bos_id, self.config.eos_id, max_new_tokens)


@torch.no_grad()
def translate(model: Translator, tokenizer: Tokenizer, texts: list[str], batch_size: int = 200) -> list[str]:
    """Greedy-translate ``texts`` in length-sorted batches (PyTorch reference path, used for evaluation)."""
    device = next(model.parameters()).device
    ids = tokenizer.encode_batch(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
    results: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        longest = max(len(ids[i]) for i in chunk)
        src = torch.full((len(chunk), longest + 1), model.config.pad_id, dtype=torch.long)
        for row, i in enumerate(chunk):
            src[row, : len(ids[i]) + 1] = torch.tensor(ids[i] + [tokenizer.eos_id])
        for i, hyp in zip(chunk, model.generate(src.to(device), max_new_tokens=2 * longest + 10)):
            results[i] = tokenizer.decode(hyp)
    return [results[i] for i in range(len(texts))]
