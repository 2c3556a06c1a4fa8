"""Inputs outside the translator's domain: the shipped model may say nonsense there (the README says so), but no
output runs on repeating itself: every decode path (the engine's shared batch, the offline search, PyTorch) ends
a sequence at a piece's ``MAX_RUN``-th repetition (``models.repetition``), and they agree token for token."""

import numpy as np
import pytest
import torch

from models import checkpoint
from models.repetition import MAX_RUN, longest_run
from service.decoding import DecodingOptions
from service.engine import DecodeEngine, EngineOptions, Sequence
from service.runtime import EncoderDecoderRuntime

EOS = 3
OUT_OF_DOMAIN = [
    "Hello, how are you?",
    "The quick brown fox jumps over the lazy dog.",
    "I would like a cup of coffee, please.",
    "Northern Mariana Islands Northern Mariana Islands Northern Mariana Islands",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "1234567890123456789",
    "la la la la la la la la la la la la",
    "Supercalifragilisticexpialidocious",
    "What time is it in Tokyo?",
    "She lives in Paris.",
    "!!!???...,,,;;;",
    "🙂🙂🙂 ✓✓✓ 漢字漢字",
    "The the the the the the the the the the",
    "Islands Islands Islands Islands Islands",
    "one one one one one one one one one one",
    "French French French French French",
    " ".join(["Please translate this long sentence about nothing in particular."] * 3),
]


@pytest.fixture(scope="module")
def translator(repo):
    from models.data.tokenizer import Tokenizer

    return EncoderDecoderRuntime(repo / "translator" / "1"), Tokenizer.load(repo / "translator" / "1")


def padded(tok, texts):
    rows = [tok.encode(t) + [EOS] for t in texts]
    src = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for i, r in enumerate(rows):
        src[i, : len(r)] = r
    return src


@pytest.mark.parametrize("beam", [1, 4])
def test_no_path_runs_on_repeating_itself_and_all_agree(translator, beam):
    rt, tok = translator
    src = padded(tok, OUT_OF_DOMAIN)
    want = rt.generate(src, src != 0, DecodingOptions(beam_size=beam, max_new_tokens=256))
    engine = DecodeEngine(rt, EngineOptions(max_batch=32, auto_width=False))
    seqs = engine.submit_all([Sequence(src[i][src[i] != 0], 256, beam_size=beam, length_penalty=1.0) for i in range(len(src))])
    for _ in range(10_000):
        engine.step()
        if engine.load == (0, 0):
            break
    got = [s.future.result() for s in seqs]
    assert got == want
    assert max(longest_run(t) for t in got) <= MAX_RUN, [tok.decode(t) for t in got if longest_run(t) > MAX_RUN]
    reasons = {s.finish_reason for s in seqs}
    assert "length" not in reasons, [tok.decode(s.future.result()) for s in seqs if s.finish_reason == "length"]
    if beam == 1:
        assert "repetition" in reasons  # the guard is exercised: the model does loop on some of these
        model, _ = checkpoint.load("translator")
        with torch.no_grad():
            reference = model.generate(torch.from_numpy(src), max_new_tokens=256)
        assert reference == want


def test_the_guard_never_cuts_an_in_domain_output(translator):
    """Nothing in the domain repeats a piece MAX_RUN times: the guard leaves every test sentence alone (the
    export already checks these outputs equal PyTorch's; here: no run reaches the limit in the references)."""
    from models.data import text as T

    _, tok = translator
    refs = [tok.encode(t) for _, t in T.build_corpus()["test"]]
    assert max(longest_run(r) for r in refs) < MAX_RUN
