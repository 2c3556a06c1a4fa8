"""Pictures of cross-attention, for the command-line client (``--attention out.png``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def caption_attention(image: bytes, attention: dict, path: str | Path) -> Path:
    """One panel per caption token: the scene, with the patches that token attended to tinted red.

    ``attention`` is one entry of the captioner's ``attention`` list (``target_tokens``, ``grid``, ``weights``).
    """
    from PIL import Image

    plt = _pyplot()
    scene = np.asarray(Image.open(io.BytesIO(image)).convert("L"), dtype=np.float32)
    rows, cols = attention["grid"]
    weights = np.asarray(attention["weights"], dtype=np.float32).reshape(-1, rows, cols)
    tokens = [t.replace("\u2581", "").replace("\u0120", "") or "·" for t in attention["target_tokens"]]  # SentencePiece/GPT-2 word marks
    n = len(tokens)
    per_row = min(n, 6) or 1
    lines = (n + per_row - 1) // per_row or 1
    fig, axes = plt.subplots(lines, per_row, figsize=(2.0 * per_row, 2.2 * lines), squeeze=False)
    h, w = scene.shape
    for ax in axes.flat:
        ax.axis("off")
    for ax, token, grid in zip(axes.flat, tokens, weights):
        heat = np.kron(grid / max(float(grid.max()), 1e-9), np.ones((h // rows + 1, w // cols + 1)))[:h, :w]
        ax.imshow(scene, cmap="gray", vmin=0, vmax=255)
        ax.imshow(heat, cmap="Reds", alpha=0.55, vmin=0, vmax=1)
        r, c = divmod(int(grid.argmax()), cols)
        ax.add_patch(plt.Rectangle((c * w / cols - 0.5, r * h / rows - 0.5), w / cols, h / rows, fill=False, edgecolor="yellow", lw=1.5))
        ax.set_title(token, fontsize=11)
    fig.suptitle(" ".join(t for t in tokens if t != "·"), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def translation_attention(attention: dict, path: str | Path) -> Path:
    """A heat map: output tokens (rows) × source tokens (columns)."""
    plt = _pyplot()
    weights = np.asarray(attention["weights"], dtype=np.float32)
    rows, cols = attention["target_tokens"], attention["source_tokens"]
    fig, ax = plt.subplots(figsize=(0.45 * len(cols) + 2, 0.35 * len(rows) + 1.5))
    ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("source token")
    ax.set_ylabel("output token")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
