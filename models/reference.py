"""PyTorch-side references the tests and benchmarks check the service against (kept out of ``service/``, which
never imports torch): ``TorchInference``, the ``service.decoding.Inference`` of a PyTorch decoder, and the
cross-attention maps of the models' explicit attention path."""

from __future__ import annotations

import numpy as np
import torch


class TorchInference:
    """``Inference`` over a PyTorch ``TextDecoder`` (the reference the ONNX path is checked against)."""

    def __init__(self, decoder, cross_kv, cross_mask: torch.Tensor | None) -> None:
        self.decoder, self.cross, self.mask = decoder, cross_kv, cross_mask
        self.past = None

    @torch.no_grad()
    def logits(self, tokens: np.ndarray) -> np.ndarray:
        out, self.past, _ = self.decoder(torch.from_numpy(tokens)[:, None], self.cross, self.mask, self.past)
        return out[:, -1].float().numpy()

    def rearrange_kv_cache(self, source_rows: np.ndarray) -> None:
        idx = torch.from_numpy(source_rows)
        self.past = [(k[idx], v[idx]) for k, v in self.past]
        self.cross = [(k[idx], v[idx]) for k, v in self.cross]
        self.mask = None if self.mask is None else self.mask[idx]

    def release(self) -> None:
        self.past = None


@torch.no_grad()
def cross_attention_maps(model, inputs: torch.Tensor, outputs: list[list[int]], bos: int, layers: str = "last") -> list[np.ndarray]:
    """Cross-attention weights for decoded outputs: one ``(output tokens, source positions)`` array per row.

    Fused kernels never materialise attention weights, so they come from the PyTorch model's explicit path
    (``need_weights=True``) in one teacher-forced pass over ``[BOS] + output``: row ``i`` is what the decoder
    looked at while producing output token ``i``. Heads are averaged; ``layers`` is ``"last"`` or ``"mean"``.
    For the translator the columns are source tokens (padding dropped), for the captioner image patches in
    reading order (reshape to ``grid × grid``).
    """
    encoded = model.encode(inputs)
    memory, mask = encoded if isinstance(encoded, tuple) else (encoded, None)
    cross = model.decoder.cross_kv(memory)
    maps = []
    for b, toks in enumerate(outputs):
        tin = torch.tensor([[bos] + list(toks)])
        row_mask = None if mask is None else mask[b : b + 1]
        _, _, weights = model.decoder(tin, [(k[b : b + 1], v[b : b + 1]) for k, v in cross], row_mask, need_weights=True)
        stacked = torch.stack(weights)[:, 0]  # (L, H, T+1, S)
        w = (stacked[-1] if layers == "last" else stacked.mean(0)).mean(0)  # (T+1, S)
        valid = int(row_mask.sum()) if row_mask is not None else w.size(-1)
        maps.append(w[: len(toks), :valid].numpy())
    return maps
