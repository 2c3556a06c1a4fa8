"""Entry point of ``make run``.

The Ray Serve application (HTTP :8000, gRPC :9000, metrics :8080) is not part of the project yet. Until it
is, ``make run`` checks what exists: it loads the three shipped checkpoints, answers one example request of
each kind in-process with PyTorch, and says so. It never trains.
"""

from __future__ import annotations

import sys
import time

import torch

from models import checkpoint
from models.data import digits as D
from models.translator import translate


def main() -> int:
    started = time.time()
    torch.set_num_threads(1)
    translator, text_tok = checkpoint.load("translator")
    classifier, _ = checkpoint.load("classifier")
    captioner, caption_tok = checkpoint.load("captioner")
    print(f"loaded 3 checkpoints from {checkpoint.CHECKPOINTS} in {time.time() - started:.1f} s")

    src = "Friday, March 14, 2025"
    print(f"translator: {src!r} -> {translate(translator, text_tok, [src])[0]!r}")

    test = D.digit_splits()["test"]
    with torch.no_grad():
        probs = classifier(torch.from_numpy(test.images[:1])[:, None]).softmax(-1)[0]
    print(f"classifier: test digit labelled {test.labels[0]} -> {int(probs.argmax())} (p={float(probs.max()):.3f})")

    canvases, captions, _ = D.make_scenes(test, 1, seed=7)
    hyp = caption_tok.decode(captioner.generate(torch.from_numpy(canvases).float()[:, None] / 255)[0])
    print(f"captioner: scene of {captions[0]!r} -> {hyp!r}")
    print("The network service (Ray Serve on :8000/:9000, metrics on :8080) is not built yet; nothing to keep running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
