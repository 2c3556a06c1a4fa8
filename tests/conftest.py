import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from service import config as serve_config
from tests.hfkit import IMPORTED, IMPORTED_CAPTIONER, IMPORTED_TRANSLATOR, tiny_captioner, tiny_marian, tiny_vit

# Before anything imports Ray: the service runs as `make run` runs it (HAProxy ingress, Serve's throughput preset),
# with HAProxy's files and side ports private to this test session.
serve_config.apply_serve_environment()

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; torch sees none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    """`python -m export` exactly as a user runs it (fp32, with its own parity checks on the test splits), and a tiny
    Hugging Face ViT, Marian and ViT + GPT-2 captioning model imported beside the three (`python -m export --hf`): the service serves them by
    name.

    TEST_MODEL_REPOSITORY=DIR reuses a repository exported earlier (a shortcut while iterating; CI exports).
    """
    reuse = os.environ.get("TEST_MODEL_REPOSITORY")
    if reuse:
        out = Path(reuse).resolve()
    else:
        out = tmp_path_factory.mktemp("repo") / "model_repository"
        proc = subprocess.run([sys.executable, "-m", "export", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    from export.hf import import_checkpoint

    if not (out / IMPORTED / "1" / "model.onnx").exists():  # beside the shipped three: imported checkpoints, served by name
        import_checkpoint(tiny_vit(tmp_path_factory.mktemp("hf") / "vit"), IMPORTED, out)
    if not (out / IMPORTED_TRANSLATOR / "1" / "decoder.onnx").exists():
        import_checkpoint(tiny_marian(tmp_path_factory.mktemp("hf") / "marian"), IMPORTED_TRANSLATOR, out)
    if not (out / IMPORTED_CAPTIONER / "1" / "decoder.onnx").exists():
        import_checkpoint(tiny_captioner(tmp_path_factory.mktemp("hf") / "captioner"), IMPORTED_CAPTIONER, out)
    return out


@pytest.fixture(scope="session")
def service(repo):
    """The real service, once per test session: deploy/serve_config.yaml deployed the way `make run` does it (a
    local Ray instance, Serve's HTTP and gRPC proxies, Ray's metrics agent), on free ports, with the test repository."""
    import requests
    import ray
    from ray import serve

    from service import config as serve_config
    from tests.servicekit import Service, free_port

    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False, _metrics_export_port=metrics_port)
    config, _ = serve_config.localize(serve_config.load(), repository=str(repo), host="127.0.0.1", http_port=port,
                                      grpc_port=grpc_port, gpus=0, single_node=True)
    serve_config.deploy(config)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if requests.get(base + "/readyz", timeout=2).status_code == 200:
                break
        except requests.RequestException:  # not listening yet, or the ingress is still starting
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError("service did not become ready")
    yield Service(base, grpc_port, metrics_port, config)
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def url(service):
    return service.url


@pytest.fixture(scope="session")
def stub(service):
    import grpc

    from proto import inference_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}")
    yield inference_pb2_grpc.InferenceStub(channel)
    channel.close()


@pytest.fixture
def long_decodes(service):
    """Every translation decodes to its max_new_tokens during the test (``servicekit.decoding_to_the_limit``)."""
    from tests.servicekit import decoding_to_the_limit

    with decoding_to_the_limit(service):
        yield
