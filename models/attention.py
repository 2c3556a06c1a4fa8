"""Scaled dot-product attention and multi-head attention, written out.

Vaswani et al., "Attention Is All You Need" (2017), §3.2:

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V
    MultiHead(Q, K, V) = Concat(head_1, …, head_h) W_O,   head_i = Attention(Q W_Q_i, K W_K_i, V W_V_i)

One module serves self-attention (keys/values from the queries' own sequence, optionally extended by a KV
cache of earlier steps) and cross-attention (keys/values from another sequence, or precomputed once and
passed in as ``static_kv``). Each instance chooses between two numerically equivalent paths:

* ``fused=True``: ``torch.nn.functional.scaled_dot_product_attention``; exported to ONNX it becomes one
  ``Attention`` node (opset ≥ 23), which ONNX Runtime runs as a fused kernel;
* ``fused=False``: the formula above spelled out with matmul / mask / softmax / matmul; the only path
  that can return the attention weights (fused kernels never materialise them).

Masks are boolean and broadcastable to ``(B, H, T, S)``; ``True`` means "may attend".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]


def causal_mask(query_len: int, key_len: int | None = None, device: torch.device | None = None) -> Tensor:
    """Boolean mask ``(1, 1, T, S)`` letting query ``i`` see keys ``0 … (S - T) + i``.

    With a KV cache of ``P = S - T`` earlier positions the queries are the last ``T`` positions of the
    sequence, so query ``i`` sits at absolute position ``P + i``.
    """
    key_len = query_len if key_len is None else key_len
    offset = key_len - query_len
    q = torch.arange(query_len, device=device)[:, None]  # (T, 1)
    k = torch.arange(key_len, device=device)[None, :]  # (1, S)
    return (k <= q + offset)[None, None]  # (1, 1, T, S)


def padding_mask(lengths_or_ids: Tensor, pad_id: int | None = None) -> Tensor:
    """Key padding mask ``(B, 1, 1, S)`` from token ids (``pad_id`` given) or a boolean keep-mask ``(B, S)``."""
    keep = lengths_or_ids != pad_id if pad_id is not None else lengths_or_ids.bool()  # (B, S)
    return keep[:, None, None, :]


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Explicit attention. q ``(B, H, T, Dh)``, k/v ``(B, H, S, Dh)`` → output ``(B, H, T, Dh)``, weights ``(B, H, T, S)``."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    # A row with every key masked (e.g. a padded query) would be NaN: give it zero weight instead.
    weights = torch.nan_to_num(weights, nan=0.0)
    return weights @ v, weights  # (B, H, T, Dh), (B, H, T, S)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate Q/K/V/output projections (with biases).

    ``fused`` picks the kernel per instance (see module docstring); ``need_weights`` forces the explicit
    path for a call so that the attention weights can be returned.
    """

    def __init__(self, d_model: int, n_heads: int, *, fused: bool = True) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.fused = fused
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def project_kv(self, source: Tensor) -> KV:
        """Keys and values ``(B, H, S, Dh)`` of a source sequence ``(B, S, D)``: computed once per request
        for cross-attention, then passed to every decoding step as ``static_kv``."""
        return self._split(self.k_proj(source)), self._split(self.v_proj(source))

    def forward(
        self,
        query: Tensor,
        source: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        past_kv: KV | None = None,
        static_kv: KV | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, KV, Tensor | None]:
        """Attend from ``query`` ``(B, T, D)``.

        Keys/values come from ``static_kv`` if given (precomputed cross-attention), else from ``source``
        (cross-attention) or ``query`` itself (self-attention), appended to ``past_kv`` when given.
        Returns ``(output (B, T, D), (k, v) used (B, H, S, Dh), weights (B, H, T, S) or None)``; for
        self-attention the returned ``(k, v)`` is the updated cache to feed into the next step.
        """
        q = self._split(self.q_proj(query))  # (B, H, T, Dh)
        if static_kv is not None:
            k, v = static_kv
        else:
            k, v = self.project_kv(query if source is None else source)  # (B, H, S_new, Dh)
            if past_kv is not None:
                k = torch.cat([past_kv[0], k], dim=2)  # (B, H, P + S_new, Dh)
                v = torch.cat([past_kv[1], v], dim=2)
        if self.fused and not need_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, Dh)
            weights = None
        else:
            out, weights = scaled_dot_product_attention(q, k, v, mask)
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.d_model)  # (B, T, D): heads concatenated
        return self.out_proj(out), (k, v), weights
