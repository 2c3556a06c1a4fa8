"""Model shapes, config round-trips through safetensors checkpoints, fused/explicit parity, cached greedy."""

import json

import pytest
import torch

from models import checkpoint
from models.captioner import Captioner, CaptionerConfig
from models.layers import set_fused
from models.repetition import runaway
from models.translator import Translator, TranslatorConfig
from models.vit import ViT, ViTConfig

TINY = {
    "translator": TranslatorConfig(vocab_size=60, d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2, max_len=40),
    "classifier": ViTConfig(d_model=32, n_heads=4, d_ff=64, layers=2),
    "captioner": CaptionerConfig(vocab_size=21, d_model=32, n_heads=4, d_ff=64, encoder_layers=2, decoder_layers=2),
}


def inputs(name):
    torch.manual_seed(0)
    if name == "translator":
        src = torch.randint(4, 60, (3, 9))
        src[1, 6:] = 0  # padding
        return src, torch.randint(4, 60, (3, 7))
    if name == "classifier":
        return (torch.rand(5, 1, 8, 8),)
    return torch.rand(2, 1, 32, 32), torch.randint(4, 21, (2, 6))


@pytest.mark.parametrize("name", list(TINY))
def test_checkpoint_roundtrip(tmp_path, name):
    model = checkpoint.build(name, TINY[name]).eval()
    checkpoint.save(tmp_path, name, model)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model"] == name and meta["config"]["d_model"] == 32
    loaded, tok = checkpoint.load(tmp_path)
    assert tok is None
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs(name)), loaded(*inputs(name)))
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))  # safetensors only


@pytest.mark.parametrize("name", list(TINY))
def test_fused_and_explicit_models_agree(name):
    model = checkpoint.build(name, TINY[name]).eval()
    with torch.no_grad():
        a = model(*inputs(name))
        b = set_fused(model, False)(*inputs(name))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_output_shapes():
    with torch.no_grad():
        assert Translator(TINY["translator"])(*inputs("translator")).shape == (3, 7, 60)
        assert ViT(TINY["classifier"])(*inputs("classifier")).shape == (5, 10)
        assert Captioner(TINY["captioner"])(*inputs("captioner")).shape == (2, 6, 21)
        assert Captioner(TINY["captioner"]).encode(torch.rand(2, 1, 32, 32)).shape == (2, 16, 32)  # 4×4 patches of 8 px


def test_translator_padding_does_not_change_outputs():
    model = Translator(TINY["translator"]).eval()
    src = torch.randint(4, 60, (1, 5))
    padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], 1)
    tgt = torch.randint(4, 60, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), model(padded, tgt), atol=1e-5, rtol=1e-5)


def test_cached_greedy_equals_recomputing_the_prefix():
    torch.manual_seed(1)
    model = Translator(TINY["translator"]).eval()
    src = torch.randint(4, 60, (4, 8))
    cached = model.generate(src, max_new_tokens=12)
    memory, mask = model.encode(src)
    cross = model.decoder.cross_kv(memory)
    for row, hyp in enumerate(cached):
        prefix = [2]
        for _ in range(12):  # no cache: rerun the whole prefix every step
            with torch.no_grad():
                logits = model.decoder(torch.tensor([prefix]), [(k[row : row + 1], v[row : row + 1]) for k, v in cross], mask[row : row + 1])[0]
            nxt = int(logits[0, -1].argmax())
            if nxt == 3:
                break
            prefix.append(nxt)
            if runaway(prefix[1:]):  # the repetition guard ends a row the same way (this random model loops)
                break
        assert hyp == prefix[1:]


def test_greedy_stops_each_row_at_its_own_eos():
    model = Captioner(TINY["captioner"]).eval()
    with torch.no_grad():
        model.decoder.output.bias.fill_(-10)
        model.decoder.output.bias[3] = 10  # EOS always wins
    assert model.generate(torch.rand(3, 1, 32, 32)) == [[], [], []]


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        ViT(ViTConfig(image_size=9, patch_size=2))
