"""VisionEncoderDecoderModel (a ViT encoder, a GPT-2 decoder with cross-attention) → the shipped captioner's graph
contract, checked against ``transformers``.

The graphs take the same inputs and give the same outputs as the shipped captioner's (``export/onnx.py``):
``encoder.onnx`` ``images`` (pixel values / 255, N × C × H × W; the checkpoint's rescale and normalisation are in the
graph, as for an imported classifier) → ``cross.{i}.key/value`` (each decoder layer's cross-attention keys and values,
computed once per image), ``decoder.onnx`` one step (``input_ids``, ``position_ids``, ``self_mask``, ``cross_mask``,
``past_key_values.*``, ``cross.*`` → ``logits``, ``present.*``, plus the in-graph top-k of ``export/step_io.py``).
The ViT runs as ``transformers`` writes it, with PyTorch's fused attention; the GPT-2 step is written here from the
checkpoint's own modules (its pre-norm blocks, ``Conv1D`` projections, learned positions, tied head) with the same
fused attention, so that every attention is one ``Attention`` node.

What is checked before anything is written (``check_parity``), on random images normalised the processor's way:
- the decoder's logits at every step against ``transformers``' forward on the same prefix, within 1e-4 (fp32);
- greedy tokens from the graphs against ``generate(num_beams=1, do_sample=False)``, token for token.

The decoder's tokenizer travels with the model as ``tokenizer.json`` (read when serving by the ``tokenizers`` library,
``service/tokenizers.py``); ``config.json`` names it with the special ids.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from export.hf_marian import _merge, _split
from export.onnx import OPSET, ExportError, check_fused, export_graph
from export.step_io import add_step_io
from service.runtime import kv_names

PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 6
PARITY_NEW_TOKENS = 12
ENCODERS = ("vit",)
DECODERS = ("gpt2",)


def supported(source: Path, model: nn.Module) -> None:
    from export.hf import UnsupportedCheckpoint

    enc, dec = model.config.encoder, model.config.decoder
    problems = []
    if enc.model_type not in ENCODERS:
        problems.append(f"a {enc.model_type} encoder (supported: {', '.join(ENCODERS)})")
    if dec.model_type not in DECODERS:
        problems.append(f"a {dec.model_type} decoder (supported: {', '.join(DECODERS)})")
    elif not getattr(dec, "add_cross_attention", False):
        problems.append("a decoder without cross-attention")
    if getattr(dec, "cross_attention_hidden_size", None) is not None:
        problems.append("cross_attention_hidden_size")
    if not (source / "tokenizer.json").exists():
        problems.append("no tokenizer.json (save the decoder's fast tokenizer with save_pretrained)")
    for name in ("decoder_start_token_id", "eos_token_id"):
        if getattr(model.config, name, None) is None and getattr(model.generation_config, name, None) is None:
            problems.append(f"no {name}")
    if problems:
        raise UnsupportedCheckpoint(f"{source}: this VisionEncoderDecoderModel has {'; '.join(problems)}: not supported")


def special_ids(model: nn.Module) -> dict[str, int]:
    """What generation starts from and stops at, as ``generate()`` reads them (the generation config first)."""
    g, c = model.generation_config, model.config

    def first(name: str) -> int | None:
        for where in (g, c, c.decoder):
            value = getattr(where, name, None)
            if value is not None:
                return int(value[0] if isinstance(value, list) else value)
        return None

    eos = first("eos_token_id")
    return {"bos": first("decoder_start_token_id"), "eos": eos, "pad": first("pad_token_id") if first("pad_token_id") is not None else eos}


def scaling(attention: nn.Module) -> float:
    """GPT-2's attention scale: 1/√d_head unless ``scale_attn_weights`` is off, divided by the layer's number with
    ``scale_attn_by_inverse_layer_idx``."""
    scale = attention.head_dim ** -0.5 if attention.scale_attn_weights else 1.0
    return scale / (attention.layer_idx + 1) if attention.scale_attn_by_inverse_layer_idx else scale


class CaptionEncoderGraph(nn.Module):
    """images (pixel values / 255) → the checkpoint's normalisation → ViT → every decoder layer's cross K/V."""

    def __init__(self, model: nn.Module, processing: dict[str, Any]) -> None:
        super().__init__()
        self.encoder, self.proj = model.encoder, getattr(model, "enc_to_dec_proj", None)
        self.blocks, self.heads = model.decoder.transformer.h, model.config.decoder.n_head
        scale = 255.0 * processing["rescale_factor"]
        std = torch.tensor(processing["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("gain", scale / std)
        self.register_buffer("shift", torch.tensor(processing["mean"], dtype=torch.float32).view(1, -1, 1, 1) / std)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = self.encoder(pixel_values=images * self.gain - self.shift).last_hidden_state
        if self.proj is not None:
            x = self.proj(x)
        pairs = [block.crossattention.c_attn(x).split(x.shape[-1], dim=2) for block in self.blocks]
        return tuple(_split(k, self.heads) for k, _ in pairs) + tuple(_split(v, self.heads) for _, v in pairs)


class GPT2DecoderStepGraph(nn.Module):
    """One GPT-2 step with cross-attention, in the shipped captioner's contract (``export/onnx.py``'s
    ``DecoderStepGraph``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.gpt, self.lm_head = model.decoder.transformer, model.decoder.lm_head
        self.heads = model.config.decoder.n_head

    def forward(self, input_ids, position_ids, self_mask, cross_mask, past_k, past_v, cross_k, cross_v):
        g, h = self.gpt, self.heads
        x = g.wte(input_ids) + g.wpe(position_ids)  # (B, 1, D)
        self_keep, cross_keep = self_mask[:, None, None, :], cross_mask[:, None, None, :]
        present_k, present_v = [], []
        for i, block in enumerate(g.h):
            a = block.attn
            q, k, v = a.c_attn(block.ln_1(x)).split(x.shape[-1], dim=2)
            k, v = torch.cat([past_k[i], _split(k, h)], dim=2), torch.cat([past_v[i], _split(v, h)], dim=2)
            present_k.append(k)
            present_v.append(v)
            o = F.scaled_dot_product_attention(_split(q, h), k, v, attn_mask=self_keep, scale=scaling(a))
            x = x + a.c_proj(_merge(o))
            c = block.crossattention
            q = c.q_attn(block.ln_cross_attn(x))
            o = F.scaled_dot_product_attention(_split(q, h), cross_k[i], cross_v[i], attn_mask=cross_keep, scale=scaling(c))
            x = x + c.c_proj(_merge(o))
            x = x + block.mlp(block.ln_2(x))
        logits = self.lm_head(g.ln_f(x))
        return (logits[:, -1],) + tuple(present_k) + tuple(present_v)


def export_graphs(model: nn.Module, processing: dict[str, Any], directory: Path) -> dict[str, Any]:
    enc, dec = model.config.encoder, model.config.decoder
    n, heads = dec.n_layer, dec.n_head
    d_head = dec.n_embd // heads
    batch = Dim("batch", min=1, max=1024)
    enc_path, dec_path = directory / "encoder.onnx", directory / "decoder.onnx"
    size = enc.image_size
    export_graph(CaptionEncoderGraph(model, processing), (torch.rand(2, enc.num_channels, size, size),), enc_path,
                 ({0: batch},), ["images"], kv_names("cross", n))
    patches = (size // enc.patch_size) ** 2 + 1  # and the class token
    past = Dim("past", min=0, max=dec.n_positions - 1)
    b, p = 2, 3
    rnd = lambda length: [torch.randn(b, heads, length, d_head) for _ in range(n)]
    args = (torch.randint(0, dec.vocab_size, (b, 1)), torch.full((b, 1), p), torch.ones(b, p + 1, dtype=torch.bool),
            torch.ones(b, patches, dtype=torch.bool), rnd(p), rnd(p), rnd(patches), rnd(patches))
    dyn = ({0: batch}, {0: batch}, {0: batch, 1: past + 1}, {0: batch}, [{0: batch, 2: past}] * n,
           [{0: batch, 2: past}] * n, [{0: batch}] * n, [{0: batch}] * n)
    inputs = ["input_ids", "position_ids", "self_mask", "cross_mask"] + kv_names("past_key_values", n) + kv_names("cross", n)
    export_graph(GPT2DecoderStepGraph(model), args, dec_path, dyn, inputs, ["logits"] + kv_names("present", n))
    add_step_io(dec_path, (), dec.vocab_size)
    return {"encoder.onnx": check_fused(enc_path, enc.num_hidden_layers), "decoder.onnx": check_fused(dec_path, 2 * n)}


def greedy(encoder, decoder, images: np.ndarray, special: dict[str, int], layers: int, steps: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy decoding over the two graphs, one step at a time as the engine feeds them: the tokens after the start
    token (EOS included), and each step's logits."""
    cross = dict(zip((o.name for o in encoder.get_outputs()), encoder.run(None, {"images": images})))
    b, heads, _, d_head = cross["cross.0.key"].shape
    past = {name: np.zeros((b, heads, 0, d_head), np.float32) for name in kv_names("past_key_values", layers)}
    cross_mask = np.ones((b, cross["cross.0.key"].shape[2]), bool)
    tokens = np.full((b, 1), special["bos"], np.int64)
    out, logits_per_step, done = [[] for _ in range(b)], [], np.zeros(b, bool)
    names = [o.name for o in decoder.get_outputs()]
    for step in range(steps):
        result = dict(zip(names, decoder.run(None, {
            "input_ids": tokens, "position_ids": np.full((b, 1), step, np.int64), "self_mask": np.ones((b, step + 1), bool),
            "cross_mask": cross_mask, "top_k": np.array([1], np.int64), **cross, **past})))
        logits_per_step.append(result["logits"])
        nxt = result["top_ids"][:, 0]
        for r in range(b):
            if not done[r]:
                out[r].append(int(nxt[r]))
                done[r] = nxt[r] == special["eos"]
        if done.all():
            break
        tokens = nxt[:, None].astype(np.int64)
        past = {f"past_key_values.{i}.{kv}": result[f"present.{i}.{kv}"] for i in range(layers) for kv in ("key", "value")}
    return out, logits_per_step


def check_parity(directory: Path, model: nn.Module, processing: dict[str, Any], special: dict[str, int]) -> dict[str, Any]:
    from service.runtime import RuntimeOptions, create_session

    rng = np.random.default_rng(0)
    h, w = processing["size"]
    pixels = rng.integers(0, 256, (PARITY_IMAGES, processing["channels"], h, w)).astype(np.float32)
    mean = np.asarray(processing["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(processing["std"], np.float32).reshape(1, -1, 1, 1)
    pixel_values = torch.from_numpy((pixels * processing["rescale_factor"] - mean) / std)  # what the image processor computes
    encoder, decoder = (create_session(directory / f, RuntimeOptions()) for f in ("encoder.onnx", "decoder.onnx"))
    ours, step_logits = greedy(encoder, decoder, pixels / 255.0, special, model.config.decoder.n_layer, PARITY_NEW_TOKENS)
    with torch.no_grad():
        generated = model.generate(pixel_values=pixel_values, num_beams=1, do_sample=False, max_new_tokens=PARITY_NEW_TOKENS)
        reference = model(pixel_values=pixel_values, decoder_input_ids=generated).logits.numpy()  # (B, T, V)
    theirs = []
    for row in generated[:, 1:].tolist():  # after the start token; a finished row is padded after its EOS
        theirs.append(row[: row.index(special["eos"]) + 1] if special["eos"] in row else row)
    if ours != theirs:
        raise ExportError(f"greedy tokens differ from transformers' generate: ours {ours}, theirs {theirs}")
    worst = max(float(np.abs(logits[r] - reference[r, step]).max())
                for step, logits in enumerate(step_logits) for r in range(len(ours)) if step < len(ours[r]))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"decoder logits differ from transformers by {worst:.3g} (tolerance {PARITY_TOLERANCE})")
    return {"max_abs_logit_diff_vs_transformers": worst, "tolerance": PARITY_TOLERANCE,
            "greedy_identical_to_generate": f"{len(ours)}/{len(ours)}", "images": PARITY_IMAGES}


def import_captioner(source: Path, directory: Path, name: str) -> dict[str, Any]:
    from transformers import VisionEncoderDecoderModel

    from export.hf import image_processing

    model = VisionEncoderDecoderModel.from_pretrained(source, attn_implementation="sdpa", use_safetensors=True).eval()
    supported(source, model)
    enc, dec = model.config.encoder, model.config.decoder
    processing = image_processing(source, enc)
    special = special_ids(model)
    fused = export_graphs(model, processing, directory)
    quality = check_parity(directory, model, processing, special)
    shutil.copyfile(source / "tokenizer.json", directory / "tokenizer.json")
    grid = enc.image_size // enc.patch_size
    g = model.generation_config
    return {
        "name": name, "version": 1, "precision": "fp32", "opset": OPSET, "task": "captioning",
        "architecture": "VisionEncoderDecoderModel",
        "source": {"format": "huggingface", "path": str(source.resolve()), "model_type": model.config.model_type,
                   "encoder": enc.model_type, "decoder": dec.model_type},
        # "patches": the class token first, then the grid's patches in reading order (what cross-attention sees)
        "encoder": {"input": "images", "layers": enc.num_hidden_layers, "image_size": enc.image_size,
                    "patch_size": enc.patch_size, "grid": grid, "patches": grid * grid + 1, "class_token": True},
        "decoder": {"layers": dec.n_layer, "heads": dec.n_head, "head_dim": dec.n_embd // dec.n_head, "d_model": dec.n_embd,
                    "max_len": dec.n_positions, "vocab_size": dec.vocab_size},
        "special_tokens": {"pad": special["pad"], "unk": special["pad"], "bos": special["bos"], "eos": special["eos"]},
        "tokenizer": {"kind": "huggingface", "file": "tokenizer.json"},
        "processing": processing,
        # held to transformers' generate(): no repetition guard (the shipped models' own rule, models/repetition.py)
        "generation": {"num_beams": getattr(g, "num_beams", 1), "length_penalty": getattr(g, "length_penalty", 1.0),
                       "max_length": getattr(g, "max_length", None), "stop_on_repetition": False, "beam_rule": "transformers"},
        "fused_attention": fused,
        "quality": quality,
    }
