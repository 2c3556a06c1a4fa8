import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    """`python -m export` exactly as a user runs it (fp32, with its own parity checks on the test splits).

    TEST_MODEL_REPOSITORY=DIR reuses a repository exported earlier (a shortcut while iterating; CI exports).
    """
    reuse = os.environ.get("TEST_MODEL_REPOSITORY")
    if reuse:
        return Path(reuse).resolve()
    out = tmp_path_factory.mktemp("repo") / "model_repository"
    proc = subprocess.run([sys.executable, "-m", "export", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
