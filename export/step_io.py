"""The decoder step's serving interface, added to the exported graph: the cache is reordered and the next-token
candidates are chosen inside the graph, so a step's KV cache can stay where the step ran (GPU memory under CUDA)
and only a few numbers per row come back to the host.

``decoder.onnx`` as ``torch.onnx.export`` writes it takes ``past_key_values.*`` ``(B, H, P, Dh)`` and returns
``logits (B, V)`` and ``present.*`` ``(B, H, P + 1, Dh)``. This rewrite adds three inputs and two outputs:

* ``beam_rows`` ``(B,)`` int64: row ``i`` of this step continues from row ``beam_rows[i]`` of the cache it is fed
  (``past_key_values.*`` may have a different number of rows). One ``Gather`` per cache tensor, before attention,
  does what used to be host work: beam search's reorder, dropping finished rows, giving a newcomer a row.
* ``past_offset`` ``(1,)`` int64: leading cache columns no row uses any more are dropped (a ``Slice``), so a batch
  decoding without a pause does not carry every column it ever had.
* ``top_k`` ``(1,)`` int64, and outputs ``top_ids`` ``(B, k)`` int64 / ``top_logp`` ``(B, k)`` float: each row's
  ``k`` largest logits, best first (``TopK``; equal logits: the lower id first, as ``argmax``), and their
  log-probabilities ``logit - logsumexp(logits)``. Greedy decoding reads ``top_ids[:, 0]``, beam search ``2·K``
  candidates; the ``(B, V)`` logits never leave the device. ``logits`` stays an output for the offline search and
  the parity checks.

The rewrite is plain ONNX (opset 23 ``Gather``, ``Slice``, ``TopK``, ``ReduceLogSumExp``): any provider runs it.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

STEP_INPUTS = ("beam_rows", "past_offset", "top_k")
STEP_OUTPUTS = ("top_ids", "top_logp")
PAST = "past_key_values."


def has_step_io(model: onnx.ModelProto) -> bool:
    names = {i.name for i in model.graph.input}
    return all(n in names for n in STEP_INPUTS)


def add_step_io(path: str | Path) -> None:
    """Rewrite ``path`` (a decoder step graph) in place with the serving interface above."""
    model = onnx.load(str(path))
    if has_step_io(model):
        return
    g = model.graph
    del g.value_info[:]  # the exporter's shape annotations name the old cache length: let ORT infer again
    pasts = [i.name for i in g.input if i.name.startswith(PAST)]
    logits = next(o for o in g.output if o.name == "logits")
    float_type = logits.type.tensor_type.elem_type
    for i in g.input:
        if i.name.startswith(PAST):
            i.type.tensor_type.shape.dim[0].dim_param = "cache_rows"  # the step before's rows
            i.type.tensor_type.shape.dim[2].dim_param = "past"
    g.input.extend([
        helper.make_tensor_value_info("beam_rows", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("past_offset", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("top_k", TensorProto.INT64, [1]),
    ])
    const = lambda name, value: helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [value]))
    head = [const("step_io/axis2", 2), const("step_io/end", 2**62)]
    renamed = {}
    for name in pasts:
        rows, cols = f"{name}/rows", f"{name}/cols"
        head.append(helper.make_node("Gather", [name, "beam_rows"], [rows], axis=0, name=f"{name}/gather_rows"))
        head.append(helper.make_node("Slice", [rows, "past_offset", "step_io/end", "step_io/axis2"], [cols],
                                     name=f"{name}/drop_columns"))
        renamed[name] = cols
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    tail = [
        helper.make_node("TopK", ["logits", "top_k"], ["step_io/top_logits", "top_ids"], axis=-1, largest=1,
                         sorted=1, name="step_io/top_k"),
        helper.make_node("ReduceLogSumExp", ["logits", "step_io/last_axis"], ["step_io/lse"], keepdims=1,
                         name="step_io/lse"),
        helper.make_node("Sub", ["step_io/top_logits", "step_io/lse"], ["top_logp"], name="step_io/logp"),
    ]
    head.append(const("step_io/last_axis", -1))
    nodes = head + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    for o in g.output:
        if o.name.startswith("present."):
            o.type.tensor_type.shape.dim[2].dim_param = "present"
    g.output.extend([
        helper.make_tensor_value_info("top_ids", TensorProto.INT64, ["batch", "k"]),
        helper.make_tensor_value_info("top_logp", float_type, ["batch", "k"]),
    ])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
