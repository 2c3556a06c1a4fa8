"""Greedy and beam-search decoding over a small ``Inference`` interface.

The search code only sees ``Inference`` (next-token logits with the KV cache kept inside, reorder the cache,
release it), so the same decoders run on the PyTorch models (``TorchInference``) and on ONNX Runtime
(``service.runtime.OrtInference``); whisper's ``decoding.py`` is split the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Inference(Protocol):
    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """Last token of each row ``(B,)`` → next-token logits ``(B, V)``; advances the cache one step."""

    def rearrange_kv_cache(self, source_rows: np.ndarray) -> None:
        """Row ``i`` of the cache becomes a copy of row ``source_rows[i]``."""

    def release(self) -> None:
        """Free the cache."""


@dataclass(frozen=True)
class DecodingOptions:
    beam_size: int = 1  # 1: greedy; 2–8: beam search
    max_new_tokens: int = 128  # hard cap on generated tokens (EOS excluded)
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty (0: no normalisation)

    def __post_init__(self) -> None:
        if not 1 <= self.beam_size <= 8:
            raise ValueError(f"beam_size must be within 1..8, got {self.beam_size}")
        if not 1 <= self.max_new_tokens <= 256:
            raise ValueError(f"max_new_tokens must be within 1..256, got {self.max_new_tokens}")


def greedy(inference: Inference, batch: int, bos: int, eos: int, max_new_tokens: int) -> list[list[int]]:
    """Argmax decoding; rows finish at their own EOS (not returned) and stop costing anything but a slot."""
    tokens = np.full(batch, bos, dtype=np.int64)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = np.zeros(batch, dtype=bool)
    for _ in range(max_new_tokens):
        nxt = inference.logits(tokens).argmax(-1)
        for i in np.flatnonzero(~done):
            if nxt[i] == eos:
                done[i] = True
            else:
                out[i].append(int(nxt[i]))
        if done.all():
            break
        tokens = np.where(done, eos, nxt).astype(np.int64)
    inference.release()
    return out


def _source_done(finished, open_scores, open_seqs, k: int, norm) -> bool:
    """Done once ``k`` hypotheses have ended and no open beam, scored at its current length, beats the best."""
    if len(finished) < k:
        return False
    best_open = max((sc / norm(len(seq)) for sc, seq in zip(open_scores, open_seqs) if np.isfinite(sc)), default=-np.inf)
    return best_open < finished[0][0]


def beam_search(
    inference: Inference, batch: int, bos: int, eos: int, options: DecodingOptions
) -> list[list[int]]:
    """Beam search; ``inference`` must hold ``batch × beam_size`` rows (each source repeated ``beam_size`` times).

    A hypothesis ends when it emits EOS. A source is finished once ``beam_size`` hypotheses have ended and no
    open beam (length-normalised at its current length) scores above the best of them; stopping at the first
    ``beam_size`` endings instead lets short hypotheses crowd out a better, longer one. Returns the best
    hypothesis per source by length-normalised score.
    """
    k = options.beam_size
    last = np.full(batch * k, bos, dtype=np.int64)
    scores = np.zeros((batch, k))
    scores[:, 1:] = -np.inf  # all beams start identical: keep only the first alive at step 0
    seqs: list[list[int]] = [[] for _ in range(batch * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    norm = lambda length: max(length, 1) ** options.length_penalty
    c = 2 * k  # candidates per source: enough to refill K beams after EOS ones
    for step in range(options.max_new_tokens):
        logits = inference.logits(last).astype(np.float32, copy=False)  # (B*K, V)
        # The source's best c continuations are among each beam's own best c tokens: select those first
        # (linear time) instead of sorting all K*V, and score only them.
        cand_tok = np.argpartition(-logits, c - 1, axis=1)[:, :c]  # (B*K, c)
        shifted = logits - logits.max(-1, keepdims=True)
        lse = np.log(np.exp(shifted).sum(-1, keepdims=True, dtype=np.float64))  # (B*K, 1)
        cand_logp = np.take_along_axis(shifted, cand_tok, axis=1).astype(np.float64) - lse  # (B*K, c)
        total = (scores.reshape(-1, 1) + cand_logp).reshape(batch, k * c)  # (B, K*c)
        top = np.argsort(-total, axis=1, kind="stable")[:, :c]
        new_rows, new_tokens, new_scores, new_seqs = [], [], np.full((batch, k), -np.inf), []
        for b in range(batch):
            kept = 0
            for cand in top[b]:
                beam, j = divmod(int(cand), c)
                row, score = b * k + beam, float(total[b, cand])
                token = int(cand_tok[row, j])
                if not np.isfinite(score):
                    continue
                if token == eos:
                    finished[b].append((score / norm(len(seqs[row]) + 1), seqs[row]))
                    finished[b] = sorted(finished[b], key=lambda f: f[0], reverse=True)[:k]  # the best k
                    continue
                if kept < k:
                    new_rows.append(row)
                    new_tokens.append(token)
                    new_seqs.append(seqs[row] + [token])
                    new_scores[b, kept] = score
                    kept += 1
            while kept < k:  # fewer live candidates than beams: pad with dead copies
                new_rows.append(b * k)
                new_tokens.append(eos)
                new_seqs.append(seqs[b * k])
                kept += 1
        scores, seqs = new_scores, new_seqs
        last = np.array(new_tokens, dtype=np.int64)
        if all(_source_done(finished[b], scores[b], seqs[b * k : (b + 1) * k], k, norm) for b in range(batch)):
            break
        inference.rearrange_kv_cache(np.array(new_rows))
    for b in range(batch):  # sources that hit max_new_tokens: their open beams count too
        for j in range(k):
            if np.isfinite(scores[b, j]):
                finished[b].append((scores[b, j] / norm(len(seqs[b * k + j])), seqs[b * k + j]))
    inference.release()
    return [max(f, key=lambda t: t[0])[1] for f in finished]


def decode(inference_factory, batch: int, bos: int, eos: int, options: DecodingOptions) -> list[list[int]]:
    """Greedy when ``beam_size == 1``, else beam search; ``inference_factory(repeat)`` builds the Inference
    with every source row repeated ``repeat`` times."""
    if options.beam_size == 1:
        return greedy(inference_factory(1), batch, bos, eos, options.max_new_tokens)
    return beam_search(inference_factory(options.beam_size), batch, bos, eos, options)


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
