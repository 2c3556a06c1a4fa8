"""The shipped weights: recompute their test figures (on samples, for time) and compare with metrics.json.

The full-split figures in each metrics.json were produced by ``python -m models.train <name>``; here the
committed weights are loaded from safetensors and scored again, independently of the training run.
"""

import json

import pytest
import torch

from models import checkpoint
from models.data import digits as D
from models.data import text as T
from models.train import parse_caption
from models.translation_eval import full_report, markdown_table, translation_scores
from models.translator import translate

CKPT = checkpoint.CHECKPOINTS


def metrics(name):
    return json.loads((CKPT / name / "metrics.json").read_text())


@pytest.mark.parametrize("name", ["translator", "classifier", "captioner"])
def test_checkpoint_files_are_complete(name):
    files = {p.name for p in (CKPT / name).iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "training_curve.png"} <= files
    if name != "classifier":
        assert "tokenizer.model" in files
    assert (CKPT / name / "model.safetensors").stat().st_size < 20 * 2**20  # small enough to commit
    assert metrics(name)["train"]["total_seconds"] <= 900  # retrained from scratch within 15 minutes (2 CPU cores)


def test_shipped_figures_meet_the_targets():
    t = metrics("translator")
    assert t["test"]["bleu"] >= 98
    every_kind = {
        **{f"test/{k}": v for k, v in t["test"]["by_kind"].items()},
        **{f"test/{f}": v for f, v in t["test"]["by_form"].items()},
        **{f"heldout_forms/{k}": v for k, v in t["heldout_forms"].items()},
        **{f"every_name_alone/{k}": v for k, v in t["every_name_alone"].items()},
        **{f"unseen_values/{k}": v for k, v in t["unseen_values"].items()},
    }
    assert len(every_kind) == 6 + 2 + 2 + 2 + 4
    low = {k: v["exact_match"] for k, v in every_kind.items() if v["exact_match"] < 0.95}
    assert not low, low
    assert metrics("classifier")["test"]["accuracy"] >= 0.98
    cap = metrics("captioner")["test"]
    assert cap["exact_match"] >= 0.90 and cap["digit_accuracy"] >= 0.97


def test_classifier_accuracy_recomputed():
    model, _ = checkpoint.load("classifier")
    test = D.digit_splits()["test"]
    with torch.no_grad():
        pred = model(torch.from_numpy(test.images)[:, None]).argmax(-1).numpy()
    accuracy = float((pred == test.labels).mean())
    assert accuracy >= 0.98
    assert accuracy == pytest.approx(metrics("classifier")["test"]["accuracy"], abs=1e-4)


@pytest.fixture(scope="module")
def translator():
    model, tok = checkpoint.load("translator")
    return model, tok, T.build_corpus()


def without_examples(report):
    """A report with its error samples left out, at every level."""
    if isinstance(report, dict):
        return {k: without_examples(v) for k, v in report.items() if k != "errors"}
    return report


def test_every_per_kind_figure_recomputed_from_the_shipped_weights_is_the_shipped_one(translator):
    """The whole report metrics.json ships (test split by kind and form, a held-out form of every name, every name
    alone, unseen values), recomputed from the committed weights: equal to the shipped figures, so no kind can
    fall below them unnoticed. Greedy decoding on the CPU is deterministic."""
    model, tok, _ = translator
    report = full_report(lambda sources: translate(model, tok, sources), T.corpus())
    shipped = metrics("translator")
    assert without_examples(report) == without_examples({k: shipped[k] for k in report})


def test_translator_holds_on_values_never_seen_in_training(translator):
    model, tok, corpus = translator
    train_sources = {s for s, _ in corpus["train"]}
    fresh = T.unseen_values(train_sources, n_per_kind=40, seed=2026)
    pairs = [p for kind in fresh.values() for p in kind]
    hyps = translate(model, tok, [s for s, _ in pairs])
    scores = translation_scores(hyps, [t for _, t in pairs], False)
    assert scores["bleu"] >= 98 and scores["exact_match"] >= 0.95, scores


def test_the_readme_shows_the_shipped_per_kind_table():
    readme = (CKPT.parent.parent / "README.md").read_text()
    assert markdown_table(metrics("translator")) in readme


def test_translator_examples(translator):
    model, tok, _ = translator
    src = ["Friday, March 14, 2025", "She speaks German.", "twenty-one", "France", "Germany", "Belgium",
           "Northern Mariana Islands", "Hungarian", "She lives in France.", "He comes from Japan."]
    assert translate(model, tok, src) == ["vendredi 14 mars 2025", "Elle parle allemand.", "vingt et un", "France",
                                          "Allemagne", "Belgique", "Îles Mariannes du Nord", "hongrois",
                                          "Elle vit en France.", "Il vient du Japon."]  # the examples


def test_captioner_recomputed_on_test_scenes():
    model, tok = checkpoint.load("captioner")
    canvases, captions, layouts = D.make_scenes(D.digit_splits()["test"], 300, seed=2)
    with torch.no_grad():
        hyps = [tok.decode(ids) for ids in model.generate(torch.from_numpy(canvases).float()[:, None] / 255)]
    exact = sum(h == c for h, c in zip(hyps, captions)) / len(captions)
    digits = [parse_caption(h).get(q) == d for h, layout in zip(hyps, layouts) for q, d in layout.items()]
    assert exact >= 0.90 and sum(digits) / len(digits) >= 0.97, (exact, hyps[:5])
