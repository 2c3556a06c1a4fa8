"""Train one of the three models from scratch: ``python -m models.train {translator,classifier,captioner}``.

One loop for all three (AdamW, linear warm-up then cosine decay, gradient clipping, a tqdm progress bar,
periodic validation). Each model is a ``Task``: it prepares its data, builds its model, yields batches,
computes the loss and evaluates. The run writes ``models/checkpoints/<name>/``: ``config.json``,
``model.safetensors``, ``tokenizer.model`` (text models), ``metrics.json`` (test figures, data sizes, timing,
the command) and ``training_curve.png``. A GPU is used when present.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models import checkpoint
from models.captioner import Captioner, CaptionerConfig
from models.curves import plot_curve
from models.data import digits as digit_data
from models.data import text as text_data
from models.data.tokenizer import train_tokenizer
from models.translation_eval import full_report, translation_scores
from models.translator import Translator, TranslatorConfig, translate
from models.vit import ViT, ViTConfig


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimizer steps
    batch_size: int
    lr: float  # peak learning rate, reached after warm-up
    warmup_steps: int
    eval_every: int  # validate every N steps (and at the end)
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0


def lr_at(step: int, c: TrainConfig) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
    return c.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def pad(seqs: list[list[int]], pad_id: int = 0) -> Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def shift_images(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image ``(B, 1, H, W)`` by up to ``max_shift`` pixels, filling with zeros (augmentation)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


# --------------------------------------------------------------------------------------------- tasks


class Task:
    name: str
    metric: str  # the validation figure plotted and reported on the progress bar
    curve_label = "validation"  # what the periodic evaluation is run on, for the plot
    train_config: TrainConfig
    tiny_train_config: TrainConfig  # --tiny: a smoke test of the pipeline in seconds

    def __init__(self, tiny: bool = False) -> None:
        self.tiny = tiny
        if tiny:
            self.train_config = self.tiny_train_config

    def model(self) -> nn.Module: ...
    def batches(self, seed: int) -> Iterator[Any]: ...
    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> Tensor: ...
    def evaluate(self, model: nn.Module, split: str, device: torch.device, final: bool = False) -> dict[str, Any]: ...

    def save_extra(self, directory: Path) -> dict[str, Any]:
        return {}

    def final_metrics(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        """The figures ``metrics.json`` ships (for the translator: kind by kind, ``models.translation_eval``)."""
        return {"test": self.evaluate(model, "test", device, final=True)}


def _seq_loss(logits: Tensor, target: Tensor, smoothing: float) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=0, label_smoothing=smoothing)


class TranslatorTask(Task):
    name, metric = "translator", "bleu"
    train_config = TrainConfig(steps=3600, batch_size=96, lr=2e-3, warmup_steps=300, eval_every=900, label_smoothing=0.1)
    tiny_train_config = TrainConfig(steps=30, batch_size=32, lr=1e-3, warmup_steps=5, eval_every=15)
    vocab_size = 2000
    name_repeats = {"alone": 10, "templated": 4}

    def __init__(self, tiny: bool = False) -> None:
        super().__init__(tiny)
        corpus_config = text_data.CorpusConfig()
        if tiny:
            corpus_config = replace(corpus_config, n_dates=600, n_cardinals=400, n_ordinals=300, n_quantities=600, n_valid=50, n_test=50, min_test_names=5)
        self.corpus = text_data.corpus(corpus_config)
        self.splits = text_data.build_corpus(corpus_config)
        texts = [t for pair in self.splits["train"] for t in pair]
        self.tokenizer = train_tokenizer(texts, 400 if tiny else self.vocab_size)
        self.encoded = {
            k: (self.tokenizer.encode_batch([s for s, _ in v]), self.tokenizer.encode_batch([t for _, t in v]))
            for k, v in self.splits.items()
        }

    def model(self) -> nn.Module:
        if self.tiny:
            cfg = TranslatorConfig(vocab_size=self.tokenizer.vocab_size, d_model=32, n_heads=2, d_ff=64, encoder_layers=1, decoder_layers=1)
        else:
            cfg = TranslatorConfig(vocab_size=self.tokenizer.vocab_size, d_model=128, n_heads=4, d_ff=512)
        return Translator(cfg)

    def batches(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Length-bucketed batches: shuffle, sort chunks of 50 batches by length, shuffle the batches."""
        rng = random.Random(seed)
        src, tgt = self.encoded["train"]
        bs, eos, bos = self.train_config.batch_size, self.tokenizer.eos_id, self.tokenizer.bos_id
        epoch = [i for i, (s, _) in enumerate(self.splits["train"]) for _ in range(self.repeats(s))]
        while True:
            order = list(epoch)
            rng.shuffle(order)
            chunks = [order[i : i + 50 * bs] for i in range(0, len(order), 50 * bs)]
            batches = []
            for chunk in chunks:
                chunk.sort(key=lambda i: (len(src[i]), len(tgt[i])))
                batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
            rng.shuffle(batches)
            for b in batches:
                yield pad([src[i] + [eos] for i in b]), pad([[bos] + tgt[i] + [eos] for i in b])

    def repeats(self, source: str) -> int:
        """Times a training sentence occurs per epoch: names are a closed set to be learned one by one, so each
        name sentence is repeated (its alone form the most: it has no context to lean on); values are not."""
        kind, form = self.corpus.kind(source)
        if kind not in text_data.NAME_KINDS:
            return 1
        return self.name_repeats[form]

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> Tensor:
        src, tgt = (t.to(device) for t in batch)
        return _seq_loss(model(src, tgt[:, :-1]), tgt[:, 1:], self.train_config.label_smoothing)

    def translate(self, model: nn.Module, sources: list[str]) -> list[str]:
        return translate(model, self.tokenizer, sources)

    def evaluate(self, model: nn.Module, split: str, device: torch.device, final: bool = False) -> dict[str, Any]:
        pairs = self.splits[split] if final else self.splits[split][:500]
        return translation_scores(self.translate(model, [s for s, _ in pairs]), [t for _, t in pairs], final)

    def final_metrics(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        return full_report(lambda sources: self.translate(model, sources), self.corpus)

    def save_extra(self, directory: Path) -> dict[str, Any]:
        self.tokenizer.save(directory)
        data: dict[str, Any] = {k: len(v) for k, v in self.splits.items()}
        data["heldout_forms"] = {k: len(v) for k, v in self.corpus.heldout_forms.items()}
        data["by_kind"] = {
            split: dict(Counter("/".join(self.corpus.kind(s)) for s, _ in pairs).most_common()) for split, pairs in self.splits.items()
        }
        data["name_repeats"] = self.name_repeats
        return {"data": data, "tokenizer": {"vocab_size": self.tokenizer.vocab_size}}


class ClassifierTask(Task):
    name, metric = "classifier", "accuracy"
    curve_label = "test (monitored only: the last step is shipped, nothing is selected on it)"
    train_config = TrainConfig(steps=3000, batch_size=128, lr=2e-3, warmup_steps=200, eval_every=500, weight_decay=0.05)
    tiny_train_config = TrainConfig(steps=20, batch_size=32, lr=1e-3, warmup_steps=5, eval_every=10)

    def __init__(self, tiny: bool = False) -> None:
        super().__init__(tiny)
        self.splits = digit_data.digit_splits()

    def model(self) -> nn.Module:
        return ViT(ViTConfig(d_model=32, n_heads=2, d_ff=64, layers=1) if self.tiny else ViTConfig())

    def batches(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        images = torch.from_numpy(self.splits["train"].images)[:, None]  # (N, 1, 8, 8)
        labels = torch.from_numpy(self.splits["train"].labels)
        while True:
            idx = torch.randint(0, len(labels), (self.train_config.batch_size,), generator=gen)
            yield shift_images(images[idx], 1, gen), labels[idx]

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> Tensor:
        images, labels = (t.to(device) for t in batch)
        return F.cross_entropy(model(images), labels, label_smoothing=0.1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device, final: bool = False) -> dict[str, Any]:
        data = self.splits["test"]  # scikit-learn digits has no separate validation split: report test
        logits = model(torch.from_numpy(data.images)[:, None].to(device))
        pred = logits.argmax(-1).cpu().numpy()
        return {"accuracy": round(float((pred == data.labels).mean()), 4), "n": int(len(pred))}


def parse_caption(caption: str) -> dict[int, int]:
    """Inverse of ``caption_for``: ``{quadrant: digit}`` (unparseable parts are dropped)."""
    placed: dict[int, int] = {}
    for part in caption.split(" and "):
        word, _, position = part.partition(" in the ")
        if word in digit_data.WORDS and position in digit_data.POSITIONS:
            placed[digit_data.POSITIONS.index(position)] = digit_data.WORDS.index(word)
    return placed


class CaptionerTask(Task):
    name, metric = "captioner", "exact_match"
    train_config = TrainConfig(steps=3000, batch_size=128, lr=2e-3, warmup_steps=200, eval_every=500, weight_decay=0.05)
    tiny_train_config = TrainConfig(steps=20, batch_size=16, lr=1e-3, warmup_steps=5, eval_every=10)

    def __init__(self, tiny: bool = False) -> None:
        super().__init__(tiny)
        self.digits = digit_data.digit_splits()
        self.tokenizer = train_tokenizer(digit_data.all_caption_words(), 21, model_type="word")
        n_eval = 60 if tiny else 1000
        self.eval_sets = {
            "valid": digit_data.make_scenes(self.digits["train"], n_eval // 2, seed=1),  # held-out layouts, seen digits
            "test": digit_data.make_scenes(self.digits["test"], n_eval, seed=2),  # digit images never trained on
        }

    def model(self) -> nn.Module:
        if self.tiny:
            return Captioner(CaptionerConfig(vocab_size=self.tokenizer.vocab_size, d_model=32, n_heads=2, d_ff=64, encoder_layers=1, decoder_layers=1))
        return Captioner(CaptionerConfig(vocab_size=self.tokenizer.vocab_size))

    def batches(self, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        step = 0
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        while True:
            canvases, captions, _ = digit_data.make_scenes(self.digits["train"], self.train_config.batch_size, seed=seed * 1_000_003 + step)
            step += 1
            images = torch.from_numpy(canvases).float()[:, None] / 255.0  # (B, 1, 32, 32)
            yield shift_images(images, 1, gen), pad([[bos] + ids + [eos] for ids in self.tokenizer.encode_batch(captions)])

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> Tensor:
        images, tgt = (t.to(device) for t in batch)
        return _seq_loss(model(images, tgt[:, :-1]), tgt[:, 1:], self.train_config.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, device: torch.device, final: bool = False) -> dict[str, Any]:
        canvases, captions, layouts = self.eval_sets[split]
        images = torch.from_numpy(canvases).float()[:, None].to(device) / 255.0
        hyps = [self.tokenizer.decode(ids) for ids in model.generate(images)]
        correct = total = 0
        for hyp, layout in zip(hyps, layouts):
            got = parse_caption(hyp)
            correct += sum(got.get(q) == d for q, d in layout.items())
            total += len(layout)
        scores: dict[str, Any] = {
            "exact_match": round(float(np.mean([h == c for h, c in zip(hyps, captions)])), 4),
            "digit_accuracy": round(correct / total, 4),
            "n": len(captions),
        }
        if final:
            scores["errors"] = [{"hyp": h, "ref": c} for h, c in zip(hyps, captions) if h != c][:20]
        return scores

    def save_extra(self, directory: Path) -> dict[str, Any]:
        self.tokenizer.save(directory)
        return {"tokenizer": {"vocab_size": self.tokenizer.vocab_size}}


TASKS: dict[str, type[Task]] = {"translator": TranslatorTask, "classifier": ClassifierTask, "captioner": CaptionerTask}


# ---------------------------------------------------------------------------------------------- loop


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for, but torch sees no CUDA GPU on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise SystemExit(f"error: unknown device {requested!r} (use auto, cpu or cuda)")
    return torch.device(requested)


def train(name: str, out: Path, *, tiny: bool = False, device: str = "auto", steps: int | None = None, quiet: bool = False) -> dict[str, Any]:
    started = time.time()
    dev = pick_device(device)
    task = TASKS[name](tiny=tiny)
    cfg = task.train_config if steps is None else replace(task.train_config, steps=steps)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = task.model().to(dev)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n and "pos" not in n and "cls" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n and "pos" not in n and "cls" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98)
    )
    history: list[dict[str, Any]] = []
    batches = task.batches(cfg.seed)
    prep_seconds = time.time() - started
    bar = tqdm(range(cfg.steps), desc=f"train {name}", unit="step", disable=quiet, dynamic_ncols=True)
    smoothed = None
    for step in bar:
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = task.loss(model, next(batches), dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        record: dict[str, Any] = {"step": step + 1, "loss": round(smoothed, 4), "lr": lr_at(step, cfg)}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            record["valid"] = task.evaluate(model, "valid", dev)
            bar.set_postfix(loss=f"{smoothed:.3f}", **{task.metric: record["valid"][task.metric]})
        elif step % 20 == 0:
            bar.set_postfix(loss=f"{smoothed:.3f}")
        history.append(record)
    train_seconds = time.time() - started - prep_seconds
    model.eval()
    metrics: dict[str, Any] = {"model": name, **task.final_metrics(model, dev)}
    extra = task.save_extra(out) if out.mkdir(parents=True, exist_ok=True) is None else {}
    metrics.update(
        extra,
        train={
            **asdict(cfg),
            "device": str(dev),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "prepare_seconds": round(prep_seconds, 1),
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - started, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "command": "python -m models.train " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("train.py") else f"python -m models.train {name}",
        },
        history=[h for h in history if "valid" in h or h["step"] % 10 == 0],
    )
    checkpoint.save(out, name, model.cpu(), extra={"train": asdict(cfg)})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    plot_curve(history, task.metric, out / "training_curve.png", name, task.curve_label)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(TASKS))
    parser.add_argument("--out", type=Path, help="output directory (default models/checkpoints/<model>)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    parser.add_argument("--steps", type=int, help="override the number of optimizer steps")
    parser.add_argument("--tiny", action="store_true", help="tiny model and data: a smoke test of the pipeline, seconds long")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = args.out or checkpoint.CHECKPOINTS / args.model
    metrics = train(args.model, out, tiny=args.tiny, device=args.device, steps=args.steps, quiet=args.quiet)
    summary = {k: v for k, v in metrics["test"].items() if k != "errors"}
    print(f"{args.model}: test {summary}; {metrics['train']['total_seconds']} s on {metrics['train']['device']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
