"""Between two decoding steps, the KV cache's rows and columns change where the cache lives.

After a step the cache is what the step returned (``present.*``: OrtValues on the decoder's device). Before the next
one, some rows may have to continue from other rows (beam search), finished rows may be dropped (compaction), rows
may be added (newcomers), and leading columns no row uses any more may be dropped. ``CacheEditor`` applies such an
edit, described as ``rows`` (for each row of the next step, the cache row it continues from) and ``offset``
(leading columns dropped):

* on a GPU (or wherever ``in_place`` is off): one run of a small graph on the decoder's provider (``Gather`` of the
  rows, ``Slice`` of the columns, for every cache tensor), through IOBinding, so the cache never visits the host;
* on the CPU: in place, through numpy views of the OrtValues (they share memory), copying only the rows that
  change; dropped columns are a view.

Most steps change nothing and cost nothing here. (Gathering inside the decoder graph on every step, the first
design, copied the whole cache each step: a greedy step of 32 rows was 44 % slower on the CPU; ``export/step_io.py``.)
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

ELEMENT = {np.dtype(np.float32): 1, np.dtype(np.float16): 10}  # onnx TensorProto element types


def rows_of(value) -> int:
    """The number of rows (first dimension) of a cache tensor: an array or an OrtValue on any device."""
    return value.shape[0] if isinstance(value, np.ndarray) else value.shape()[0]


def host_view(value) -> np.ndarray:
    """A numpy array over ``value``'s memory (a CPU OrtValue, or already an array)."""
    return value.numpy() if isinstance(value, ort.OrtValue) else value


def edit_in_place(past: list, rows: np.ndarray | None, offset: int) -> list[np.ndarray]:
    """The CPU edit: rows that continue from another row are overwritten in place (the right side is gathered into
    a temporary first, so swaps and duplicates are safe); a different row count is one gather; columns are a view."""
    arrays = [host_view(v) for v in past]
    if rows is not None and len(arrays):
        n = arrays[0].shape[0]
        if len(rows) == n:
            moved = np.flatnonzero(rows != np.arange(n))
            if len(moved):
                for a in arrays:
                    a[moved] = a[rows[moved]]
        else:
            arrays = [a[rows] for a in arrays]
    if offset:
        arrays = [a[:, :, offset:] for a in arrays]
    return arrays


def _edit_graph(tensors: int, element: int) -> bytes:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Constant", [], ["axis2"], value=helper.make_tensor("axis2", TensorProto.INT64, [1], [2])),
             helper.make_node("Constant", [], ["end"], value=helper.make_tensor("end", TensorProto.INT64, [1], [2**62]))]
    inputs = [helper.make_tensor_value_info(f"cache.{i}", element, None) for i in range(tensors)]
    outputs = [helper.make_tensor_value_info(f"edited.{i}", element, None) for i in range(tensors)]
    for i in range(tensors):
        nodes += [helper.make_node("Gather", [f"cache.{i}", "rows"], [f"rows.{i}"], axis=0),
                  helper.make_node("Slice", [f"rows.{i}", "offset", "end", "axis2"], [f"edited.{i}"])]
    inputs += [helper.make_tensor_value_info("rows", TensorProto.INT64, [None]),
               helper.make_tensor_value_info("offset", TensorProto.INT64, [1])]
    graph = helper.make_graph(nodes, "edit_cache", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


class CacheEditor:
    """Applies ``(rows, offset)`` edits to a cache of ``tensors`` arrays of ``float_type``: in place on the CPU, by
    a graph on the decoder's device otherwise (``in_place=False`` runs the graph on the CPU too, for tests)."""

    def __init__(self, tensors: int, float_type, providers: list[str], device: str, device_id: int = 0,
                 in_place: bool | None = None) -> None:
        self.tensors, self.device, self.device_id = tensors, device, device_id
        self.in_place = device == "cpu" if in_place is None else in_place
        self.session = None
        if not self.in_place:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            self.session = ort.InferenceSession(_edit_graph(tensors, ELEMENT[np.dtype(float_type)]), sess_options=so,
                                                providers=providers)

    def __call__(self, past: list, rows: np.ndarray | None, offset: int) -> list:
        if rows is None and not offset:
            return past
        if self.in_place:
            return edit_in_place(past, rows, offset)
        n = rows_of(past[0]) if past else 0
        binding = self.session.io_binding()
        for i, value in enumerate(past):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(f"cache.{i}", np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(f"cache.{i}", value)
        binding.bind_cpu_input("rows", np.arange(n, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64))
        binding.bind_cpu_input("offset", np.array([offset], dtype=np.int64))
        for i in range(len(past)):
            binding.bind_output(f"edited.{i}", self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return list(binding.get_outputs())
