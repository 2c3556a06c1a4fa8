"""Export the trained models to an ONNX model repository, with fused attention, and check the result.

Layout (one version, ``1``, per model)::

    <out>/classifier/1/model.onnx  config.json
    <out>/translator/1/encoder.onnx  decoder.onnx  config.json  tokenizer.model
    <out>/captioner/1/encoder.onnx   decoder.onnx  config.json  tokenizer.model

* ``encoder.onnx`` returns the cross-attention K/V of every decoder layer (``cross.{i}.key/value``,
  ``(B, H, S, Dh)``), so they are computed once per request, never per step.
* ``decoder.onnx`` is one decoding step: ``input_ids (B, 1)``, ``position_ids (B, 1)``, ``self_mask (B, P+1)``,
  ``cross_mask (B, S)``, ``past_key_values.{i}.key/value (B, H, P, Dh)`` and the cross K/V → ``logits (B, V)``
  and ``present.{i}.key/value (B, H, P+1, Dh)``. Batch, source length and past length are dynamic; the
  first step has ``P = 0``. ``export.step_io`` then adds the serving interface: ``beam_rows`` / ``past_offset``
  (the cache's rows reordered and its dead columns dropped inside the graph) and ``top_k`` → ``top_ids`` /
  ``top_logp`` (each row's best next tokens), so the cache never has to leave the device between steps.

Graphs come from ``torch.onnx.export(dynamo=True, opset_version=23)``, which turns every
``F.scaled_dot_product_attention`` into one ``Attention`` node. Every export then checks itself (timm's
``utils/onnx.py`` does the same): ``onnx.checker``, the number of fused attention nodes (and no ``Softmax``
anywhere: every softmax in these models is inside attention), and ORT-vs-PyTorch parity on the test split.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn
from torch.export import Dim

from export.step_io import STEP_FP32_NODES, add_step_io
from service.runtime import kv_names


OPSET = 23
FUSED_OPS = {("", "Attention"), ("com.microsoft", "MultiHeadAttention")}
PRECISIONS = ("fp32", "fp16", "int8")
FP16_IO = ("past_key_values.", "present.", "cross.")  # graph inputs/outputs that are fp16 in an fp16 export


class ExportError(RuntimeError):
    """An exported graph failed one of its own checks."""


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "fp32"  # fp32 | fp16 (GPU) | int8 (dynamic quantization, CPU)
    device: str = "cpu"  # where the parity/quality checks run: cpu, or cuda (needed for fp16 to be fast)
    check: bool = True  # run the ORT-vs-PyTorch checks on the test splits


# ------------------------------------------------------------------------------------------ graphs


class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)  # (B, 10) logits


class TranslatorEncoderGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> tuple[Tensor, ...]:
        memory, _ = self.model.encode(input_ids)  # (B, S, D)
        cross = self.model.decoder.cross_kv(memory)
        return tuple(k for k, _ in cross) + tuple(v for _, v in cross)


class CaptionerEncoderGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        cross = self.model.decoder.cross_kv(self.model.encode(images))  # per layer (B, H, N, Dh)
        return tuple(k for k, _ in cross) + tuple(v for _, v in cross)


class DecoderStepGraph(nn.Module):
    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder, self.layers = decoder, len(decoder.layers)

    def forward(self, input_ids, position_ids, self_mask, cross_mask, past_k, past_v, cross_k, cross_v):
        n = self.layers
        logits, present, _ = self.decoder(
            input_ids,
            [(cross_k[i], cross_v[i]) for i in range(n)],
            cross_mask[:, None, None, :],  # (B, 1, 1, S)
            [(past_k[i], past_v[i]) for i in range(n)],
            self_mask[:, None, None, :],  # (B, 1, 1, P + 1)
            positions=position_ids,
        )
        return (logits[:, -1],) + tuple(k for k, _ in present) + tuple(v for _, v in present)


def export_graph(module: nn.Module, args: tuple, path: Path, dynamic_shapes: Any, inputs: list[str], outputs: list[str]) -> None:
    log = io.StringIO()  # the exporter narrates every stage on stdout: keep it for errors only
    with warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(
            module.eval(), args, str(path), dynamo=True, opset_version=OPSET, dynamic_shapes=dynamic_shapes,
            input_names=inputs, output_names=outputs, verbose=False, external_data=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def fusion_report(path: str | Path) -> dict[str, int]:
    """Count fused attention nodes and Softmax nodes, in the main graph and any subgraph/function."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    counts = Counter((n.domain or "", n.op_type) for n in nodes)
    return {
        "attention": sum(counts[k] for k in FUSED_OPS),
        "softmax": sum(c for (_, op), c in counts.items() if op == "Softmax"),
    }


def check_fused(path: Path, expected: int, fused: bool = True) -> dict[str, int]:
    """Fail unless ``path`` has exactly ``expected`` fused attention nodes and no Softmax; with ``fused=False``
    (the unfused variant kept for comparisons), exactly ``expected`` Softmax nodes and no fused node."""
    report = fusion_report(path)
    if not fused:
        if report["attention"] or report["softmax"] != expected:
            raise ExportError(f"{path.name}: expected an unfused graph with {expected} Softmax, found {report}")
        return report
    if report["attention"] != expected or report["softmax"]:
        raise ExportError(
            f"{path.name}: expected {expected} fused attention nodes and no Softmax, found {report['attention']} "
            f"fused and {report['softmax']} Softmax: some attention was left decomposed"
        )
    return report


def _is_fused(model: nn.Module) -> bool:
    from models.attention import MultiHeadAttention

    return all(m.fused for m in model.modules() if isinstance(m, MultiHeadAttention))


def export_classifier(model: nn.Module, directory: Path) -> dict[str, Any]:
    c = model.config
    path = directory / "model.onnx"
    export_graph(ClassifierGraph(model), (torch.rand(2, 1, c.image_size, c.image_size),), path,
            ({0: Dim("batch", min=1, max=4096)},), ["images"], ["logits"])
    return {"model.onnx": check_fused(path, c.layers, _is_fused(model))}


def export_encoder_decoder(model: nn.Module, directory: Path, text_source: bool) -> dict[str, Any]:
    c = model.config
    n, heads, d_head = c.decoder_layers, c.n_heads, c.d_model // c.n_heads
    batch, past, src = Dim("batch", min=1, max=1024), Dim("past", min=0, max=c.max_len - 1), Dim("src", min=1, max=1024)
    enc_path, dec_path = directory / "encoder.onnx", directory / "decoder.onnx"
    if text_source:
        enc, enc_args, enc_ds, enc_in = TranslatorEncoderGraph(model), (torch.randint(4, 50, (2, 5)),), ({0: batch, 1: src},), ["input_ids"]
        enc_attn, s = c.encoder_layers, 5
    else:
        enc = CaptionerEncoderGraph(model)
        enc_args, enc_ds, enc_in = (torch.rand(2, 1, c.image_size, c.image_size),), ({0: batch},), ["images"]
        enc_attn, s = c.encoder_layers, (c.image_size // c.patch_size) ** 2
        src = None  # the number of patches is fixed
    export_graph(enc, enc_args, enc_path, enc_ds, enc_in, kv_names("cross", n))
    b, p = 2, 3
    rnd = lambda length: [torch.randn(b, heads, length, d_head) for _ in range(n)]
    args = (torch.randint(4, 20, (b, 1)), torch.full((b, 1), p), torch.ones(b, p + 1, dtype=torch.bool),
            torch.ones(b, s, dtype=torch.bool), rnd(p), rnd(p), rnd(s), rnd(s))
    src_dim = {0: batch} if src is None else {0: batch, 2: src}
    dyn = ({0: batch}, {0: batch}, {0: batch, 1: past + 1}, {0: batch} if src is None else {0: batch, 1: src},
           [{0: batch, 2: past}] * n, [{0: batch, 2: past}] * n, [src_dim] * n, [src_dim] * n)
    inputs = ["input_ids", "position_ids", "self_mask", "cross_mask"] + kv_names("past_key_values", n) + kv_names("cross", n)
    export_graph(DecoderStepGraph(model.decoder), args, dec_path, dyn, inputs, ["logits"] + kv_names("present", n))
    add_step_io(dec_path)  # in-graph cache reorder and top-k (export/step_io.py)
    fused = _is_fused(model)
    return {"encoder.onnx": check_fused(enc_path, enc_attn, fused), "decoder.onnx": check_fused(dec_path, 2 * n, fused)}


# --------------------------------------------------------------------------------------- precision


def convert_precision(path: Path, precision: str) -> None:
    """Rewrite one fp32 graph in place as fp16 or int8 (dynamic quantization of the weights)."""
    if precision == "fp32":
        return
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            # The exporter's value_info annotations trip the quantizer's own shape inference: drop them first.
            model = onnx.load(str(path))
            del model.graph.value_info[:]
            plain, out = Path(tmp) / f"plain_{path.name}", Path(tmp) / path.name
            onnx.save(model, str(plain))
            quantize_dynamic(str(plain), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
            shutil.move(out, path)
        return
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(path))
        io = [i.name for i in model.graph.input] + [o.name for o in model.graph.output]
        # KV caches in fp16 (half the memory and bandwidth of every step), the rest of the interface fp32: images in,
        # logits and log-probabilities out; the step's top-k and normaliser stay fp32 inside too
        keep = [name for name in io if not name.startswith(FP16_IO)]
        model = convert_float_to_float16(model, keep_io_types=keep, node_block_list=list(STEP_FP32_NODES))
        onnx.save(model, str(path))
        return
    raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
