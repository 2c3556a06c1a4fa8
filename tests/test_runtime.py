"""Provider selection and fallback (no GPU needed), and thread settings."""

import logging

import pytest

from service.runtime import CPU, CUDA, RuntimeOptions, create_session, select_providers


def test_cuda_first_when_available():
    assert select_providers(None, [CUDA, CPU]) == [CUDA, CPU]


def test_falls_back_to_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv("ORT_PROVIDERS", raising=False)
    assert select_providers(None, [CPU]) == [CPU]


def test_env_var_orders_and_filters(monkeypatch, caplog):
    monkeypatch.setenv("ORT_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    with caplog.at_level(logging.WARNING):
        assert select_providers(None, [CPU]) == [CPU]
    assert "CUDAExecutionProvider is not available" in caplog.text
    monkeypatch.setenv("ORT_PROVIDERS", "CPUExecutionProvider,CUDAExecutionProvider")
    assert select_providers(None, [CUDA, CPU]) == [CUDA, CPU]  # CPU always goes last, as the fallback
    monkeypatch.setenv("ORT_PROVIDERS", "CUDAExecutionProvider")
    assert select_providers(None, [CUDA, CPU]) == [CUDA, CPU]  # CPU appended even when not named


def test_unknown_provider_is_dropped():
    assert select_providers("TotallyMadeUpProvider", [CPU]) == [CPU]


def test_session_uses_requested_threads_and_cpu_here(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10), str(path))
    session = create_session(path, RuntimeOptions(providers=(CPU,), intra_op_threads=1))
    assert session.get_providers() == [CPU]
    assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.gpu
def test_cuda_session_when_a_gpu_is_present(tmp_path):
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    assert select_providers(None)[0] == CUDA
