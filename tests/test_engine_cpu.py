"""``tests/benchmarks/engine_cpu.py``: the engine's CPU per batch, and its part outside ONNX Runtime."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))

import engine_cpu  # noqa: E402

TEXTS = ["She lives in France.", "Friday, March 14, 2025", "He comes from Italy."]


@pytest.mark.parametrize("beam", [1, 4])
def test_a_batch_is_timed_whole_and_its_python_part_is_within_it(repo, beam):
    result = engine_cpu.measure(repo / "translator" / "1", beam, len(TEXTS), runs=2, texts=TEXTS)
    assert result["beam"] == beam and result["batch"] == len(TEXTS)
    assert 0 < result["host_ms"] < result["cpu_ms"]
    # the same sentences give the same tokens: what --against compares between two checkouts
    assert engine_cpu.measure(repo / "translator" / "1", beam, len(TEXTS), runs=1, texts=TEXTS)["tokens"] == result["tokens"]
