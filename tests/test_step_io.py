"""The decoder's serving interface (``export/step_io.py``) on the exported translator: rows gathered and dead
columns dropped inside the graph, exactly as host numpy would; top-k equal to the host's choice from the logits."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.step_io import STEP_INPUTS, STEP_OUTPUTS, add_step_io, has_step_io
from service.runtime import decoder_feed, kv_names

LAYERS, HEADS, DH = 3, 4, 32


@pytest.fixture(scope="module")
def decoder(repo):
    return ort.InferenceSession(str(repo / "translator" / "1" / "decoder.onnx"), providers=["CPUExecutionProvider"])


def test_the_interface_is_added_once(repo, tmp_path):
    path = tmp_path / "decoder.onnx"
    path.write_bytes((repo / "translator" / "1" / "decoder.onnx").read_bytes())
    before = path.read_bytes()
    add_step_io(path)  # already there: nothing changes
    assert path.read_bytes() == before
    model = onnx.load(str(path))
    assert has_step_io(model) and set(STEP_OUTPUTS) <= {o.name for o in model.graph.output}
    assert set(STEP_INPUTS) <= {i.name for i in model.graph.input}


def test_rows_and_columns_are_chosen_in_the_graph_as_numpy_would(decoder):
    rng = np.random.default_rng(0)
    r, p, s, b, offset = 3, 6, 5, 4, 2
    past = [rng.standard_normal((r, HEADS, p, DH), dtype=np.float32) for _ in range(2 * LAYERS)]
    cross = [rng.standard_normal((b, HEADS, s, DH), dtype=np.float32) for _ in range(2 * LAYERS)]
    rows = np.array([2, 0, 0, 1])  # a reorder, a duplicate (beam), and a different row count than the cache
    tokens, positions = np.array([[5], [6], [7], [8]]), np.full((b, 1), p - offset, dtype=np.int64)
    mask = np.ones((b, p - offset + 1), dtype=bool)
    names = [o.name for o in decoder.get_outputs()]
    got = dict(zip(names, decoder.run(None, decoder_feed(tokens, positions, mask, np.ones((b, s), bool), past, cross,
                                                         rows=rows, past_offset=offset, top_k=7))))
    by_hand = [a[rows][:, :, offset:] for a in past]  # what the host would have done
    want = dict(zip(names, decoder.run(None, decoder_feed(tokens, positions, mask, np.ones((b, s), bool), by_hand, cross))))
    for name in kv_names("present", LAYERS):
        np.testing.assert_array_equal(got[name][:, :, :-1], by_hand[kv_names("present", LAYERS).index(name)])
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)
    logits = got["logits"].astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) + logits.max(-1, keepdims=True)
    assert (got["top_ids"][:, 0] == logits.argmax(-1)).all()
    order = np.argsort(-logits, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(got["top_ids"], order)
    np.testing.assert_allclose(got["top_logp"], np.take_along_axis(logits - lse, order, axis=1), atol=1e-5)
