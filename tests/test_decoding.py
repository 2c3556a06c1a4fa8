"""Greedy and beam search over the Inference interface, on a toy model and on both real backends."""

import math

import numpy as np
import pytest
import torch

from models import checkpoint
from models.reference import TorchInference
from service.decoding import DecodingOptions, beam_search, decode, greedy
from service.runtime import EncoderDecoderRuntime

BOS, EOS, A, B = 2, 3, 4, 5


class ToyInference:
    """Next-token distributions chosen so that greedy is not optimal:
    after BOS: A 0.6, B 0.4;  after A: B 0.36, A 0.34, EOS 0.30;  after A B / B / anything else: EOS 0.99."""

    def __init__(self, rows):
        self.prefixes = [[] for _ in range(rows)]
        self.calls = 0

    def logits(self, tokens):
        self.calls += 1
        out = np.full((len(tokens), 6), 1e-9)
        for i, t in enumerate(tokens):
            p = self.prefixes[i] = self.prefixes[i] + [int(t)]
            seq = p[1:]
            if seq == []:
                out[i, A], out[i, B] = 0.6, 0.4
            elif seq == [A]:
                out[i, B], out[i, A], out[i, EOS] = 0.36, 0.34, 0.30
            else:
                out[i, EOS], out[i, A] = 0.99, 0.01
        return np.log(out)

    def rearrange_kv_cache(self, rows):
        self.prefixes = [list(self.prefixes[r]) for r in rows]

    def release(self):
        self.prefixes = None


def test_greedy_takes_the_locally_best_token():
    assert greedy(ToyInference(1), 1, BOS, EOS, 10) == [[A, B]]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_finds_the_better_sequence(length_penalty):
    # greedy: 0.6 * 0.36 * 0.99 = 0.214 ; beam: B EOS = 0.4 * 0.99 = 0.396
    opts = DecodingOptions(beam_size=2, max_new_tokens=10, length_penalty=length_penalty)
    assert beam_search(ToyInference(2), 1, BOS, EOS, opts) == [[B]]
    assert math.log(0.4 * 0.99) > math.log(0.6 * 0.36 * 0.99)


def test_decode_dispatches_and_beam_one_is_greedy():
    assert decode(lambda r: ToyInference(r), 1, BOS, EOS, DecodingOptions(beam_size=1)) == [[A, B]]
    assert decode(lambda r: ToyInference(r), 1, BOS, EOS, DecodingOptions(beam_size=3)) == [[B]]


def test_max_new_tokens_caps_output():
    assert greedy(ToyInference(1), 1, BOS, EOS, 1) == [[A]]
    assert beam_search(ToyInference(2), 1, BOS, EOS, DecodingOptions(beam_size=2, max_new_tokens=1)) in ([[A]], [[B]])


def test_rows_finish_at_different_steps():
    class Staggered(ToyInference):
        def logits(self, tokens):  # row i emits i tokens of A, then EOS
            self.calls += 1
            out = np.full((len(tokens), 6), -20.0)
            for i in range(len(tokens)):
                self.prefixes[i].append(int(tokens[i]))
                out[i, EOS if len(self.prefixes[i]) > i else A] = 0.0
            return out

    inf = Staggered(3)
    assert greedy(inf, 3, BOS, EOS, 10) == [[], [A], [A, A]]
    assert inf.calls == 3  # stops as soon as the last row is done


@pytest.mark.parametrize("bad", [{"beam_size": 0}, {"beam_size": 9}, {"max_new_tokens": 0}, {"max_new_tokens": 257}])
def test_options_are_validated(bad):
    with pytest.raises(ValueError):
        DecodingOptions(**bad)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_same_search_on_pytorch_and_onnx_runtime(repo, beam_size):
    model, tok = checkpoint.load("translator")
    texts = ["Monday, June 2, 1980", "seven hundred and twelve", "We need 3.5 kilograms.", "She speaks Japanese."]
    ids = [tok.encode(t) + [EOS] for t in texts]
    src = np.zeros((len(ids), max(map(len, ids))), dtype=np.int64)
    for i, r in enumerate(ids):
        src[i, : len(r)] = r
    opts = DecodingOptions(beam_size=beam_size, max_new_tokens=64)
    rt = EncoderDecoderRuntime(repo / "translator" / "1")
    ort_out = rt.generate(src, src != 0, opts)
    memory, mask = model.encode(torch.from_numpy(src))
    cross = model.decoder.cross_kv(memory)

    def torch_factory(repeat):
        idx = torch.arange(len(texts)).repeat_interleave(repeat)
        return TorchInference(model.decoder, [(k[idx], v[idx]) for k, v in cross], mask[idx])

    torch_out = decode(torch_factory, len(texts), BOS, EOS, opts)
    assert ort_out == torch_out
    assert [tok.decode(t) for t in ort_out] == ["lundi 2 juin 1980", "sept cent douze", "Il nous faut 3,5\u00a0kilogrammes.", "Elle parle japonais."]


def test_an_interrupted_search_stops_at_the_next_step(repo):
    from service.runtime import Interrupted

    _, tok = checkpoint.load("translator")
    src = np.array([tok.encode("Monday, June 2, 1980") + [EOS]], dtype=np.int64)
    rt = EncoderDecoderRuntime(repo / "translator" / "1")
    asked = []
    with pytest.raises(Interrupted):
        rt.generate(src, src != 0, DecodingOptions(beam_size=4), interrupted=lambda: asked.append(1) or len(asked) > 3)
    assert len(asked) == 4  # three steps ran, the fourth was refused
    assert rt.generate(src, src != 0, DecodingOptions(beam_size=4), interrupted=lambda: False) == rt.generate(
        src, src != 0, DecodingOptions(beam_size=4))


def test_cross_attention_maps_have_the_right_shape_and_rows_sum_to_one():
    from models.reference import cross_attention_maps

    model, tok = checkpoint.load("translator")
    rows = [tok.encode("She speaks German.") + [EOS], tok.encode("nine") + [EOS]]
    src = torch.zeros((2, max(map(len, rows))), dtype=torch.long)
    for i, r in enumerate(rows):
        src[i, : len(r)] = torch.tensor(r)
    outputs = model.generate(src)
    maps = cross_attention_maps(model, src, outputs, BOS)
    for m, out, r in zip(maps, outputs, rows):
        assert m.shape == (len(out), len(r))  # padding columns dropped
        np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-5)


def test_caption_words_attend_to_their_quadrant():
    from models.data import digits as D
    from models.reference import cross_attention_maps

    model, tok = checkpoint.load("captioner")
    canvases, captions, layouts = D.make_scenes(D.digit_splits()["test"], 200, seed=5)
    pick = [i for i, lay in enumerate(layouts) if len(lay) == 2][:40]
    images = torch.from_numpy(canvases[pick]).float()[:, None] / 255
    outputs = model.generate(images)
    maps = cross_attention_maps(model, images, outputs, BOS)
    grid = model.config.image_size // model.config.patch_size
    hits = total = 0
    for m, out, i in zip(maps, outputs, pick):
        pieces = tok.pieces(out)
        for row, piece in enumerate(pieces):
            word = piece.lstrip("\u2581")
            if word in D.WORDS:  # a digit word: which patch did it look at hardest?
                r, c = divmod(int(m[row].argmax()), grid)
                quadrant = (r // (grid // 2)) * 2 + c // (grid // 2)
                hits += layouts[i].get(quadrant) == D.WORDS.index(word)
                total += 1
    assert total >= 60 and hits / total >= 0.95, (hits, total)  # measured: 218/218 on 109 scenes
