"""``tests/benchmarks/engine_width.py``: the loop's answers per second by width, fixed and chosen."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))

import engine_width  # noqa: E402


def test_a_width_is_measured_with_every_answer_a_translation(repo):
    fixed = engine_width.measure(repo / "translator" / "1", 4, beam=1, clients=8, seconds=0.3, warm_up=0.2)
    assert fixed["width"] == 4 and fixed["final_width"] == 4 and fixed["per_s"] > 0
    assert set(fixed["reasons"]) == {"eos"}
    chosen = engine_width.measure(repo / "translator" / "1", None, beam=4, clients=8, seconds=0.3, warm_up=0.2)
    assert chosen["width"] == "auto" and 1 <= chosen["final_width"] <= 32 and chosen["per_s"] > 0
    report = engine_width.table([fixed, chosen], "cmd")
    assert f"{fixed['per_s']:.0f}/s" in report and "(chose" in report
