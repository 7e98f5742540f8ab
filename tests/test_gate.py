"""The promotion gate on given scores: promotes within every bound, refuses on each bound, NaN explicit."""

from __future__ import annotations

import math

import pytest

from dso.config import GateSettings
from dso.evaluate.gate import Decision, decide, ratio, two_proportion_se

BASE = {
    "stable_ratio": 0.50, "stable_n": 64.0, "paired_drift": 0.0, "chamfer": 0.040,
    "fscore": 0.70, "footprint_ratio": 1.10, "diversity": 0.030,
}
GATE = GateSettings()


def candidate(**changes: float) -> dict[str, float]:
    return {**BASE, "paired_drift": 0.01, **changes}


def test_base_against_itself_is_promoted_with_every_bound_listed():
    decision, reasons = decide(BASE, BASE, None, GATE)
    assert decision == Decision.promoted
    assert [r.split()[0].rstrip(":") for r in reasons] == ["chamfer", "paired_drift", "footprint_ratio", "diversity", "stable_ratio"]


def test_small_changes_are_promoted():
    decision, _ = decide(candidate(chamfer=0.041, stable_ratio=0.55, diversity=0.025), BASE, None, GATE)
    assert decision == Decision.promoted


@pytest.mark.parametrize(
    ("changes", "bound"),
    [
        ({"chamfer": 0.040 * 1.2}, "chamfer"),
        ({"paired_drift": 0.030 * 2.0}, "paired_drift"),
        ({"footprint_ratio": 1.10 * 1.5}, "footprint_ratio"),
        ({"diversity": 0.030 * 0.2}, "diversity"),
        ({"stable_ratio": 0.20}, "stable_ratio"),
    ],
)
def test_refused_on_each_bound_with_one_line_naming_it(changes, bound):
    decision, reasons = decide(candidate(**changes), BASE, None, GATE)
    assert decision == Decision.refused
    assert len(reasons) == 1 and reasons[0].startswith(bound), reasons
    assert any(ch.isdigit() for ch in reasons[0])  # the numbers are in the line


def test_every_broken_bound_is_reported():
    _, reasons = decide(candidate(chamfer=1.0, paired_drift=1.0, diversity=0.0), BASE, None, GATE)
    assert {r.split()[0] for r in reasons} == {"chamfer", "paired_drift", "diversity"}


def test_stability_is_relative_to_the_promoted_version():
    promoted = {**BASE, "stable_ratio": 0.80}
    # 0.55 beats the base but falls more than z SE below the promoted version's 0.80
    decision, reasons = decide(candidate(stable_ratio=0.55), BASE, promoted, GATE, promoted_version=3)
    assert decision == Decision.refused and "promoted v3" in reasons[0]
    # within noise of the promoted version: promoted
    assert decide(candidate(stable_ratio=0.75), BASE, promoted, GATE, promoted_version=3)[0] == Decision.promoted


def test_stability_z_uses_both_sample_sizes():
    se_small = two_proportion_se(0.4, 16, 0.5, 16)
    se_large = two_proportion_se(0.4, 1024, 0.5, 1024)
    assert se_small > se_large > 0
    # the same drop of 0.1 is noise on 16 samples, a regression on 1024
    small = {**BASE, "stable_n": 16.0}
    assert decide({**candidate(stable_ratio=0.4), "stable_n": 16.0}, small, None, GATE)[0] == Decision.promoted
    big = {**BASE, "stable_n": 1024.0}
    assert decide({**candidate(stable_ratio=0.4), "stable_n": 1024.0}, big, None, GATE)[0] == Decision.refused


def test_nan_on_the_base_skips_the_bound_and_says_so():
    base = {**BASE, "chamfer": math.nan, "fscore": math.nan, "footprint_ratio": math.nan}  # no ground truth
    decision, reasons = decide(candidate(chamfer=math.nan, footprint_ratio=math.nan), base, None, GATE)
    assert decision == Decision.promoted
    assert any(r.startswith("chamfer: not checked") for r in reasons)


def test_nan_on_the_candidate_only_is_refused():
    decision, reasons = decide(candidate(chamfer=math.nan), BASE, None, GATE)
    assert decision == Decision.refused and "not measurable" in reasons[0]
    missing = {k: v for k, v in candidate().items() if k != "stable_ratio"}
    assert decide(missing, BASE, None, GATE)[0] == Decision.refused


def test_zero_denominators():
    assert ratio(0.0, 0.0) == 1.0 and ratio(0.1, 0.0) == math.inf and math.isnan(ratio(math.nan, 1.0))
    collapsed_base = {**BASE, "diversity": 0.0}
    # a deterministic base (diversity 0): any drift is out of bounds, none is fine
    assert decide(candidate(paired_drift=0.0, diversity=0.0), collapsed_base, None, GATE)[0] == Decision.promoted
    assert decide(candidate(paired_drift=0.01, diversity=0.0), collapsed_base, None, GATE)[0] == Decision.refused
