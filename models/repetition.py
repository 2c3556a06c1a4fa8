"""The repetition guard: no decoded output repeats one piece more than ``MAX_RUN`` times in a row.

A small model given something outside its domain can fall into a loop (``Îleslesleslesles…``) and run to its
length limit: the client waits for the longest answer there is and gets garbage. Nothing in the translator's or
the captioner's domain repeats a piece (one token, or a group of up to ``MAX_PIECE`` tokens) more than three
times in a row: a number has at most three equal digits between separators (``111 111``); a caption names each
quadrant once. So every decode path applies one rule: **a piece's ``MAX_RUN``-th repetition in a row ends the
output, as an end-of-sequence token would** (the repetition is kept, so what was streamed is what is returned):

* greedy (the engine's loop, ``service.decoding.greedy``, the PyTorch ``greedy_decode``): the sequence ends;
* beam search (``BeamState``, engine and offline): the hypothesis ends, and competes with the others ended.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_RUN = 4  # repetitions of one piece in a row that are allowed
MAX_PIECE = 4  # the longest piece, in tokens, that the guard looks for


def runaway(tokens: Sequence[int], next_token: int | None = None, max_run: int = MAX_RUN, max_piece: int = MAX_PIECE) -> bool:
    """Whether ``tokens`` (followed by ``next_token``, when given, without copying) ends with one piece of
    1..``max_piece`` tokens repeated ``max_run`` times in a row.

    Runs for every row at every decoding step, so it looks only at the tail and rejects at the first mismatch: a
    tail of ``n * max_run`` tokens is such a run exactly when each of its tokens equals the one ``n`` before it.
    About 1 µs for a row that is not repeating itself."""
    size = len(tokens)
    total = size + (next_token is not None)
    # First comparison of every piece length at once: the last token equals the one n before it for some n. Most
    # rows fail it, and then no piece repeats (a beam step asks this of 2k candidates per request).
    if total < max_run:
        return False
    last, before = (tokens[-1], tokens[-1 - max_piece : -1]) if next_token is None else (next_token, tokens[-max_piece:])
    if last not in before:
        return False
    for n in range(1, max_piece + 1):
        span = n * max_run
        if total < span:
            return False
        for back in range(span - n):  # back 0 is the last token
            if next_token is None:
                a, b = tokens[size - 1 - back], tokens[size - 1 - back - n]
            else:
                a = next_token if back == 0 else tokens[size - back]
                b = tokens[size - back - n]
            if a != b:
                break
        else:
            return True
    return False


def longest_run(pieces: Sequence[Any], max_piece: int = MAX_PIECE) -> int:
    """How many times in a row the most repeated piece (a group of up to ``max_piece`` items) occurs anywhere.

    ``longest_run("a b c".split()) == 1``; ``longest_run(list("Îleslesleslesles"))`` counts "les" 5 times.
    """
    best = 1 if pieces else 0
    for n in range(1, max_piece + 1):
        for start in range(n):
            run = 1
            for i in range(start + n, len(pieces) - n + 1, n):
                if pieces[i : i + n] == pieces[i - n : i]:
                    run += 1
                    best = max(best, run)
                else:
                    run = 1
    return best
