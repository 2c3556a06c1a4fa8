"""The decoder's serving interface (``export/step_io.py``) on the exported translator: each row's top-k next tokens
and their log-probabilities chosen in the graph, exactly as the host would choose them from the logits."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.step_io import STEP_INPUTS, STEP_OUTPUTS, add_step_io, has_step_io
from service.runtime import decoder_feed

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


@pytest.mark.parametrize("k", [1, 8])
def test_the_top_k_and_their_log_probabilities_are_the_hosts(decoder, k):
    rng = np.random.default_rng(0)
    b, p, s = 4, 6, 5
    past = [rng.standard_normal((b, HEADS, p, DH), dtype=np.float32) for _ in range(2 * LAYERS)]
    cross = [rng.standard_normal((b, HEADS, s, DH), dtype=np.float32) for _ in range(2 * LAYERS)]
    feed = decoder_feed(np.array([[5], [6], [7], [8]]), np.full((b, 1), p, dtype=np.int64), np.ones((b, p + 1), bool),
                        np.ones((b, s), bool), past, cross, top_k=k)
    got = dict(zip([o.name for o in decoder.get_outputs()], decoder.run(None, feed)))
    logits = got["logits"].astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) + logits.max(-1, keepdims=True)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got["top_ids"], order)
    assert (got["top_ids"][:, 0] == logits.argmax(-1)).all()
    np.testing.assert_allclose(got["top_logp"], np.take_along_axis(logits - lse, order, axis=1), atol=1e-5)


def test_banned_tokens_are_never_candidates_but_stay_in_the_normaliser(tmp_path):
    """``add_step_io(banned=...)`` (an imported checkpoint's single-token bad_words_ids): a banned id is never among
    the top-k, even when its logit is the largest; ``logits`` and the log-probabilities are the model's own."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "step",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])])
    path = tmp_path / "step.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)]), str(path))
    add_step_io(path, banned=(2,), vocab_size=6)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.array([[0.0, 1.0, 9.0, 3.0, 2.0, -1.0]], np.float32)  # the banned id 2 has the largest logit
    logits, ids, logp = session.run(["logits", "top_ids", "top_logp"], {"x": x, "top_k": np.array([3])})
    assert ids.tolist() == [[3, 4, 1]] and np.array_equal(logits, x)
    full = x - np.log(np.exp(x).sum())  # the normaliser counts the banned token, as transformers' log_softmax does
    assert np.allclose(logp, full[:, [3, 4, 1]], atol=1e-6)
