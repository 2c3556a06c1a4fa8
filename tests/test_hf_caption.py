"""export/hf_caption.py: a tiny ViT + GPT-2 VisionEncoderDecoderModel (random weights, built with transformers
itself: tests/hfkit.py) imported into the shipped captioner's graph contract, fused, and equal to transformers."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers", reason="transformers is the [hf] extra; `make test` installs it")

from export.hf import UnsupportedCheckpoint, import_checkpoint
from service.contract import CaptionJob
from service.decoding import DecodingOptions
from service.generator import CaptionerHost
from service.runtime import EncoderDecoderRuntime, RuntimeOptions
from tests.hfkit import tiny_captioner


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    source = tiny_captioner(tmp_path_factory.mktemp("hf") / "captioner")
    out = tmp_path_factory.mktemp("repo")
    config = import_checkpoint(source, "scenes", out)
    return source, out / "scenes" / "1", config


def names(session, which: str) -> list[str]:
    return sorted(x.name for x in getattr(session, f"get_{which}")())


def test_a_captioner_is_imported_in_the_shipped_captioners_contract_with_fused_attention(imported, repo):
    _, directory, config = imported
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "decoder.onnx", "encoder.onnx", "tokenizer.json"]
    assert json.loads((directory / "config.json").read_text()) == config
    assert config["task"] == "captioning" and config["architecture"] == "VisionEncoderDecoderModel"
    assert config["fused_attention"] == {"encoder.onnx": {"attention": 2, "softmax": 0}, "decoder.onnx": {"attention": 4, "softmax": 0}}
    assert config["quality"]["greedy_identical_to_generate"] == "6/6" and config["quality"]["max_abs_logit_diff_vs_transformers"] <= 1e-4
    assert config["processing"]["size"] == [32, 32] and config["processing"]["mean"] == pytest.approx([0.5, 0.4, 0.3])
    assert config["encoder"]["grid"] == 4 and config["encoder"]["patches"] == 17 and config["decoder"]["max_len"] == 40
    ours, shipped = EncoderDecoderRuntime(directory), EncoderDecoderRuntime(repo / "captioner" / "1")
    for which in ("inputs", "outputs"):  # the same graph interface as the shipped captioner's (other sizes)
        assert names(ours.decoder, which) == names(shipped.decoder, which)
        assert names(ours.encoder, which) == names(shipped.encoder, which)
    kv, mask = ours.encode(np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32))
    assert kv[0].shape == (3, 2, 17, 24) and mask.shape == (3, 17) and mask.all()  # 2 heads × 24: GPT-2's hidden 48


@pytest.mark.parametrize("beams", [1, 4])
def test_captions_from_the_serving_engine_are_generates_on_other_pictures(imported, beams):
    """Other pictures than the import's own check, through the host that serves the model (its decoding engine, its
    tokenizer): the text and length of ``generate(num_beams=1 or 4)``'s, decoded by transformers."""
    import asyncio

    import torch
    from transformers import AutoTokenizer, VisionEncoderDecoderModel

    source, directory, config = imported
    model, tokenizer = VisionEncoderDecoderModel.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)
    pixels = np.random.default_rng(7).integers(0, 256, (10, 3, 32, 32)).astype(np.float32)
    p = config["processing"]
    mean, std = (np.asarray(p[k], np.float32).reshape(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        generated = model.generate(pixel_values=torch.from_numpy((pixels * p["rescale_factor"] - mean) / std),
                                   num_beams=beams, do_sample=False, max_new_tokens=40)
    eos = config["special_tokens"]["eos"]
    lengths = [len(row[: row.index(eos)] if eos in row else row) for row in generated[:, 1:].tolist()]
    host = CaptionerHost(directory, RuntimeOptions(), name="scenes")
    try:
        answer = asyncio.run(host.caption(CaptionJob(pixels / 255.0, DecodingOptions(beam_size=beams, max_new_tokens=40))))
    finally:
        host.stop()
    assert answer["captions"] == [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    assert answer["tokens"] == lengths  # EOS not counted
    assert len(set(answer["captions"])) > 1 and min(lengths) < 40 and max(lengths) == 40


def test_what_is_not_supported_is_named(tmp_path):
    with pytest.raises(UnsupportedCheckpoint, match="has a bert decoder .supported: gpt2.: not supported"):
        import_checkpoint(tiny_captioner(tmp_path / "bert", decoder="bert"), "m", tmp_path / "repo")
    source = tiny_captioner(tmp_path / "gpt2")
    (source / "tokenizer.json").unlink()
    with pytest.raises(UnsupportedCheckpoint, match="no tokenizer.json"):
        import_checkpoint(source, "m", tmp_path / "repo")
    assert not (tmp_path / "repo" / "m" / "1").exists()  # nothing written
