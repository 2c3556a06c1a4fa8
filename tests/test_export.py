"""The ONNX model repository: layout, fused attention, I/O names, parity with PyTorch, precisions."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.onnx import ExportError, ExportOptions, check_fused
from export.repository import export_repository
from models import checkpoint
from service.runtime import EncoderDecoderRuntime

ROOT = Path(__file__).resolve().parents[1]


def independent_inspection(path: Path):
    """What any ONNX user can check without this project's code."""
    model = onnx.load(str(path))
    ops = [(n.domain or "ai.onnx", n.op_type) for n in model.graph.node]
    attention = [op for op in ops if op in {("ai.onnx", "Attention"), ("com.microsoft", "MultiHeadAttention")}]
    return model, ops, attention


def test_repository_layout(repo):
    expected = {
        "classifier/1": {"model.onnx", "config.json"},
        "translator/1": {"encoder.onnx", "decoder.onnx", "config.json", "tokenizer.model"},
        "captioner/1": {"encoder.onnx", "decoder.onnx", "config.json", "tokenizer.model"},
    }
    for sub, files in expected.items():
        assert {p.name for p in (repo / sub).iterdir()} == files


@pytest.mark.parametrize("name,graph,n_attention", [
    ("classifier", "model.onnx", 4), ("translator", "encoder.onnx", 3), ("translator", "decoder.onnx", 6),
    ("captioner", "encoder.onnx", 3), ("captioner", "decoder.onnx", 4),
])
def test_every_attention_is_one_fused_node(repo, name, graph, n_attention):
    model, ops, attention = independent_inspection(repo / name / "1" / graph)
    assert len(attention) == n_attention
    assert not [op for op in ops if op[1] == "Softmax"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 23


@pytest.mark.parametrize("name", ["translator", "captioner"])
def test_encoder_and_decoder_interfaces(repo, name):
    layers = json.loads((repo / name / "1" / "config.json").read_text())["decoder"]["layers"]
    enc = onnx.load(str(repo / name / "1" / "encoder.onnx"))
    dec = onnx.load(str(repo / name / "1" / "decoder.onnx"))
    kv = lambda prefix: {f"{prefix}.{i}.{t}" for i in range(layers) for t in ("key", "value")}
    assert {o.name for o in enc.graph.output} == kv("cross")
    dec_in, dec_out = {i.name for i in dec.graph.input}, {o.name for o in dec.graph.output}
    assert kv("past_key_values") | kv("cross") | {"top_k"} <= dec_in
    assert dec_out == kv("present") | {"logits", "top_ids", "top_logp"}
    past = next(i for i in dec.graph.input if i.name == "past_key_values.0.key")
    dims = [d.dim_param or d.dim_value for d in past.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str)  # dynamic batch and past length


def test_export_reports_exact_parity(repo):
    cfg = {n: json.loads((repo / n / "1" / "config.json").read_text()) for n in ("classifier", "translator", "captioner")}
    assert cfg["classifier"]["quality"]["max_abs_logit_diff_vs_pytorch"] <= 1e-4
    assert cfg["translator"]["quality"]["greedy_token_identical_to_pytorch"] == "2000/2000"  # the whole test split
    assert cfg["captioner"]["quality"]["greedy_token_identical_to_pytorch"] == "1000/1000"
    assert cfg["translator"]["quality"]["bleu"] >= 90


def test_classifier_logits_match_pytorch(repo):
    model, _ = checkpoint.load("classifier")
    x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)  # batch size not seen at export
    got = ort.InferenceSession(str(repo / "classifier/1/model.onnx")).run(None, {"images": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_cached_onnx_decoder_equals_pytorch_recomputing_the_prefix(repo):
    model, tok = checkpoint.load("translator")
    rt = EncoderDecoderRuntime(repo / "translator" / "1")
    rows = [tok.encode("She was born on March 3, 1987.") + [3], tok.encode("forty-two") + [3]]
    src = np.zeros((2, max(map(len, rows))), dtype=np.int64)  # the second row is padded
    for i, r in enumerate(rows):
        src[i, : len(r)] = r
    cross, mask = rt.encode(src, src != 0)
    state = rt.start(cross, mask)
    prefix = np.array([[2, 40, 17, 93, 5, 311, 8], [2, 11, 12, 13, 14, 15, 16]])
    memory, tmask = model.encode(torch.from_numpy(src))
    tcross = model.decoder.cross_kv(memory)
    for t in range(prefix.shape[1]):
        step_logits = state.logits(prefix[:, t])
        with torch.no_grad():  # PyTorch, no cache: the whole prefix again
            full = model.decoder(torch.from_numpy(prefix[:, : t + 1]), tcross, tmask)[0][:, -1].numpy()
        np.testing.assert_allclose(step_logits, full, atol=2e-4, rtol=1e-4)


def test_fusion_check_rejects_a_decomposed_graph(tmp_path):
    from export.onnx import export_classifier
    from models.layers import set_fused

    model, _ = checkpoint.load("classifier")
    set_fused(model, False)  # explicit softmax attention, exported only as a comparison variant
    assert export_classifier(model, tmp_path) == {"model.onnx": {"attention": 0, "softmax": 4}}
    with pytest.raises(ExportError, match="decomposed"):
        check_fused(tmp_path / "model.onnx", 4)  # what every shipped graph must pass


@pytest.mark.parametrize("precision,marker_op", [("int8", "MatMulInteger"), ("fp16", "Cast")])
def test_reduced_precision_export_records_its_quality_delta(tmp_path, precision, marker_op):
    report = export_repository(tmp_path, ExportOptions(precision=precision), models=("classifier",))
    q = report["classifier"]["quality"]
    assert report["classifier"]["precision"] == precision
    assert report["classifier"]["fused_attention"]["model.onnx"] == {"attention": 4, "softmax": 0}  # still fused
    assert abs(q["accuracy_delta"]) <= 0.01 and "max_abs_logit_diff_vs_pytorch" in q
    written = json.loads((tmp_path / "classifier/1/config.json").read_text())
    assert written["quality"]["accuracy_delta"] == q["accuracy_delta"]
    assert marker_op in {n.op_type for n in onnx.load(str(tmp_path / "classifier/1/model.onnx")).graph.node}


def test_export_cli_rejects_cuda_without_a_gpu():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the refusal only applies without it")
    proc = subprocess.run([sys.executable, "-m", "export", "--device", "cuda", "--out", "/nonexistent"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "needs onnxruntime-gpu" in proc.stderr


def test_an_fp16_export_keeps_the_kv_cache_in_fp16_and_the_engine_decodes_it(repo, tmp_path):
    """fp16 for real: the encoder returns and the decoder takes and returns fp16 caches (half the memory and bandwidth
    of every step); images, logits and log-probabilities stay fp32. ONNX Runtime's CPU runs it (casting where it has
    no fp16 kernel), so the engine's outputs can be compared with the fp32 export's here."""
    from service.decoding import DecodingOptions
    from service.engine import DecodeEngine, EngineOptions, Sequence

    export_repository(tmp_path, ExportOptions(precision="fp16", check=False), ("translator",))
    directory = tmp_path / "translator" / "1"
    types = lambda values: {v.name: onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in values}
    enc, dec = onnx.load(str(directory / "encoder.onnx")).graph, onnx.load(str(directory / "decoder.onnx")).graph
    assert set(types(enc.output).values()) == {"FLOAT16"}
    inputs, outputs = types(dec.input), types(dec.output)
    assert all(t == "FLOAT16" for n, t in inputs.items() if n.startswith(("past_key_values.", "cross.")))
    assert all(t == "FLOAT16" for n, t in outputs.items() if n.startswith("present."))
    assert outputs["logits"] == outputs["top_logp"] == "FLOAT"
    rt16, rt32 = EncoderDecoderRuntime(directory), EncoderDecoderRuntime(repo / "translator" / "1")
    assert rt16.float_type == np.float16
    model, tok = checkpoint.load("translator")
    texts = ["Friday, March 14, 2025", "nine hundred and ninety-nine", "She was born on March 3, 1987."]
    sources = [np.array(tok.encode(t) + [3], dtype=np.int64) for t in texts]
    answers = {}
    for name, rt in (("fp16", rt16), ("fp32", rt32)):
        engine = DecodeEngine(rt, EngineOptions(max_batch=8, auto_width=False))
        seqs = engine.submit_all([Sequence(s, 60, beam_size=b) for s in sources for b in (1, 4)])
        while engine.load != (0, 0):
            engine.step()
        answers[name] = [s.future.result() for s in seqs]
    assert answers["fp16"] == answers["fp32"]
    src = np.array([sources[0]])
    assert rt16.generate(src, src != 0, DecodingOptions(max_new_tokens=60)) == [answers["fp32"][0]]
