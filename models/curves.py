"""The training curve every run writes beside its weights (``training_curve.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curve(history: list[dict[str, Any]], metric: str, path: Path, title: str, label: str = "validation") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], color="tab:blue", label="training loss (EMA)")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_yscale("log")
    evals = [h for h in history if "valid" in h]
    ax2 = ax.twinx()
    ax2.plot([h["step"] for h in evals], [h["valid"][metric] for h in evals], "o-", color="tab:orange")
    ax2.set_ylabel(f"{metric}", color="tab:orange")
    ax.set_xlabel(f"step  (blue: training loss, EMA; orange: {metric} on {label.split(' (')[0]})")
    if "(" in label:
        fig.text(0.01, 0.01, label[label.index("(") :], fontsize=7, color="gray")
    ax.set_title(f"{title} training")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
