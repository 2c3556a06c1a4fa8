"""One sequence's beam search, a step at a time (numpy only)."""

import numpy as np

from service.engine.search import BeamState, advance_all, log_softmax_top

EOS = 3


def test_log_softmax_top_gives_each_rows_best_tokens_with_their_log_probabilities():
    logits = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32)
    tokens, logp = log_softmax_top(logits, 4)
    full = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
    for r in range(3):
        assert set(tokens[r]) == set(np.argsort(-logits[r])[:4])
        np.testing.assert_allclose(logp[r], full[r, tokens[r]], rtol=1e-5)


def step_logits(preferences: list[dict[int, float]], vocab: int = 8) -> np.ndarray:
    """One row per beam: log-probabilities with the given tokens preferred, the rest tiny."""
    out = np.full((len(preferences), vocab), -20.0, dtype=np.float32)
    for row, prefs in enumerate(preferences):
        for token, p in prefs.items():
            out[row, token] = np.log(p)
    return out


def test_beams_follow_the_best_continuations_and_end_at_eos():
    state = BeamState(2, EOS)
    rows, tokens, done = state.advance(step_logits([{4: 0.6, 5: 0.4}, {6: 1.0}]))  # step 0: only beam 0 is alive
    assert list(rows) == [0, 0] and list(tokens) == [4, 5] and not done
    # beam 0 (after 4) ends; beam 1 (after 5) goes on to 7 with certainty
    rows, tokens, done = state.advance(step_logits([{EOS: 0.9, 7: 0.1}, {7: 1.0}]))
    assert list(rows)[0] == 1 and list(tokens)[0] == 7 and len(state.finished) == 1
    rows, tokens, done = state.advance(step_logits([{EOS: 1.0}, {EOS: 1.0}]))
    assert done and state.best() in ([4], [5, 7])
    # length-normalised: log(.6·.9)/2 = -0.31 against log(.4)/3 = -0.31 ... the search keeps the better of them
    scores = {tuple(seq): score for score, seq in state.finished}
    assert state.best() == list(max(scores, key=scores.get))


def test_a_search_cut_by_its_length_limit_returns_its_best_open_beam():
    state = BeamState(2, EOS)
    state.advance(step_logits([{4: 0.7, 5: 0.3}, {6: 1.0}]))
    assert state.best() == [4]


def test_transformers_rule_ends_a_hypothesis_only_for_an_eos_among_the_k_best():
    """k = 2, so 4 candidates a step. EOS (id 0) ranks third: the engine's rule keeps it as a finished hypothesis;
    transformers' (``eos_in_top_k``: an imported checkpoint's) drops it, and the beams go on with the two best."""
    cand_tok = np.array([[5, 6, 0, 7], [5, 6, 0, 7]])
    cand_logp = np.log(np.array([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]]))
    engine, transformers = BeamState(2, eos=0), BeamState(2, eos=0, eos_in_top_k=True)
    for search in (engine, transformers):
        rows, tokens, _ = search.advance_top(cand_tok, cand_logp)
        assert tokens.tolist() == [5, 6] and rows.tolist() == [0, 0]  # step 0: only the first beam is alive
    assert [f[1] for f in engine.finished] == [[]] and transformers.finished == []
    eos_first = (np.array([[0, 5, 6, 7], [0, 5, 6, 7]]), cand_logp)  # EOS ranks first: both rules end the hypothesis
    BeamState(2, eos=0, eos_in_top_k=True).advance_top(*eos_first)
    ends = BeamState(2, eos=0, eos_in_top_k=True)
    ends.advance_top(*eos_first)
    assert [f[1] for f in ends.finished] == [[]]


def test_many_searches_advanced_at_once_take_the_steps_each_takes_alone():
    """``advance_all`` (the engine's beam requests of one size, every step) against each search's own
    ``advance_top``: random steps over a tiny vocabulary, so EOS, ties, the repetition guard, dead beams and finished
    searches all occur."""
    rng = np.random.default_rng(7)
    for k, rule, n in ((2, False, 6), (4, False, 6), (4, True, 6), (3, False, 6), (4, False, 1)):
        make = lambda: [BeamState(k, EOS, length_penalty=float(rng.choice([0.0, 1.0])), eos_in_top_k=rule) for _ in range(n)]
        alone, together = make(), None
        together = [BeamState(s.k, EOS, s.length_penalty, eos_in_top_k=rule) for s in alone]
        for _ in range(30):
            logits = rng.standard_normal((len(alone) * k, 6)).astype(np.float32) * 3
            logits[rng.random(len(logits)) < 0.1, 4] = 30.0  # some rows sure of one token: the guard ends them
            tokens, logp = log_softmax_top(logits, 2 * k)
            cand_tok, cand_logp = tokens.reshape(len(alone), k, -1), logp.astype(np.float32).reshape(len(alone), k, -1)
            beams, fed, done = advance_all(together, cand_tok, cand_logp)
            for i, state in enumerate(alone):
                b, t, d = state.advance_top(cand_tok[i], cand_logp[i])
                assert list(beams[i]) == list(b) and list(fed[i]) == list(t) and done[i] == d
                assert state.seqs == together[i].seqs and state.finished == together[i].finished
        assert [s.best() for s in alone] == [s.best() for s in together]
        assert any(s.finished for s in alone)
