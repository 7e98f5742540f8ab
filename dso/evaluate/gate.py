"""The promotion gate: a candidate's canary scores against the base model's and the promoted version's.

Geometry bounds are relative to the base model (version 0), so they cannot creep: a chain of candidates
each a little worse than the last still has to stay within the same distance of the base. Stability is
relative to the promoted version: a candidate may not undo the gains already served, beyond the probe's
sampling noise (``gate.stability_z`` standard errors of the difference of two proportions).

NaN (a score the canary could not measure) is explicit: when the *base* has no value for a bound (no
ground truth on the probe, say) the bound is skipped and said so; when the *candidate* has none while the
base does, the candidate is refused (e.g. every probe sample came out empty). Pure: numbers in, decision out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum

from dso.config import GateSettings

Scores = Mapping[str, float]


class Decision(StrEnum):
    """What the gate made of a candidate (stored with its scores by dso.broker.promotion)."""

    promoted = "promoted"  # within every bound: generators and /v1/adapters/latest move to it
    refused = "refused"  # outside a bound: never served; the learner rolls back
    superseded = "superseded"  # a newer candidate was published before this one was scored
    baseline = "baseline"  # version 0, the base model: the reference the bounds are relative to


def _get(scores: Scores | None, key: str) -> float:
    value = (scores or {}).get(key)
    return math.nan if value is None else float(value)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator; 0 / 0 is 1 (equal), x / 0 is inf for x > 0, NaN in -> NaN out."""
    if math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    if denominator <= 0:
        return 1.0 if numerator <= 0 else math.inf
    return numerator / denominator


def _bound(
    name: str, value: float, reference: float, reference_name: str, limit: float, upper: bool
) -> tuple[bool | None, str]:
    """(passed, line) of one ratio bound; passed is None when the base has no value (bound skipped)."""
    if math.isnan(reference):
        return None, f"{name}: not checked ({reference_name} is NaN)"
    if math.isnan(value):
        return False, f"{name}: not measurable on the candidate (NaN) while {reference_name} is {reference:.4g}"
    r = ratio(value, reference)
    ok = r <= limit if upper else r >= limit
    sign = ("<=" if ok else ">") if upper else (">=" if ok else "<")
    return ok, f"{name} {value:.4g} / {reference_name} {reference:.4g} = {r:.3g} {sign} {limit:g}"


def two_proportion_se(p1: float, n1: float, p2: float, n2: float) -> float:
    """Pooled standard error of p1 - p2 (two independent proportions over n1 and n2 trials)."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    return math.sqrt(max(0.0, pooled * (1 - pooled)) * (1 / n1 + 1 / n2))


def _stability(candidate: Scores, reference: Scores, reference_name: str, z: float) -> tuple[bool | None, str]:
    p1, n1 = _get(candidate, "stable_ratio"), _get(candidate, "stable_n")
    p2, n2 = _get(reference, "stable_ratio"), _get(reference, "stable_n")
    if math.isnan(p2) or math.isnan(n2) or n2 <= 0:
        return None, f"stable_ratio: not checked ({reference_name} has none)"
    if math.isnan(p1) or math.isnan(n1) or n1 <= 0:
        return False, f"stable_ratio: not measured on the candidate while {reference_name} is {p2:.3f}"
    se = two_proportion_se(p1, n1, p2, n2)
    drop = p2 - p1
    ok = drop <= z * se
    sign = "<=" if ok else ">"
    return ok, (
        f"stable_ratio {p1:.3f} (n={n1:.0f}) vs {reference_name} {p2:.3f} (n={n2:.0f}): "
        f"drop {drop:+.3f} {sign} {z:g} x SE {se:.3f}"
    )


def decide(
    candidate: Scores, base: Scores, promoted: Scores | None, settings: GateSettings, promoted_version: int = 0
) -> tuple[Decision, list[str]]:
    """Promoted or refused, with one line per bound: the broken ones when refused, every one when promoted.

    ``promoted`` is the promoted version's scores (None or empty: the base is the promoted version).
    """
    reference, reference_name = (promoted, f"promoted v{promoted_version}") if promoted else (base, "base")
    c = lambda key: _get(candidate, key)  # noqa: E731 - short local reads
    b = lambda key: _get(base, key)  # noqa: E731
    checks = [
        _bound("chamfer", c("chamfer"), b("chamfer"), "base", settings.max_chamfer_ratio, upper=True),
        _bound("paired_drift", c("paired_drift"), b("diversity"), "base diversity", settings.max_paired_drift_ratio, upper=True),
        _bound("footprint_ratio", c("footprint_ratio"), b("footprint_ratio"), "base", settings.max_footprint_ratio, upper=True),
        _bound("diversity", c("diversity"), b("diversity"), "base", settings.min_diversity_ratio, upper=False),
        _stability(candidate, reference, reference_name, settings.stability_z),
    ]
    broken = [line for ok, line in checks if ok is False]
    if broken:
        return Decision.refused, broken
    return Decision.promoted, [line for _ok, line in checks]
