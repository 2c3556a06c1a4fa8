"""The search of one sequence, one step at a time: greedy (one row) or beam search (K rows).

The engine's loop and the offline ``service.decoding.beam_search`` both advance a ``BeamState`` per source, so
a beam request gives the same tokens whether it decodes alone offline or inside the engine's shared batch.
Numpy only: no ONNX Runtime, no torch.
"""

from __future__ import annotations

import math

import numpy as np

from models.repetition import runaway


def log_softmax_top(logits: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``c`` best tokens and their log-probabilities, best first: ``(tokens (R, c), logp (R, c) float64)``.

    The top ``c`` are selected first (linear time, ``argpartition``) and only they are scored and sorted; the
    normaliser is computed in float64 over the whole row. The engine calls it once per step for every beam row of
    every request (called per request, it was a fifth of a beam-4 batch's time)."""
    logits = logits.astype(np.float32, copy=False)
    c = min(c, logits.shape[1])
    tokens = np.argpartition(-logits, c - 1, axis=1)[:, :c]  # (R, c)
    shifted = logits - logits.max(-1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(-1, keepdims=True, dtype=np.float64))  # (R, 1)
    logp = np.take_along_axis(shifted, tokens, axis=1).astype(np.float64) - lse
    order = np.argsort(-logp, axis=1, kind="stable")
    return np.take_along_axis(tokens, order, axis=1), np.take_along_axis(logp, order, axis=1)


class BeamState:
    """Beam search over one source: ``k`` hypotheses, ``k`` rows of a batch.

    A hypothesis ends when it emits EOS; the ``k`` best ended ones are kept. The search is done once ``k`` have
    ended and no open beam, scored at its current length, beats the worst of those ``k``: no open beam would enter
    them any more (``transformers``' ``BeamHypotheses.is_done`` with ``early_stopping=False``). Comparing with the
    best ended one instead stopped too early: "She speaks Japanese." ended as "Elle parle jais." at beam 4, where
    the search run to its length limit and greedy both give "Elle parle japonais.". Stopping at the first ``k``
    endings lets short hypotheses crowd out a better, longer one. Scores are length-normalised:
    ``sum log p / length ** penalty``.
    """

    def __init__(self, k: int, eos: int, length_penalty: float = 1.0, ignore_eos: bool = False, guard: bool = True,
                 eos_in_top_k: bool = False) -> None:
        self.k, self.eos, self.length_penalty = k, eos, length_penalty
        # transformers' rule (an imported checkpoint's, held to its generate()): an EOS candidate ends a hypothesis
        # only if it ranks among the step's k best candidates; one ranked k..2k is dropped
        self.eos_in_top_k = eos_in_top_k
        self.ignore_eos = ignore_eos  # EngineOptions.ignore_eos: EOS candidates are passed over, the guard is off
        self.guard = guard and not ignore_eos  # EngineOptions.stop_on_repetition
        self.c = 2 * k  # candidates per step: enough to refill k beams after EOS ones
        self.scores = np.full(k, -np.inf)
        self.scores[0] = 0.0  # all beams start identical: only the first is alive at step 0
        self.seqs: list[list[int]] = [[] for _ in range(k)]
        self.finished: list[tuple[float, list[int]]] = []  # (normalised score, tokens), best first, at most k

    def norm(self, length: int) -> float:
        return max(length, 1) ** self.length_penalty

    def advance(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Next-token logits of the ``k`` rows ``(k, V)`` → (for each row, the row it continues from ``(k,)``; the
        token it is fed next ``(k,)``; whether the search is done)."""
        return self.advance_top(*log_softmax_top(logits, self.c))

    def advance_top(self, cand_tok: np.ndarray, cand_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """``advance`` from each row's best candidates, best first (``log_softmax_top``; at least ``2k`` of them).

        The offline search's step (the engine advances its beam requests together, ``advance_all``): the ``2k`` best
        of the ``k × c`` totals are read as Python numbers once (numpy scalars one by one, and ``np.isfinite`` on each,
        took half of its time)."""
        k = self.k
        c = min(self.c, cand_tok.shape[1])
        total = (self.scores[:, None] + cand_logp[:, :c]).reshape(-1)  # (k*c,)
        order = np.argsort(-total, kind="stable")[: 2 * k]
        beams, tokens = self.advance_ranked((order // c).tolist(), total[order].tolist(), cand_tok[:, :c].reshape(-1)[order].tolist())
        return np.array(beams, dtype=np.int64), np.array(tokens, dtype=np.int64), self.done()

    def advance_ranked(self, beams_of: list[int], totals: list[float], tokens_of: list[int]) -> tuple[list[int], list[int]]:
        """The rule itself, on the step's ``2k`` best candidates as Python numbers, best first: each one's beam, total
        score and token → (for each row, the row it continues from; the token it is fed next)."""
        k = self.k
        rows, tokens, scores, seqs = [], [], [], []
        for rank, (beam, score, token) in enumerate(zip(beams_of, totals, tokens_of)):
            if not math.isfinite(score) or (token == self.eos and self.ignore_eos):
                continue
            if token == self.eos and self.eos_in_top_k and rank >= k:
                continue
            if token == self.eos:
                self._ended(score, self.seqs[beam])
                continue
            if self.guard and runaway(self.seqs[beam], token):  # the guard: this ends the hypothesis, as EOS would
                self._ended(score, self.seqs[beam] + [token])
                continue
            if len(rows) < k:
                rows.append(beam)
                tokens.append(token)
                scores.append(score)
                seqs.append(self.seqs[beam] + [token])
        while len(rows) < k:  # fewer live candidates than beams: pad with dead copies
            rows.append(0)
            tokens.append(self.eos)
            scores.append(-math.inf)
            seqs.append(self.seqs[0])
        self.scores, self.seqs = np.array(scores), seqs
        return rows, tokens

    def _ended(self, score: float, tokens: list[int]) -> None:
        """A hypothesis ended with ``score`` (its EOS counted in the length): kept if among the ``k`` best."""
        self.finished.append((score / self.norm(len(tokens) + 1), tokens))
        self.finished = sorted(self.finished, key=lambda f: f[0], reverse=True)[: self.k]

    def done(self) -> bool:
        if len(self.finished) < self.k:
            return False
        best_open = max((s / self.norm(len(q)) for s, q in zip(self.scores.tolist(), self.seqs) if math.isfinite(s)),
                        default=-math.inf)
        return best_open < self.finished[-1][0]

    def best(self) -> list[int]:
        """The best hypothesis: ended ones, and the open beams too (a search cut by its length limit)."""
        candidates = list(self.finished) + [(s / self.norm(len(q)), q) for s, q in zip(self.scores, self.seqs) if np.isfinite(s)]
        return list(max(candidates, key=lambda f: f[0])[1]) if candidates else []


def advance_all(states: list[BeamState], cand_tok: np.ndarray, cand_logp: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """``advance_top`` of many searches of one beam size ``k`` at once (the engine's beam requests, every step):
    candidates ``(R, k, c)`` → (rows each row continues from ``(R, k)``, tokens fed next ``(R, k)``, done per search).

    The same rule as each search's own ``advance_top``, with its array work done once for all ``R`` instead of a
    dozen numpy calls on a few numbers per request and step."""
    r, k = len(states), states[0].k
    if r == 1:  # one request: its own step is cheaper than the stacking below
        beams, tokens, done = states[0].advance_top(cand_tok[0], cand_logp[0])
        return beams[None], tokens[None], [done]
    c = min(states[0].c, cand_tok.shape[2])
    scores = np.stack([s.scores for s in states])  # (R, k) float64
    total = (scores[:, :, None] + cand_logp[:, :, :c]).reshape(r, k * c)
    order = np.argsort(-total, axis=1, kind="stable")[:, : 2 * k]
    totals = np.take_along_axis(total, order, axis=1).tolist()
    tokens_of = np.take_along_axis(cand_tok[:, :, :c].reshape(r, k * c), order, axis=1).tolist()
    beams_of = (order // c).tolist()
    beams, tokens = np.empty((r, k), dtype=np.int64), np.empty((r, k), dtype=np.int64)
    done = []
    for i, state in enumerate(states):
        beams[i], tokens[i] = state.advance_ranked(beams_of[i], totals[i], tokens_of[i])
        done.append(state.done())
    return beams, tokens, done
