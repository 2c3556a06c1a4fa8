"""The training command end to end (tiny configurations), its schedule, and the classifier's reproducibility."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models import checkpoint
from models.train import TrainConfig, lr_at, parse_caption

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "models.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("name", ["translator", "classifier", "captioner"])
def test_train_command_writes_a_complete_checkpoint(tmp_path, name):
    proc = run_train(name, "--tiny", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train " + name in proc.stderr  # the tqdm progress bar
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "training_curve.png"} <= files
    assert ("tokenizer.model" in files) == (name != "classifier")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"] == name and metrics["test"]["n"] > 0
    assert metrics["train"]["device"] == "cpu" and metrics["history"]
    assert (tmp_path / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, tok = checkpoint.load(tmp_path)  # loads back from safetensors + config.json
    assert (tok is None) == (name == "classifier")


def test_bad_model_name_is_a_usage_error():
    proc = run_train("resnet")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_learning_rate_schedule():
    c = TrainConfig(steps=1000, batch_size=1, lr=1.0, warmup_steps=100, eval_every=100)
    assert lr_at(0, c) == pytest.approx(0.01)
    assert lr_at(99, c) == pytest.approx(1.0)
    assert lr_at(550, c) == pytest.approx(0.05 + 0.95 * 0.5, abs=1e-3)
    assert lr_at(999, c) == pytest.approx(0.05, abs=1e-3)
    assert all(lr_at(s, c) >= lr_at(s + 1, c) for s in range(100, 999))


def test_parse_caption():
    assert parse_caption("seven in the top left and two in the bottom right") == {0: 7, 3: 2}
    assert parse_caption("garbage") == {}


@pytest.mark.slow
def test_classifier_retraining_reproduces_the_shipped_accuracy(tmp_path):
    """`python -m models.train classifier` from scratch lands within one point of the shipped accuracy."""
    proc = run_train("classifier", "--out", str(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads((tmp_path / "metrics.json").read_text())["test"]["accuracy"]
    shipped = json.loads((checkpoint.CHECKPOINTS / "classifier" / "metrics.json").read_text())["test"]["accuracy"]
    assert abs(fresh - shipped) <= 0.01, (fresh, shipped)


def test_device_selection_falls_back_to_cpu_and_refuses_a_missing_gpu():
    import torch

    from models.train import pick_device

    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(SystemExit, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            pick_device("cuda")


@pytest.mark.gpu
def test_training_runs_on_the_gpu(tmp_path):
    proc = run_train("captioner", "--tiny", "--device", "cuda", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["train"]["device"] == "cuda"
