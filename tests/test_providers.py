"""Where sessions run (service/providers.py), no GPU needed: provider choice and fallback, the provider a replica
was asked for, CUDA options, and a replica's GPU memory share."""

import logging

from service.providers import (
    CPU,
    CUDA,
    cuda_options,
    gpu_memory_bytes,
    model_memory_limits,
    provider_problem,
    replica_memory_limit,
    required_provider,
    select_providers,
)
from service.runtime import RuntimeOptions, create_session


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




def test_a_provider_asked_for_and_not_running_is_named(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10), str(path))
    session = create_session(path, RuntimeOptions(providers=(CPU,)))
    monkeypatch.delenv("ORT_PROVIDERS", raising=False)
    assert required_provider() is None and provider_problem(session) is None  # nothing asked: the CPU is fine
    monkeypatch.setenv("ORT_PROVIDERS", "CUDAExecutionProvider,CPUExecutionProvider")
    assert required_provider() == CUDA
    problem = provider_problem(session)
    assert problem.startswith("asked for CUDAExecutionProvider (ORT_PROVIDERS) but runs on CPUExecutionProvider")
    assert provider_problem(session, required=CPU) is None


def test_cuda_options_choose_conv_algorithms_by_heuristic_and_cap_the_arena():
    options = cuda_options(1, 3 * 2**30)
    assert options == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC",
                       "arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": str(3 * 2**30)}
    assert "gpu_mem_limit" not in cuda_options(0, None)


def test_a_replicas_gpu_memory_follows_its_num_gpus_share(monkeypatch):
    monkeypatch.setenv("GPU_MEMORY_BYTES", str(80 * 2**30))
    total = gpu_memory_bytes()
    assert total == 80 * 2**30
    limit = replica_memory_limit(0.25, total)  # four replicas on one 80 GiB GPU
    assert limit == int(20 * 2**30 * 0.9)
    assert replica_memory_limit(0, total) is None and replica_memory_limit(1, None) is None
    per_model = model_memory_limits(limit)
    assert sum(per_model.values()) <= limit and per_model["translator"] > per_model["classifier"]
    assert model_memory_limits(None) == {"classifier": None, "translator": None, "captioner": None}


def test_an_encoder_decoder_splits_its_share_between_its_sessions():
    from service.runtime import share

    options = RuntimeOptions(gpu_mem_limit=1000)
    assert share(options, 0.75).gpu_mem_limit == 750 and share(RuntimeOptions(), 0.75).gpu_mem_limit is None


def test_a_gpu_replica_warms_up_every_batch_size_up_to_its_largest():
    from service.providers import warm_up, warm_up_widths

    assert warm_up_widths(64) == [1, 2, 4, 8, 16, 32, 64] and warm_up_widths(48) == [1, 2, 4, 8, 16, 32, 48]
    assert warm_up_widths(1) == [1]
    seen = []
    assert warm_up(seen.append, 12) == [1, 2, 4, 8, 12] and seen == [1, 2, 4, 8, 12]


def test_the_classifier_warms_up_on_cuda_only(repo, monkeypatch):
    from service import classifier as module

    host = module.ClassifierHost(repo / "classifier" / "1", RuntimeOptions(intra_op_threads=1))
    runs = []
    monkeypatch.setattr(module, "warm_up", lambda run, largest: runs.append(largest))
    host.reconfigure({"max_batch_size": 16})
    assert runs == []  # on the CPU: nothing to plan per shape
    monkeypatch.setattr(module.ClassifierHost, "provider", property(lambda self: CUDA))
    host.reconfigure({"max_batch_size": 16})
    assert runs == [16]
