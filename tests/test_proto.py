"""The generated gRPC modules are in sync with proto/inference.proto (regenerate with `make proto`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stem", ["inference", "open_inference"])
def test_generated_code_is_not_stale(tmp_path, stem):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a test extra: `make test` installs it")
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / f"{stem}.proto").write_bytes((ROOT / "proto" / f"{stem}.proto").read_bytes())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.", f"proto/{stem}.proto"],
                   cwd=tmp_path, check=True)
    for name in (f"{stem}_pb2.py", f"{stem}_pb2_grpc.py"):
        assert (tmp_path / "proto" / name).read_text() == (ROOT / "proto" / name).read_text(), f"proto/{name} is stale: run `make proto`"


def test_open_inference_messages_match_the_reference_client():
    """Field numbers and types equal tritonclient's own definition of the protocol, message by message
    (run in a subprocess: both define package `inference`, which one protobuf pool cannot hold twice)."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient is a test extra: `make test` installs it")
    script = """
import json, sys
def fields(d):
    out = {f.name: (f.number, f.type, f.is_repeated, f.message_type.name if f.message_type else None) for f in d.fields}
    for n in d.nested_types:
        out.update({n.name + "." + k: v for k, v in fields(n).items()})
    return out
if sys.argv[1] == "ours":
    from proto import open_inference_pb2 as m
else:
    from tritonclient.grpc import service_pb2 as m
names = [d.name for d in __import__("proto.open_inference_pb2", fromlist=["x"]).DESCRIPTOR.message_types_by_name.values()] if sys.argv[1] == "ours" else json.loads(sys.argv[2])
print(json.dumps({n: fields(m.DESCRIPTOR.message_types_by_name[n]) for n in names}))
"""
    ours = json.loads(subprocess.run([sys.executable, "-c", script, "ours"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    theirs = json.loads(subprocess.run([sys.executable, "-c", script, "theirs", json.dumps(sorted(ours))], cwd=ROOT,
                                       capture_output=True, text=True, check=True).stdout)
    assert ours == theirs


def test_service_and_methods():
    from proto import inference_pb2

    service = inference_pb2.DESCRIPTOR.services_by_name["Inference"]
    assert service.full_name == "inference.v1.Inference"
    assert {m.name for m in service.methods} == {"Translate", "TranslateStream", "Classify", "Caption"}
