"""`make run`'s entry point, for as long as it only demonstrates the shipped checkpoints."""

import subprocess
import sys
from pathlib import Path


def test_make_run_entry_point_answers_one_request_of_each_kind():
    proc = subprocess.run(
        [sys.executable, "-m", "service.app"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "translator: 'Friday, March 14, 2025' -> 'vendredi 14 mars 2025'" in out
    assert "classifier:" in out and "captioner:" in out
