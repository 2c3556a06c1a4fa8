"""The translator's figures, kind by kind: what ``metrics.json`` and the README table report.

A single corpus-wide figure hides the names: dates, numbers and quantities are ~90 % of the corpus, the ~950
territory and language names the rest. So every figure is also given per kind (date, cardinal, ordinal,
quantity, territory, language) and per form (alone, templated), on four sets:

* ``test``: the test split (its sentences are in no other split);
* ``heldout_forms``: one templated form of *every* name, in no split (``models.data.text``): the name was
  trained only in its other forms, so a right answer shows the name was learned, not the sentence;
* ``every_name_alone``: every name on its own (``France``, ``Hungarian``): what a user types first. These are
  training sentences (the alone form of a name is always trained); they are listed because they are the whole
  closed set of what a user can ask, not a sample of it;
* ``unseen_values``: fresh dates, numbers and quantities whose source sentence never occurs in training.

Cells read "exact match % (BLEU; n)". ``python -m models.translation_eval`` prints the table the README shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models.data import text as text_data

Translate = Callable[[list[str]], list[str]]


def translation_scores(hyps: Sequence[str], refs: Sequence[str], keep_examples: bool = False) -> dict[str, Any]:
    import sacrebleu

    bleu = sacrebleu.corpus_bleu(list(hyps), [list(refs)])
    scores: dict[str, Any] = {
        "bleu": round(bleu.score, 2),
        "exact_match": round(float(np.mean([h == r for h, r in zip(hyps, refs)])), 4),
        "n": len(refs),
    }
    if keep_examples:
        scores["errors"] = [{"hyp": h, "ref": r} for h, r in zip(hyps, refs) if h != r][:20]
    return scores


def scores_by(hyps: Sequence[str], refs: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``translation_scores`` of each label's rows, in first-seen order of the labels."""
    out: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(labels):
        rows = [i for i, l in enumerate(labels) if l == label]
        out[label] = translation_scores([hyps[i] for i in rows], [refs[i] for i in rows])
    return out


def split_report(translate: Translate, pairs: list[text_data.Pair], corpus: text_data.Corpus, keep_examples: bool) -> dict[str, Any]:
    """Overall figures of a set, then ``by_kind`` and ``by_form``."""
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    hyps = translate(sources)
    report = translation_scores(hyps, refs, keep_examples)
    tags = [corpus.kind(s) for s in sources]
    by_kind = scores_by(hyps, refs, [k for k, _ in tags])
    report["by_kind"] = {k: by_kind[k] for k in text_data.KINDS if k in by_kind}
    by_form = scores_by(hyps, refs, [f for _, f in tags])
    report["by_form"] = {f: by_form[f] for f in text_data.FORMS if f in by_form}
    return report


def kind_sets(translate: Translate, sets: dict[str, list[text_data.Pair]], keep_examples: bool) -> dict[str, Any]:
    """One report per named set (e.g. one per name kind)."""
    out = {}
    for kind, pairs in sets.items():
        hyps = translate([s for s, _ in pairs])
        out[kind] = translation_scores(hyps, [t for _, t in pairs], keep_examples)
    return out


def every_name_alone() -> dict[str, list[text_data.Pair]]:
    """Every territory and language name on its own, as the corpus trains it (an English name that is also a
    territory, e.g. "Nauru", means the territory)."""
    territories = [(n.en, n.fr) for n in text_data.names("territory")]
    taken = {en for en, _ in territories}
    languages = [(n.en, n.fr) for n in text_data.names("language") if n.en not in taken]
    return {"territory": territories, "language": languages}


def full_report(translate: Translate, corpus: text_data.Corpus, n_unseen: int = 100) -> dict[str, Any]:
    """Everything ``metrics.json`` holds about translation quality (see the module docstring)."""
    train_sources = {s for s, _ in corpus.splits["train"]}
    return {
        "test": split_report(translate, corpus.splits["test"], corpus, keep_examples=True),
        "heldout_forms": kind_sets(translate, corpus.heldout_forms, keep_examples=True),
        "every_name_alone": kind_sets(translate, every_name_alone(), keep_examples=True),
        "unseen_values": kind_sets(translate, text_data.unseen_values(train_sources, n_per_kind=n_unseen), False),
    }


def markdown_table(metrics: dict[str, Any]) -> str:
    """The README's per-kind table, from a ``metrics.json``: exact match (and BLEU) per kind on each set."""

    def cell(scores: dict[str, Any] | None) -> str:
        if not scores:
            return "–"
        return f"{100 * scores['exact_match']:.1f} % ({scores['bleu']:.1f}; n {scores['n']:,})"

    test = metrics["test"]
    rows = [
        "| kind | test split | a held-out form of every name | every name alone | values never seen in training |",
        "|---|---|---|---|---|",
    ]
    for kind in text_data.KINDS:
        rows.append(
            f"| {kind} | {cell(test['by_kind'].get(kind))} | {cell(metrics['heldout_forms'].get(kind))} "
            f"| {cell(metrics['every_name_alone'].get(kind))} | {cell(metrics['unseen_values'].get(kind))} |"
        )
    for form in text_data.FORMS:
        rows.append(f"| *{form}* | {cell(test['by_form'].get(form))} | | | |")
    rows.append(f"| **all** | {cell(test)} | | | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m models.translation_eval [metrics.json]``: print the README's per-kind table."""
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m models.translation_eval", description=main.__doc__)
    parser.add_argument("metrics", nargs="?", type=Path, default=Path("models/checkpoints/translator/metrics.json"))
    args = parser.parse_args(argv)
    print(markdown_table(json.loads(args.metrics.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
