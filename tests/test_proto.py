"""The generated gRPC modules are in sync with proto/inference.proto (regenerate with `make proto`)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_not_stale(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a test extra: `make test` installs it")
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / "inference.proto").write_bytes((ROOT / "proto" / "inference.proto").read_bytes())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.", "proto/inference.proto"],
                   cwd=tmp_path, check=True)
    for name in ("inference_pb2.py", "inference_pb2_grpc.py"):
        assert (tmp_path / "proto" / name).read_text() == (ROOT / "proto" / name).read_text(), f"proto/{name} is stale: run `make proto`"


def test_service_and_methods():
    from proto import inference_pb2

    service = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
    assert service.full_name == "inference.v1.Inference"
    assert {m.name for m in service.methods} == {"Translate", "TranslateStream", "Classify", "Caption"}
