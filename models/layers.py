"""Transformer building blocks shared by the three models.

Pre-norm residual blocks (Xiong et al., "On Layer Normalization in the Transformer Architecture", 2020)
with a final LayerNorm after each stack: the layout CTranslate2's ``TransformerSpec(pre_norm=True)``
describes, so the translator's weights map one-to-one onto it. Sinusoidal positions are from Vaswani et
al. (2017) §3.5; the ViT uses learned positions instead (Dosovitskiy et al., 2021).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.attention import KV, MultiHeadAttention, causal_mask
from models.repetition import runaway


def sinusoidal_positions(max_len: int, d_model: int) -> Tensor:
    """``(max_len, d_model)`` table: first half sines, second half cosines (tensor2tensor / CTranslate2 layout).

    PE(p, i) = sin(p / 10000^(i / (d/2 - 1))) for i < d/2, and the matching cosines in the second half.
    """
    half = d_model // 2
    inv_timescales = torch.exp(torch.arange(half) * -(math.log(10000.0) / max(half - 1, 1)))  # (d/2,)
    angles = torch.arange(max_len)[:, None] * inv_timescales[None, :]  # (L, d/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (L, d)


def scaled_embedding(vocab_size: int, d_model: int) -> nn.Embedding:
    """Embedding initialised N(0, 1/d) so that, multiplied by √d, tokens have unit scale like the positions."""
    embed = nn.Embedding(vocab_size, d_model)
    nn.init.normal_(embed.weight, std=d_model**-0.5)
    return embed


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "relu") -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU()}[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.act(self.linear1(x)))


class EncoderLayer(nn.Module):
    """x + SelfAttn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, activation: str = "relu", fused: bool = True) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, fused=fused)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, activation)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.self_attn_norm(x)
        x = x + self.self_attn(h, mask=mask)[0]
        return x + self.ffn(self.ffn_norm(x))


class DecoderLayer(nn.Module):
    """Masked self-attention (with KV cache), cross-attention on precomputed source K/V, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, activation: str = "relu", fused: bool = True) -> None:
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, fused=fused)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, fused=fused)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, activation)

    def forward(
        self,
        x: Tensor,
        cross_kv: KV,
        *,
        self_mask: Tensor | None,
        cross_mask: Tensor | None,
        past_kv: KV | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, KV, Tensor | None]:
        h, present, _ = self.self_attn(self.self_attn_norm(x), mask=self_mask, past_kv=past_kv)
        x = x + h
        h, _, weights = self.cross_attn(
            self.cross_attn_norm(x), static_kv=cross_kv, mask=cross_mask, need_weights=need_weights
        )
        x = x + h
        return x + self.ffn(self.ffn_norm(x)), present, weights


class Encoder(nn.Module):
    """A stack of encoder layers over already-embedded inputs, with the final LayerNorm."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, activation: str, fused: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff, activation, fused) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class TextDecoder(nn.Module):
    """Token embedding (scaled by √d) + sinusoidal positions → decoder layers → LayerNorm → vocabulary logits.

    Used for training on whole sequences (causal mask, no cache) and for one-token steps with a KV cache.
    """

    def __init__(
        self,
        vocab_size: int,
        n_layers: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        max_len: int,
        activation: str = "relu",
        fused: bool = True,
        tie_output: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.embed = scaled_embedding(vocab_size, d_model)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_heads, d_ff, activation, fused) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size)
        if tie_output:  # Press & Wolf (2017): the output layer reuses the embedding matrix
            self.output.weight = self.embed.weight

    def cross_kv(self, memory: Tensor) -> list[KV]:
        """Per-layer cross-attention K/V ``(B, H, S, Dh)`` of the encoder output: once per request."""
        return [layer.cross_attn.project_kv(memory) for layer in self.layers]

    def forward(
        self,
        tokens: Tensor,
        cross_kv: list[KV],
        cross_mask: Tensor | None = None,
        past_kv: list[KV] | None = None,
        self_mask: Tensor | None = None,
        need_weights: bool = False,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, list[KV], list[Tensor | None]]:
        """tokens ``(B, T)`` → logits ``(B, T, V)``, per-layer self-attention cache, per-layer cross weights.

        Without ``past_kv`` this is a full (teacher-forced) pass with a causal mask; with it, ``tokens`` are
        the next ``T`` positions after the cached ones. ``self_mask`` overrides the default causal mask and
        ``positions`` ``(B, T)`` the default positions ``P … P + T - 1``: together they let sequences whose
        caches hold different numbers of valid entries share one batch.
        """
        past_len = 0 if past_kv is None else past_kv[0][0].size(2)
        t = tokens.size(1)
        pos = self.positions[past_len : past_len + t] if positions is None else self.positions[positions]  # (T, D) | (B, T, D)
        x = self.embed(tokens) * math.sqrt(self.d_model) + pos  # (B, T, D)
        if self_mask is None and t > 1:
            self_mask = causal_mask(t, past_len + t, tokens.device)
        presents, weights = [], []
        for i, layer in enumerate(self.layers):
            x, present, w = layer(
                x,
                cross_kv[i],
                self_mask=self_mask,
                cross_mask=cross_mask,
                past_kv=None if past_kv is None else past_kv[i],
                need_weights=need_weights,
            )
            presents.append(present)
            weights.append(w)
        return self.output(self.norm(x)), presents, weights


def set_fused(module: nn.Module, fused: bool) -> nn.Module:
    """Switch every attention in ``module`` to the fused (SDPA) or explicit path."""
    for m in module.modules():
        if isinstance(m, MultiHeadAttention):
            m.fused = fused
    return module


@torch.no_grad()
def greedy_decode(
    decoder: TextDecoder,
    memory: Tensor,
    memory_mask: Tensor | None,
    bos_id: int,
    eos_id: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Batched greedy decoding with a KV cache; each row stops at its own EOS (EOS not returned), or at the
    repetition guard (``models.repetition``: a piece's ``MAX_RUN``-th repetition in a row ends the row).

    Used to score models during training, and deliberately kept apart from ``service.decoding``: it is the
    independent PyTorch reference that the ONNX Runtime engine's greedy output is checked against.
    """
    b = memory.size(0)
    cross = decoder.cross_kv(memory)
    tokens = torch.full((b, 1), bos_id, dtype=torch.long, device=memory.device)
    past: list[KV] | None = None
    out: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    for _ in range(max_new_tokens):
        logits, past, _ = decoder(tokens, cross, memory_mask, past)
        nxt = logits[:, -1].argmax(-1)  # (B,)
        for i, token in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if token == eos_id:
                done[i] = True
            else:
                out[i].append(token)
                done[i] = runaway(out[i])
        if all(done):
            break
        tokens = torch.where(torch.tensor(done, device=nxt.device), torch.full_like(nxt, eos_id), nxt)[:, None]
    return out
