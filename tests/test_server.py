"""The serving process's models (service/server.py Models), without Ray: per-model settings, stats and readiness."""

import pytest

from service.server import AppArgs, Models, build_app
from service.runtime import RuntimeOptions


@pytest.fixture(scope="module")
def models(repo):
    m = Models(repo, RuntimeOptions(intra_op_threads=1))
    yield m
    m.stop()


def test_settings_are_one_entry_per_model(models):
    models.reconfigure({"classifier": {"max_batch_size": 8}, "translator": {"max_queue": 7, "auto_width": False}})
    assert models.stats("classifier")["max_batch_size"] == 8 and models.stats("translator")["max_queue"] == 7
    assert models.stats("captioner")["max_queue"] == 1024  # an entry left out: that model's defaults
    with pytest.raises(ValueError, match="unknown keys"):
        models.reconfigure({"translater": {}})
    with pytest.raises(ValueError, match="unknown keys"):
        models.reconfigure({"translator": {"max_batch": 4}})
    with pytest.raises(KeyError):
        models.stats("nope")


def test_readiness_names_a_stopped_decode_loop(repo):
    m = Models(repo, RuntimeOptions(intra_op_threads=1))
    assert all(m.ready(name) for name in ("translator", "classifier", "captioner"))
    m.captioner.stop()
    assert not m.ready("captioner") and "decode loop" in m.unready_reason("captioner")
    m.stop()


def test_the_application_is_one_deployment_given_the_repository():
    deployment = build_app(AppArgs(repository="/models"))._bound_deployment
    assert deployment.name == "Server" and deployment.init_args == ("/models",)


def test_a_replica_asked_for_cuda_that_runs_on_the_cpu_is_not_ready_and_says_why(repo, monkeypatch):
    """No silent fallback: ONNX Runtime would serve on the CPU with one log line; readiness (and so Serve's health
    check and /readyz) names the provider that was asked for and why it is missing."""
    from starlette.testclient import TestClient

    from service import front
    from service.front.http import app

    monkeypatch.setenv("ORT_PROVIDERS", "CUDAExecutionProvider")
    m = Models(repo, RuntimeOptions(intra_op_threads=1))
    try:
        for name in ("translator", "classifier", "captioner"):
            assert m.host(name).provider == "CPUExecutionProvider" and not m.ready(name)
            reason = m.unready_reason(name)
            assert "asked for CUDAExecutionProvider" in reason and "runs on CPUExecutionProvider" in reason
        front.bind(m)
        with TestClient(app) as client:
            answer = client.get("/readyz")
        assert answer.status_code == 503 and "CUDAExecutionProvider" in answer.json()["reasons"]["translator"]
        monkeypatch.setenv("ORT_PROVIDERS", "CPUExecutionProvider")  # asked for what it runs on: ready
        assert all(m.ready(name) for name in ("translator", "classifier", "captioner"))
    finally:
        m.stop()


def test_imported_models_share_their_tasks_gpu_memory_without_over_committing_the_replica(repo):
    """The tests' repository holds an imported classifier and translator: each task's share of the replica's GPU
    memory is split between its models, so the limits add up to at most the replica's (and are None on a CPU)."""
    limit = 8 * 2**30
    m = Models(repo, RuntimeOptions(intra_op_threads=1, gpu_mem_limit=limit))
    try:
        assert set(m.memory_limits) == set(m.names) and sum(m.memory_limits.values()) <= limit
        assert m.memory_limits["classifier"] == m.memory_limits["pets"] and m.memory_limits["translator"] == m.memory_limits["opus"]
    finally:
        m.stop()
    m = Models(repo, RuntimeOptions(intra_op_threads=1))
    try:
        assert set(m.memory_limits.values()) == {None}
    finally:
        m.stop()
