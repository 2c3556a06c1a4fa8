"""The per-kind report (``models.translation_eval``), on a translation function with known mistakes."""

from dataclasses import replace

from models.data import text as T
from models.translation_eval import every_name_alone, full_report, scores_by, split_report

SMALL = replace(T.CorpusConfig(), n_dates=300, n_cardinals=300, n_ordinals=300, n_quantities=300, n_valid=50, n_test=400)


def oracle_except(wrong: set[str]):
    """A translation function that knows every reference and gets the sources in ``wrong`` wrong."""
    c = T.corpus(SMALL)
    refs = {s: t for pairs in [*c.splits.values(), *c.heldout_forms.values(), *every_name_alone().values()] for s, t in pairs}
    refs.update((s, t) for pairs in T.unseen_values({s for s, _ in c.splits["train"]}, n_per_kind=10).values() for s, t in pairs)
    return lambda sources: ["?" if s in wrong else refs[s] for s in sources]


def test_scores_by_label():
    out = scores_by(["a", "b", "x"], ["a", "b", "c"], ["k1", "k2", "k2"])
    assert out["k1"]["exact_match"] == 1.0 and out["k2"]["exact_match"] == 0.5 and out["k2"]["n"] == 2


def test_split_report_breaks_the_test_split_down_by_kind_and_form():
    c = T.corpus(SMALL)
    test = c.splits["test"]
    territories = [s for s, _ in test if c.kind(s)[0] == "territory"]
    assert territories  # the test split holds names
    report = split_report(oracle_except(set(territories)), test, c, keep_examples=True)
    assert list(report["by_kind"]) == [k for k in T.KINDS if k in report["by_kind"]]
    assert report["by_kind"]["territory"] == {"bleu": 0.0, "exact_match": 0.0, "n": len(territories)}
    assert report["by_kind"]["date"]["exact_match"] == 1.0
    assert sum(v["n"] for v in report["by_kind"].values()) == len(test) == sum(v["n"] for v in report["by_form"].values())
    assert report["by_form"]["templated"]["exact_match"] < 1.0 and report["errors"]


def test_full_report_covers_every_name_alone_and_held_out():
    c = T.corpus(SMALL)
    report = full_report(oracle_except({"France", "Hungarian"}), c, n_unseen=10)
    assert set(report) == {"test", "heldout_forms", "every_name_alone", "unseen_values"}
    alone = report["every_name_alone"]
    assert alone["territory"]["n"] == len(T.names("territory"))
    assert alone["territory"]["errors"] == [{"hyp": "?", "ref": "France"}]
    assert alone["language"]["errors"] == [{"hyp": "?", "ref": "hongrois"}]
    assert report["heldout_forms"]["language"]["exact_match"] == 1.0
    assert set(report["unseen_values"]) == set(T.VALUE_KINDS)
