"""scikit-learn's handwritten digits (1,797 images, 8×8, intensities 0–16) and the captioning scenes built
from them.

* Classifier split: fixed, stratified 80/20 (``random_state=0``).
* Scenes: a 32×32 grayscale canvas cut into 2×2 quadrants; 1–3 quadrants each hold one digit, upscaled to
  16×16 (each pixel becomes a 2×2 block), light ink on black as the data set stores it, intensity 0–16
  scaled to 0–255. The caption lists the digits in reading order (top left, top right, bottom left,
  bottom right) as ``<digit word> in the <position>`` joined by `` and ``. Training scenes draw only on the
  classifier's training images and test scenes only on its test images, so the two never share a digit image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
CANVAS, CELL = 32, 16


@dataclass
class DigitSplit:
    images: np.ndarray  # (N, 8, 8) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64


def digit_splits(test_size: float = 0.2, seed: int = 0) -> dict[str, DigitSplit]:
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    return {
        "train": DigitSplit(images[idx_train], labels[idx_train]),
        "test": DigitSplit(images[idx_test], labels[idx_test]),
    }


def caption_for(placed: dict[int, int]) -> str:
    """``{quadrant: digit}`` → caption in reading order."""
    return " and ".join(f"{WORDS[placed[q]]} in the {POSITIONS[q]}" for q in sorted(placed))


def render_scene(placed: dict[int, np.ndarray]) -> np.ndarray:
    """``{quadrant: 8×8 digit in [0, 1]}`` → ``(32, 32)`` uint8 canvas."""
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for q, digit in placed.items():
        big = np.kron(digit, np.ones((2, 2), dtype=np.float32))  # (16, 16) nearest-neighbour upscale
        r, c = divmod(q, 2)
        canvas[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = np.round(big * 255).astype(np.uint8)
    return canvas


def make_scenes(split: DigitSplit, n: int, seed: int) -> tuple[np.ndarray, list[str], list[dict[int, int]]]:
    """``n`` random scenes from one digit split → canvases ``(n, 32, 32)`` uint8, captions, layouts."""
    rng = np.random.default_rng(seed)
    canvases = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    captions, layouts = [], []
    for i in range(n):
        count = int(rng.integers(1, 4))
        quadrants = sorted(rng.choice(4, size=count, replace=False).tolist())
        picks = rng.integers(0, len(split.labels), size=count)
        canvases[i] = render_scene({q: split.images[p] for q, p in zip(quadrants, picks)})
        layout = {q: int(split.labels[p]) for q, p in zip(quadrants, picks)}
        captions.append(caption_for(layout))
        layouts.append(layout)
    return canvases, captions, layouts


def all_caption_words() -> list[str]:
    """Text covering every caption word, for training the caption tokenizer."""
    return [caption_for({q: d}) for d in range(10) for q in range(4)] + [
        caption_for({0: d, 1: (d + 1) % 10, 3: (d + 2) % 10}) for d in range(10)
    ]
