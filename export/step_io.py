"""The decoder step's serving interface, added to the exported graph: each row's next-token candidates are chosen
inside the graph, so only ``B × k`` numbers per step come back to the host and the ``(B, V)`` logits never leave the
device the step ran on.

``decoder.onnx`` as ``torch.onnx.export`` writes it returns ``logits (B, V)``. This rewrite adds an input and two
outputs: ``top_k`` ``(1,)`` int64 → ``top_ids`` ``(B, k)`` int64 / ``top_logp`` ``(B, k)`` float: each row's ``k``
largest logits, best first (``TopK``; equal logits: the lower id first, as ``argmax``), and their
log-probabilities (``LogSoftmax`` of the logits, at those ids). Greedy decoding reads ``top_ids[:, 0]``, beam search ``2·K``
candidates. ``logits`` stays an output for the offline search and the parity checks.

The cache's row reorder (beam search, finished rows, newcomers) and its dead columns are *not* gathered in this
graph, though that was tried first: a ``Gather`` of the rows and a ``Slice`` of the columns before attention copy the
whole cache on every step, which made a greedy step of 32 rows 44 % slower on the CPU (1.34 → 1.92 ms, one thread,
process time; an ``If`` that skips them when nothing changed was no cheaper: its branch outputs are copies too).
Rows and columns change on a minority of steps, so ``service.runtime.CacheEditor`` does it between steps, only
when they change: on the decoder's device with a small graph of its own (the cache never visits the host), on the
CPU in place, moving only the rows that change.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

STEP_INPUTS = ("top_k",)
STEP_OUTPUTS = ("top_ids", "top_logp")
STEP_FP32_NODES = ("step_io/top_k", "step_io/log_softmax", "step_io/logp")  # kept fp32 in an fp16 export


def has_step_io(model: onnx.ModelProto) -> bool:
    names = {i.name for i in model.graph.input}
    return all(n in names for n in STEP_INPUTS)


def add_step_io(path: str | Path, banned: tuple[int, ...] = (), vocab_size: int | None = None) -> None:
    """Rewrite ``path`` (a decoder step graph) in place with the serving interface above. ``banned``: token ids never
    chosen (an imported checkpoint's single-token ``bad_words_ids``, e.g. Marian's pad): they are left out of the
    candidates but not of the log-probabilities' normaliser, as ``transformers`` does in ``generate``; ``logits``
    stays as the model computes it."""
    model = onnx.load(str(path))
    if has_step_io(model):
        return
    g = model.graph
    float_type = next(o for o in g.output if o.name == "logits").type.tensor_type.elem_type
    g.input.append(helper.make_tensor_value_info("top_k", TensorProto.INT64, [1]))
    ranked = "logits"
    if banned:
        bias = [0.0] * vocab_size
        for token in banned:
            bias[token] = float("-inf")
        g.initializer.append(helper.make_tensor("step_io/banned", float_type, [vocab_size], bias))
        g.node.append(helper.make_node("Add", ["logits", "step_io/banned"], ["step_io/allowed"], name="step_io/ban"))
        ranked = "step_io/allowed"
    g.node.extend([
        helper.make_node("TopK", [ranked, "top_k"], ["step_io/top_logits", "top_ids"], axis=-1, largest=1,
                         sorted=1, name="step_io/top_k"),
        # LogSoftmax, then the candidates' entries: ORT's CPU ReduceLogSumExp cost a B=32 step 0.25-0.5 ms, this ~0
        helper.make_node("LogSoftmax", ["logits"], ["step_io/logp_all"], axis=-1, name="step_io/log_softmax"),
        helper.make_node("GatherElements", ["step_io/logp_all", "top_ids"], ["top_logp"], axis=1, name="step_io/logp"),
    ])
    g.output.extend([
        helper.make_tensor_value_info("top_ids", TensorProto.INT64, ["batch", "k"]),
        helper.make_tensor_value_info("top_logp", float_type, ["batch", "k"]),
    ])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
