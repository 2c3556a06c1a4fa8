"""MarianMTModel (OPUS-MT) checkpoints → the shipped translator's graph contract, checked against ``transformers``.

The graphs take the same inputs and give the same outputs as the shipped translator's (``export/onnx.py``):
``encoder.onnx`` ``input_ids`` → ``cross.{i}.key/value`` (each decoder layer's cross-attention keys and values,
computed once per request), ``decoder.onnx`` one step (``input_ids``, ``position_ids``, ``self_mask``, ``cross_mask``,
``past_key_values.*``, ``cross.*`` → ``logits``, ``present.*``, plus the in-graph top-k of ``export/step_io.py``).
They are written here from the checkpoint's own modules (projections, layer norms, embeddings, the sinusoidal
position table, ``final_logits_bias``) with PyTorch's fused attention, so that every attention is one ``Attention``
node; Marian is post-norm (a layer norm after each residual) with a scaled embedding.

What is checked before anything is written (``check_parity``), on the checkpoint's own tokenizer:
- the decoder's logits at every step against ``transformers``' forward on the same prefix, within 1e-4 (fp32);
- greedy tokens from the graphs against ``generate(num_beams=1, do_sample=False)``, token for token.

Tokenization travels with the model: ``source.spm``, ``target.spm`` and ``vocab.json`` are copied beside the graphs
and named in ``config.json`` with the special ids (``decoder_start_token_id`` is Marian's pad).
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

from export.onnx import OPSET, ExportError, check_fused, export_graph
from export.step_io import add_step_io
from service.runtime import kv_names

PARITY_TOLERANCE = 1e-4
PARITY_TEXTS = ("Hello world.", "The cat sits on the mat.", "How are you today?", "Good morning, my friend.",
                "It is raining in Paris.", "I like green apples and red grapes.")
PARITY_NEW_TOKENS = 12
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")
ACTIVATIONS = {"swish": F.silu, "silu": F.silu, "gelu": F.gelu, "relu": F.relu}


def _split(x: Tensor, heads: int) -> Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


class MarianEncoderGraph(nn.Module):
    """input_ids (B, S), padded with the model's pad id → every decoder layer's cross-attention K/V."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        c = model.config
        self.encoder, self.decoder_layers = model.model.encoder, model.model.decoder.layers
        self.pad, self.heads, self.act = c.pad_token_id, c.encoder_attention_heads, ACTIVATIONS[c.activation_function]
        self.decoder_heads = c.decoder_attention_heads

    def forward(self, input_ids: Tensor) -> tuple[Tensor, ...]:
        e = self.encoder
        s = input_ids.shape[1]
        # (B, 1, S, S): a key may be attended unless it is padding (ONNX Runtime's Attention wants the query axis whole)
        keep = (input_ids != self.pad)[:, None, None, :].expand(-1, -1, s, -1)
        positions = torch.arange(s, device=input_ids.device)
        x = e.embed_tokens(input_ids) * e.embed_scale + e.embed_positions.weight[positions]
        for layer in e.layers:
            a = layer.self_attn
            o = F.scaled_dot_product_attention(_split(a.q_proj(x), self.heads), _split(a.k_proj(x), self.heads),
                                               _split(a.v_proj(x), self.heads), attn_mask=keep)
            x = layer.self_attn_layer_norm(x + a.out_proj(_merge(o)))
            x = layer.final_layer_norm(x + layer.fc2(self.act(layer.fc1(x))))
        keys = [_split(layer.encoder_attn.k_proj(x), self.decoder_heads) for layer in self.decoder_layers]
        values = [_split(layer.encoder_attn.v_proj(x), self.decoder_heads) for layer in self.decoder_layers]
        return tuple(keys) + tuple(values)


class MarianDecoderStepGraph(nn.Module):
    """One decoder step in the shipped translator's contract (``export/onnx.py``'s ``DecoderStepGraph``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        c = model.config
        self.decoder, self.lm_head = model.model.decoder, model.lm_head
        self.register_buffer("bias", model.final_logits_bias.detach().clone())
        self.heads, self.act = c.decoder_attention_heads, ACTIVATIONS[c.activation_function]

    def forward(self, input_ids, position_ids, self_mask, cross_mask, past_k, past_v, cross_k, cross_v):
        d, h = self.decoder, self.heads
        x = d.embed_tokens(input_ids) * d.embed_scale + d.embed_positions.weight[position_ids]  # (B, 1, D)
        self_keep, cross_keep = self_mask[:, None, None, :], cross_mask[:, None, None, :]
        present_k, present_v = [], []
        for i, layer in enumerate(d.layers):
            a = layer.self_attn
            k = torch.cat([past_k[i], _split(a.k_proj(x), h)], dim=2)
            v = torch.cat([past_v[i], _split(a.v_proj(x), h)], dim=2)
            present_k.append(k)
            present_v.append(v)
            o = F.scaled_dot_product_attention(_split(a.q_proj(x), h), k, v, attn_mask=self_keep)
            x = layer.self_attn_layer_norm(x + a.out_proj(_merge(o)))
            c = layer.encoder_attn
            o = F.scaled_dot_product_attention(_split(c.q_proj(x), h), cross_k[i], cross_v[i], attn_mask=cross_keep)
            x = layer.encoder_attn_layer_norm(x + c.out_proj(_merge(o)))
            x = layer.final_layer_norm(x + layer.fc2(self.act(layer.fc1(x))))
        logits = self.lm_head(x) + self.bias
        return (logits[:, -1],) + tuple(present_k) + tuple(present_v)


def supported(source: Path, config: Any) -> None:
    from export.hf import UnsupportedCheckpoint

    problems = []
    if config.activation_function not in ACTIVATIONS:
        problems.append(f"activation {config.activation_function}")
    if getattr(config, "normalize_before", False):
        problems.append("pre-norm layers (normalize_before)")
    if getattr(config, "add_layernorm_embedding", False):
        problems.append("an embedding layer norm")
    if getattr(config, "share_encoder_decoder_embeddings", True) is False:
        problems.append("separate source and target vocabularies")
    missing = [f for f in TOKENIZER_FILES if not (source / f).exists()]
    if missing:
        problems.append(f"no {', '.join(missing)} (MarianTokenizer's files)")
    if problems:
        raise UnsupportedCheckpoint(f"{source}: this MarianMTModel has {'; '.join(problems)}: not supported")


def banned_tokens(model: nn.Module) -> tuple[int, ...]:
    """The generation config's single-token ``bad_words_ids`` (OPUS-MT's: its pad); longer ones are refused."""
    from export.hf import UnsupportedCheckpoint

    bad = getattr(model.generation_config, "bad_words_ids", None) or []
    if any(len(ids) != 1 for ids in bad):
        raise UnsupportedCheckpoint(f"bad_words_ids of several tokens are not supported: {bad}")
    return tuple(sorted({ids[0] for ids in bad}))


def export_graphs(model: nn.Module, directory: Path) -> dict[str, Any]:
    c = model.config
    n, heads = c.decoder_layers, c.decoder_attention_heads
    d_head = c.d_model // heads
    positions = c.max_position_embeddings
    batch, past, src = Dim("batch", min=1, max=1024), Dim("past", min=0, max=positions - 1), Dim("src", min=1, max=positions)
    enc_path, dec_path = directory / "encoder.onnx", directory / "decoder.onnx"
    ids = torch.randint(3, c.vocab_size - 1, (2, 5))
    export_graph(MarianEncoderGraph(model), (ids,), enc_path, ({0: batch, 1: src},), ["input_ids"], kv_names("cross", n))
    b, p, s = 2, 3, 5
    rnd = lambda length: [torch.randn(b, heads, length, d_head) for _ in range(n)]
    args = (torch.randint(3, c.vocab_size - 1, (b, 1)), torch.full((b, 1), p), torch.ones(b, p + 1, dtype=torch.bool),
            torch.ones(b, s, dtype=torch.bool), rnd(p), rnd(p), rnd(s), rnd(s))
    src_dim = {0: batch, 2: src}
    dyn = ({0: batch}, {0: batch}, {0: batch, 1: past + 1}, {0: batch, 1: src},
           [{0: batch, 2: past}] * n, [{0: batch, 2: past}] * n, [src_dim] * n, [src_dim] * n)
    inputs = ["input_ids", "position_ids", "self_mask", "cross_mask"] + kv_names("past_key_values", n) + kv_names("cross", n)
    export_graph(MarianDecoderStepGraph(model), args, dec_path, dyn, inputs, ["logits"] + kv_names("present", n))
    add_step_io(dec_path, banned_tokens(model), c.vocab_size)
    return {"encoder.onnx": check_fused(enc_path, c.encoder_layers), "decoder.onnx": check_fused(dec_path, 2 * n)}


def greedy(encoder, decoder, input_ids: np.ndarray, config: Any, steps: int) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy decoding over the two graphs, as the engine feeds them (one step at a time, every row alike until it
    ends): the tokens after the start token, and each step's logits."""
    n = config.decoder_layers
    cross = encoder.run(None, {"input_ids": input_ids})
    b = input_ids.shape[0]
    heads, d_head = config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
    feed = {f"cross.{i}.{kv}": cross[j * n + i] for j, kv in enumerate(("key", "value")) for i in range(n)}
    past = {f"past_key_values.{i}.{kv}": np.zeros((b, heads, 0, d_head), np.float32) for i in range(n) for kv in ("key", "value")}
    tokens = np.full((b, 1), config.decoder_start_token_id, np.int64)
    out, logits_per_step, done = [[] for _ in range(b)], [], np.zeros(b, bool)
    cross_mask = input_ids != config.pad_token_id
    names = [o.name for o in decoder.get_outputs()]
    for step in range(steps):
        result = dict(zip(names, decoder.run(None, {
            "input_ids": tokens, "position_ids": np.full((b, 1), step, np.int64),
            "self_mask": np.ones((b, step + 1), bool), "cross_mask": cross_mask, "top_k": np.array([1], np.int64),
            **feed, **past})))
        logits = result["logits"]
        logits_per_step.append(logits)
        nxt = result["top_ids"][:, 0]  # the graph's own choice (banned tokens left out, as generate() does)
        for r in range(b):
            if not done[r]:
                out[r].append(int(nxt[r]))
                done[r] = nxt[r] == config.eos_token_id
        if done.all():
            break
        tokens = nxt[:, None].astype(np.int64)
        past = {f"past_key_values.{i}.{kv}": result[f"present.{i}.{kv}"] for i in range(n) for kv in ("key", "value")}
    return out, logits_per_step


def check_parity(directory: Path, model: nn.Module, tokenizer: Any) -> dict[str, Any]:
    from service.runtime import RuntimeOptions, create_session

    c = model.config
    batch = tokenizer(list(PARITY_TEXTS), return_tensors="pt", padding=True)
    encoder, decoder = (create_session(directory / f, RuntimeOptions()) for f in ("encoder.onnx", "decoder.onnx"))
    ours, step_logits = greedy(encoder, decoder, batch["input_ids"].numpy(), c, PARITY_NEW_TOKENS)
    with torch.no_grad():
        generated = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=PARITY_NEW_TOKENS)
        reference = model(**batch, decoder_input_ids=generated).logits.numpy()  # (B, T, V), on its own tokens
    theirs = []
    for row in generated[:, 1:].tolist():  # after the start token; a finished row is padded after its EOS
        theirs.append(row[: row.index(c.eos_token_id) + 1] if c.eos_token_id in row else row)
    if ours != theirs:
        raise ExportError(f"greedy tokens differ from transformers' generate: ours {ours}, theirs {theirs}")
    worst = max(float(np.abs(logits[r] - reference[r, step]).max())
                for step, logits in enumerate(step_logits) for r in range(len(ours)) if step < len(ours[r]))
    if not worst <= PARITY_TOLERANCE:
        raise ExportError(f"decoder logits differ from transformers by {worst:.3g} (tolerance {PARITY_TOLERANCE})")
    return {"max_abs_logit_diff_vs_transformers": worst, "tolerance": PARITY_TOLERANCE,
            "greedy_identical_to_generate": f"{len(ours)}/{len(ours)}", "texts": len(PARITY_TEXTS)}


def import_marian(source: Path, directory: Path, name: str) -> dict[str, Any]:
    from transformers import MarianMTModel, MarianTokenizer

    model = MarianMTModel.from_pretrained(source, use_safetensors=True).eval()
    c = model.config
    supported(source, c)
    tokenizer = MarianTokenizer.from_pretrained(source)
    fused = export_graphs(model, directory)
    quality = check_parity(directory, model, tokenizer)
    for f in TOKENIZER_FILES:
        shutil.copyfile(source / f, directory / f)
    return {
        "name": name, "version": 1, "precision": "fp32", "opset": OPSET, "task": "translation",
        "architecture": "MarianMTModel",
        "source": {"format": "huggingface", "path": str(source.resolve()), "model_type": c.model_type},
        "encoder": {"input": "input_ids", "layers": c.encoder_layers, "max_source_tokens": c.max_position_embeddings},
        "decoder": {"layers": c.decoder_layers, "heads": c.decoder_attention_heads, "head_dim": c.d_model // c.decoder_attention_heads,
                    "d_model": c.d_model, "max_len": c.max_position_embeddings, "vocab_size": c.vocab_size},
        # "bos" is what a decoder starts from: Marian's decoder_start_token_id (its pad)
        "special_tokens": {"pad": c.pad_token_id, "unk": tokenizer.unk_token_id, "bos": c.decoder_start_token_id,
                           "eos": c.eos_token_id},
        "tokenizer": {"kind": "marian", "source": "source.spm", "target": "target.spm", "vocab": "vocab.json"},
        # held to transformers' generate(): no repetition guard (the shipped models' own rule, models/repetition.py)
        "generation": {"num_beams": getattr(model.generation_config, "num_beams", 1),
                       "length_penalty": getattr(model.generation_config, "length_penalty", 1.0),
                       "max_length": getattr(model.generation_config, "max_length", None), "stop_on_repetition": False,
                       "beam_rule": "transformers"},
        "fused_attention": fused,
        "quality": quality,
    }
