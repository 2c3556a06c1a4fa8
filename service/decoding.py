"""Greedy and beam-search decoding over a small ``Inference`` interface.

The search code only sees ``Inference`` (next-token logits with the KV cache kept inside, reorder the cache,
release it), so the same decoders run on the PyTorch models (``models.reference.TorchInference``) and on ONNX Runtime
(``service.runtime.OrtInference``); whisper's ``decoding.py`` is split the same way. No torch here: the service
imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from models.repetition import runaway
from service.engine.search import BeamState, advance_all, log_softmax_top


class Inference(Protocol):
    def logits(self, tokens: np.ndarray) -> np.ndarray:
        """Last token of each row ``(B,)`` → next-token logits ``(B, V)``; advances the cache one step."""

    def rearrange_kv_cache(self, source_rows: np.ndarray) -> None:
        """Row ``i`` of the cache becomes a copy of row ``source_rows[i]``."""

    # Optional: ``candidates(tokens, c)`` → each row's ``c`` best next tokens and log-probabilities, best first,
    # advancing the cache one step (ONNX Runtime chooses them in the graph, as for the engine's beam rows); a search
    # uses it where present, so offline and engine beams see the very same candidates.

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
                done[i] = runaway(out[i])
        if done.all():
            break
        tokens = np.where(done, eos, nxt).astype(np.int64)
    inference.release()
    return out


def beam_search(
    inference: Inference, batch: int, bos: int, eos: int, options: DecodingOptions
) -> list[list[int]]:
    """Beam search; ``inference`` must hold ``batch × beam_size`` rows (each source repeated ``beam_size`` times).

    Each source's search is a ``service.engine.search.BeamState``, advanced as the decoding engine advances its
    beam requests (``advance_all``), so a source gives the same tokens offline and in the engine's shared batch. A
    source that is done stops being advanced (its rows keep stepping until every source is done). Returns the best
    hypothesis per source.
    """
    k = options.beam_size
    states = [BeamState(k, eos, options.length_penalty) for _ in range(batch)]
    last = np.full(batch * k, bos, dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    in_graph = hasattr(inference, "candidates")
    for _ in range(options.max_new_tokens):
        if in_graph:
            cand_tok, cand_logp = inference.candidates(last, 2 * k)  # (B*K, 2K) each
        else:
            cand_tok, cand_logp = log_softmax_top(inference.logits(last), 2 * k)
        rows = np.arange(batch * k).reshape(batch, k)
        live = np.flatnonzero(~done)
        beams, tokens, ended = advance_all([states[b] for b in live], cand_tok.reshape(batch, k, -1)[live],
                                           cand_logp.reshape(batch, k, -1)[live])
        rows[live] = live[:, None] * k + beams
        last.reshape(batch, k)[live] = tokens
        done[live] = ended
        if done.all():
            break
        inference.rearrange_kv_cache(rows.reshape(-1))
    inference.release()
    return [state.best() for state in states]


def decode(inference_factory, batch: int, bos: int, eos: int, options: DecodingOptions) -> list[list[int]]:
    """Greedy when ``beam_size == 1``, else beam search; ``inference_factory(repeat)`` builds the Inference
    with every source row repeated ``repeat`` times."""
    if options.beam_size == 1:
        return greedy(inference_factory(1), batch, bos, eos, options.max_new_tokens)
    return beam_search(inference_factory(options.beam_size), batch, bos, eos, options)
