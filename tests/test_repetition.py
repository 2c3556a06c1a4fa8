"""The repetition guard (``models.repetition``): the rule itself, and greedy and beam search applying it the
same way offline (the engine's loop and the shipped models are checked in ``test_engine`` / ``test_checkpoints``)."""

import numpy as np

from models.repetition import MAX_RUN, longest_run, runaway
from service.decoding import DecodingOptions, beam_search, greedy
from service.engine.search import BeamState


def test_runaway_sees_a_piece_of_one_to_four_tokens_repeated_max_run_times_at_the_tail():
    assert MAX_RUN == 4
    assert runaway([9, 7, 7, 7, 7])
    assert not runaway([7, 7, 7])  # three equal digits, as in 111 111: allowed
    assert runaway([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert runaway([5] + [1, 2, 3, 4] * 4)
    assert not runaway([1, 2, 3, 4, 5] * 4)  # a piece of five tokens is not looked for
    assert not runaway([1, 2, 1, 2, 1, 2, 1])
    assert not runaway([])


def test_longest_run_counts_the_most_repeated_piece_anywhere():
    assert longest_run([]) == 0
    assert longest_run([1, 2, 3]) == 1
    assert longest_run([4, 1, 1, 1, 5]) == 3
    assert longest_run(list("Îleslesleslesles")) == 5
    assert longest_run([0, 1, 2, 1, 2, 1, 2, 9]) == 3


class Scripted:
    """An ``Inference`` whose next-token logits follow a script per row: row r at step t prefers ``script[r][t]``
    (then the token after it). Lets the search be tested without a model."""

    def __init__(self, script: list[list[int]], vocab: int = 12) -> None:
        self.script, self.vocab, self.t = script, vocab, 0

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        out = np.zeros((len(tokens), self.vocab), np.float32)
        for r in range(len(tokens)):
            row = self.script[r % len(self.script)]
            best = row[min(self.t, len(row) - 1)]
            out[r, best] = 5.0
            out[r, (best + 1) % self.vocab] = 4.0
        self.t += 1
        return out

    def rearrange_kv_cache(self, rows: np.ndarray) -> None:
        pass

    def release(self) -> None:
        pass


EOS = 3


def test_greedy_ends_a_row_at_its_pieces_fourth_repetition_and_leaves_the_others_alone():
    looping = [5, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7]  # "6 7" for ever
    fine = [5, 6, 7, 8, EOS]
    out = greedy(Scripted([looping, fine]), 2, bos=2, eos=EOS, max_new_tokens=50)
    assert out[0] == [5, 6, 7, 6, 7, 6, 7, 6, 7]  # the 4th "6 7" is kept, and ends it
    assert out[1] == [5, 6, 7, 8]
    assert all(longest_run(o) <= MAX_RUN for o in out)


def test_beam_search_ends_a_hypothesis_at_the_same_point():
    looping = [5] + [6] * 40
    out = beam_search(Scripted([looping]), 1, bos=2, eos=EOS, options=DecodingOptions(beam_size=2, max_new_tokens=40))
    assert out == [[5, 6, 6, 6, 6]]


def test_a_beam_state_takes_the_ended_hypothesis_as_it_would_an_eos():
    state = BeamState(2, EOS)
    for token in (6, 6, 6):
        state.advance_top(np.array([[token, 8], [token, 8]]), np.array([[-0.1, -3.0], [-0.1, -3.0]]))
    assert not state.finished
    state.advance_top(np.array([[6, 8], [6, 8]]), np.array([[-0.1, -3.0], [-0.1, -3.0]]))
    assert [6, 6, 6, 6] in [seq for _, seq in state.finished]


def naive_runaway(tokens, max_run=MAX_RUN, max_piece=4):
    """The definition, spelled out: some piece of 1..max_piece tokens, repeated max_run times, is the tail."""
    return any(len(tokens) >= n * max_run and list(tokens[-n * max_run:]) == list(tokens[-n:]) * max_run
               for n in range(1, max_piece + 1))


def test_the_fast_check_is_the_definition_with_and_without_a_next_token():
    rng = np.random.default_rng(0)
    for _ in range(20_000):
        tokens = [int(t) for t in rng.integers(0, 3, rng.integers(0, 20))]  # 3 symbols: runs are common
        assert runaway(tokens) == naive_runaway(tokens), tokens
        nxt = int(rng.integers(0, 3))
        assert runaway(tokens, nxt) == naive_runaway(tokens + [nxt]), (tokens, nxt)
