"""export.hf: Hugging Face checkpoints imported into the repository layout, checked against transformers.

The checkpoints are tiny random-weight models built here with ``transformers`` itself and saved with
``save_pretrained`` (no download)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import ViTForImageClassification, ViTImageProcessor

from export.hf import UnsupportedCheckpoint, import_checkpoint
from export.onnx import fusion_report
from service.runtime import create_session
from tests.hfkit import sentences, tiny_marian, tiny_vit

ROOT = Path(__file__).resolve().parents[1]


def test_a_vit_classifier_is_imported_with_fused_attention_and_its_own_processing(tmp_path):
    source = tiny_vit(tmp_path / "hf")
    config = import_checkpoint(source, "pets", tmp_path / "repo")
    version = tmp_path / "repo" / "pets" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["config.json", "model.onnx"]
    assert json.loads((version / "config.json").read_text()) == config
    assert config["task"] == "classification" and config["architecture"] == "ViTForImageClassification"
    assert config["labels"] == ["cat", "dog", "fox"]
    assert config["processing"]["mean"] == pytest.approx([0.5, 0.4, 0.3]) and config["processing"]["std"] == pytest.approx([0.2, 0.25, 0.3])
    assert config["inputs"]["images"]["shape"] == [-1, 3, 32, 32]
    assert fusion_report(version / "model.onnx") == {"attention": 2, "softmax": 0}  # one fused node per layer
    assert {o.name for o in onnx.load(str(version / "model.onnx")).graph.output} == {"logits"}


def test_logits_equal_transformers_through_its_own_image_processor(tmp_path):
    """Images of the model's size through ViTImageProcessor and the transformers model, against the same images
    (pixel values / 255) through the imported graph: within 1e-4, at batch sizes 1 and 7."""
    from PIL import Image

    source = tiny_vit(tmp_path / "hf")
    import_checkpoint(source, "pets", tmp_path / "repo")
    model = ViTForImageClassification.from_pretrained(source).eval()
    processor = ViTImageProcessor.from_pretrained(source)
    session = create_session(tmp_path / "repo" / "pets" / "1" / "model.onnx")
    rng = np.random.default_rng(1)
    for n in (1, 7):
        pixels = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        inputs = processor(images=[Image.fromarray(p) for p in pixels], return_tensors="pt")
        with torch.no_grad():
            reference = model(**inputs).logits.numpy()
        ours = session.run(None, {"images": pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0})[0]
        assert np.abs(ours - reference).max() <= 1e-4, np.abs(ours - reference).max()
        assert (ours.argmax(1) == reference.argmax(1)).all()


def test_the_import_names_what_it_does_not_support(tmp_path):
    source = tiny_vit(tmp_path / "hf")
    config = json.loads((source / "config.json").read_text())

    def with_architecture(name: str) -> Path:
        other = tmp_path / name
        other.mkdir()
        (other / "config.json").write_text(json.dumps(config | {"architectures": [name]}))
        (other / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
        return other

    with pytest.raises(UnsupportedCheckpoint, match="architecture BertForMaskedLM is not supported; supported: "
                                                    "ViTForImageClassification, MarianMTModel, VisionEncoderDecoderModel"):
        import_checkpoint(with_architecture("BertForMaskedLM"), "m", tmp_path / "repo")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsupportedCheckpoint, match="no model.safetensors .found pytorch_model.bin: pickles are never loaded"):
        import_checkpoint(pickled, "m", tmp_path / "repo")
    with pytest.raises(UnsupportedCheckpoint, match="no config.json"):
        import_checkpoint(tmp_path / "empty-dir-that-is-missing", "m", tmp_path / "repo")
    with pytest.raises(UnsupportedCheckpoint, match="a plain directory name"):
        import_checkpoint(source, "../escape", tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("*.onnx"))  # nothing half-written


def test_a_processor_that_disagrees_with_the_model_is_refused(tmp_path):
    source = tiny_vit(tmp_path / "hf")
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(source)
    with pytest.raises(UnsupportedCheckpoint, match="resizes to 64×64 but the model takes 32×32"):
        import_checkpoint(source, "pets", tmp_path / "repo")


def test_the_command_line_imports_and_reports(tmp_path):
    source = tiny_vit(tmp_path / "hf", channels=1, layers=3, mean=(0.5,), std=(0.5,))
    proc = subprocess.run([sys.executable, "-m", "export", "--hf", str(source), "--name", "digits-hf", "--out", str(tmp_path / "repo")],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "digits-hf: ViTForImageClassification" in proc.stdout and "'attention': 3" in proc.stdout
    config = json.loads((tmp_path / "repo" / "digits-hf" / "1" / "config.json").read_text())
    assert config["processing"]["color"] == "L" and config["inputs"]["images"]["shape"] == [-1, 1, 32, 32]
    missing = subprocess.run([sys.executable, "-m", "export", "--hf", str(source)], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--hf needs --name" in missing.stderr


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    source = tiny_marian(tmp_path_factory.mktemp("hf") / "marian")
    out = tmp_path_factory.mktemp("repo")
    return source, out, import_checkpoint(source, "opus", out)


def test_a_marian_model_is_imported_in_the_translators_contract_with_fused_attention(marian):
    _, out, config = marian
    version = out / "opus" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["config.json", "decoder.onnx", "encoder.onnx", "source.spm",
                                                         "target.spm", "vocab.json"]
    assert config["task"] == "translation" and config["special_tokens"]["bos"] == config["special_tokens"]["pad"]
    assert fusion_report(version / "encoder.onnx") == {"attention": 2, "softmax": 0}  # 2 encoder layers
    assert fusion_report(version / "decoder.onnx") == {"attention": 4, "softmax": 0}  # self + cross, 2 layers
    decoder = onnx.load(str(version / "decoder.onnx"))
    names = {i.name for i in decoder.graph.input}
    assert {"input_ids", "position_ids", "self_mask", "cross_mask", "top_k", "past_key_values.1.value", "cross.0.key"} <= names
    assert {o.name for o in decoder.graph.output} >= {"logits", "top_ids", "top_logp", "present.0.key"}
    assert config["quality"]["max_abs_logit_diff_vs_transformers"] <= 1e-4
    assert config["quality"]["greedy_identical_to_generate"] == "6/6"


def test_marian_greedy_tokens_equal_generate_on_other_sentences(marian):
    """Beyond the import's own check: 24 other sentences, in batches of 8 with padding, 20 new tokens each."""
    from transformers import MarianMTModel, MarianTokenizer

    from export.hf_marian import greedy

    source, out, _ = marian
    model, tokenizer = MarianMTModel.from_pretrained(source).eval(), MarianTokenizer.from_pretrained(source)
    encoder, decoder = (create_session(out / "opus" / "1" / f) for f in ("encoder.onnx", "decoder.onnx"))
    texts = sentences(24, seed=7)
    for i in range(0, len(texts), 8):
        batch = tokenizer(texts[i : i + 8], return_tensors="pt", padding=True)
        ours, _ = greedy(encoder, decoder, batch["input_ids"].numpy(), model.config, 20)
        with torch.no_grad():
            generated = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=20)
        theirs = [row[: row.index(0) + 1] if 0 in row else row for row in generated[:, 1:].tolist()]  # EOS is 0
        assert ours == theirs


def test_a_marian_model_without_its_tokenizer_files_is_refused(tmp_path):
    source = tiny_marian(tmp_path / "marian")
    (source / "target.spm").unlink()
    with pytest.raises(UnsupportedCheckpoint, match="no target.spm .MarianTokenizer's files."):
        import_checkpoint(source, "opus", tmp_path / "repo")
