"""Sessions: thread settings, and the CUDA session where a GPU is present."""

import pytest

from service.runtime import CPU, CUDA, RuntimeOptions, create_session, select_providers


def relu(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10), str(path))
    return path


def test_session_uses_requested_threads_and_cpu_here(tmp_path):
    session = create_session(relu(tmp_path), RuntimeOptions(providers=(CPU,), intra_op_threads=1))
    assert session.get_providers() == [CPU]
    assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.gpu
def test_cuda_session_when_a_gpu_is_present(tmp_path):
    import onnxruntime as ort

    from service.providers import provider_problem

    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    assert select_providers(None)[0] == CUDA
    session = create_session(relu(tmp_path), RuntimeOptions())  # the libraries really load: no CPU fallback
    assert session.get_providers()[0] == CUDA and provider_problem(session, CUDA) is None

