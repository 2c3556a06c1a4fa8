"""Build the ONNX model repository from the shipped checkpoints and measure it against PyTorch."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from export.onnx import OPSET, ExportError, check_fused, ExportOptions, convert_precision, export_classifier, export_encoder_decoder
from models import checkpoint
from models.data import digits as digit_data
from models.data import text as text_data
from models.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from models.train import parse_caption
from models.translation_eval import translation_scores
from service.decoding import DecodingOptions
from service.runtime import EncoderDecoderRuntime, RuntimeOptions, create_session, select_providers

SPECIAL = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
MODELS = ("classifier", "translator", "captioner")


def _providers(options: ExportOptions) -> RuntimeOptions:
    return RuntimeOptions(providers=tuple(select_providers("CUDAExecutionProvider,CPUExecutionProvider" if options.device == "cuda" else "CPUExecutionProvider")))


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def check_classifier(directory: Path, model: torch.nn.Module, options: ExportOptions) -> dict[str, Any]:
    test = digit_data.digit_splits()["test"]
    images = test.images[:, None].astype(np.float32)  # (N, 1, 8, 8)
    session = create_session(directory / "model.onnx", _providers(options))
    ort_logits = session.run(None, {"images": images})[0].astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(images)).numpy()
    report = {
        "max_abs_logit_diff_vs_pytorch": float(np.abs(ort_logits - ref).max()),
        "accuracy": round(float((ort_logits.argmax(-1) == test.labels).mean()), 4),
        "accuracy_pytorch": round(float((ref.argmax(-1) == test.labels).mean()), 4),
        "n": len(test.labels),
    }
    report["accuracy_delta"] = round(report["accuracy"] - report["accuracy_pytorch"], 4)
    if options.precision == "fp32" and report["max_abs_logit_diff_vs_pytorch"] > 1e-4:
        raise ExportError(f"classifier logits differ from PyTorch by {report['max_abs_logit_diff_vs_pytorch']:.2e} > 1e-4")
    return report


def _compare_generation(rt: EncoderDecoderRuntime, model, inputs: list[np.ndarray], masks: list[np.ndarray | None],
                        torch_inputs: list[torch.Tensor], max_new: int, desc: str) -> tuple[list[list[int]], list[list[int]]]:
    ort_out, torch_out = [], []
    for x, m, tx in tqdm(list(zip(inputs, masks, torch_inputs)), desc=desc, unit="batch", leave=False):
        ort_out += rt.generate(x, m, DecodingOptions(max_new_tokens=max_new))
        torch_out += model.generate(tx, max_new_tokens=max_new)
    return ort_out, torch_out


def check_translator(directory: Path, model, tok, options: ExportOptions) -> dict[str, Any]:
    test = text_data.build_corpus()["test"]
    ids = tok.encode_batch([s for s, _ in test])
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rt = EncoderDecoderRuntime(directory, _providers(options))
    inputs, masks, tinputs, index = [], [], [], []
    for chunk in _batches(len(order), 100):
        rows = [order[i] for i in chunk]
        longest = max(len(ids[r]) for r in rows) + 1
        arr = np.full((len(rows), longest), PAD_ID, dtype=np.int64)
        for j, r in enumerate(rows):
            arr[j, : len(ids[r]) + 1] = ids[r] + [EOS_ID]
        inputs.append(arr)
        masks.append(arr != PAD_ID)
        tinputs.append(torch.from_numpy(arr))
        index += rows
    ort_out, torch_out = _compare_generation(rt, model, inputs, masks, tinputs, 128, "translator parity")
    hyps = [""] * len(test)
    for r, toks in zip(index, ort_out):
        hyps[r] = tok.decode(toks)
    identical = sum(a == b for a, b in zip(ort_out, torch_out))
    ref_hyps = [""] * len(test)
    for r, toks in zip(index, torch_out):
        ref_hyps[r] = tok.decode(toks)
    scores = translation_scores(hyps, [t for _, t in test], False)
    ref_scores = translation_scores(ref_hyps, [t for _, t in test], False)
    report = {
        "greedy_token_identical_to_pytorch": f"{identical}/{len(test)}",
        "bleu": scores["bleu"],
        "bleu_pytorch": ref_scores["bleu"],
        "bleu_delta": round(scores["bleu"] - ref_scores["bleu"], 2),
        "n": len(test),
    }
    if options.precision == "fp32" and identical != len(test):
        raise ExportError(f"translator: ORT greedy differs from PyTorch greedy on {len(test) - identical} test sentences")
    return report


def check_captioner(directory: Path, model, tok, options: ExportOptions) -> dict[str, Any]:
    canvases, captions, layouts = digit_data.make_scenes(digit_data.digit_splits()["test"], 1000, seed=2)
    images = canvases[:, None].astype(np.float32) / 255.0
    rt = EncoderDecoderRuntime(directory, _providers(options))
    chunks = _batches(len(images), 100)
    ort_out, torch_out = _compare_generation(
        rt, model, [images[c.start : c.stop] for c in chunks], [None] * len(chunks),
        [torch.from_numpy(images[c.start : c.stop]) for c in chunks], 40, "captioner parity")
    identical = sum(a == b for a, b in zip(ort_out, torch_out))

    def score(out):
        hyps = [tok.decode(t) for t in out]
        exact = float(np.mean([h == c for h, c in zip(hyps, captions)]))
        digits = [parse_caption(h).get(q) == d for h, lay in zip(hyps, layouts) for q, d in lay.items()]
        return round(exact, 4), round(float(np.mean(digits)), 4)

    (exact, digit_acc), (ref_exact, ref_digit) = score(ort_out), score(torch_out)
    report = {
        "greedy_token_identical_to_pytorch": f"{identical}/{len(images)}",
        "exact_match": exact, "exact_match_pytorch": ref_exact, "exact_match_delta": round(exact - ref_exact, 4),
        "digit_accuracy": digit_acc, "digit_accuracy_pytorch": ref_digit, "n": len(images),
    }
    if options.precision == "fp32" and identical != len(images):
        raise ExportError(f"captioner: ORT greedy differs from PyTorch greedy on {len(images) - identical} test scenes")
    return report


def runtime_config(model, precision: str = "fp32") -> dict[str, Any]:
    """What ``service.runtime.EncoderDecoderRuntime`` needs to drive an encoder/decoder pair."""
    return {"precision": precision, "decoder": _decoder_config(model.config), "special_tokens": SPECIAL}


def _decoder_config(c) -> dict[str, Any]:
    return {"layers": c.decoder_layers, "heads": c.n_heads, "head_dim": c.d_model // c.n_heads,
            "vocab_size": c.vocab_size, "max_len": c.max_len}


def export_model(name: str, out: Path, options: ExportOptions) -> dict[str, Any]:
    directory = out / name / "1"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    model, tok = checkpoint.load(name, fused=True)
    started = time.time()
    config: dict[str, Any] = {"name": name, "version": 1, "precision": options.precision, "opset": OPSET,
                              "model_config": json.loads((checkpoint.CHECKPOINTS / name / "config.json").read_text())["config"]}
    if name == "classifier":
        fused = export_classifier(model, directory)
        c = model.config
        config.update(inputs={"images": {"dtype": "float32", "shape": [-1, 1, c.image_size, c.image_size],
                                         "range": [0.0, 1.0], "note": "light ink on a dark background"}},
                      outputs={"logits": {"dtype": "float32", "shape": [-1, c.num_classes]}},
                      labels=[str(i) for i in range(c.num_classes)])
        graphs = ["model.onnx"]
    else:
        fused = export_encoder_decoder(model, directory, text_source=name == "translator")
        c = model.config
        config.update(decoder=_decoder_config(c), special_tokens=SPECIAL, tokenizer="tokenizer.model")
        if name == "translator":
            config.update(encoder={"input": "input_ids", "layers": c.encoder_layers, "max_source_tokens": c.max_len})
        else:
            config.update(encoder={"input": "images", "layers": c.encoder_layers, "image_size": c.image_size,
                                   "patch_size": c.patch_size, "grid": c.image_size // c.patch_size})
        tok.save(directory)
        graphs = ["encoder.onnx", "decoder.onnx"]
    for g in graphs:
        convert_precision(directory / g, options.precision)
        fused[g] = check_fused(directory / g, fused[g]["attention"])  # conversion must keep attention fused
    config["fused_attention"] = fused
    config["export_seconds"] = round(time.time() - started, 1)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")  # the runtime reads it
    if options.check:
        checker = {"classifier": check_classifier, "translator": check_translator, "captioner": check_captioner}[name]
        args = (directory, model, options) if name == "classifier" else (directory, model, tok, options)
        config["quality"] = {"measured_on": f"{options.device}, test split", **checker(*args)}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def export_repository(out: Path, options: ExportOptions = ExportOptions(), models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    return {name: export_model(name, out, options) for name in models}
