"""Aggregate per-sample evaluations into the paper's table (Table 1 columns), as JSON, a rich table or Markdown."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dso.evaluate.stability import SampleEval


@dataclass(frozen=True)
class EvalSummary:
    """% output over all samples; % stable, tilt and rotation over outputs; geometry means over outputs."""

    samples: int
    pct_output: float
    pct_stable: float
    mean_tilt_deg: float
    mean_rotation_deg: float
    chamfer: float
    fscore: float  # in percent, as the paper reports it
    base_area_ratio: float  # mean footprint of the base vs the truth's; a rise means flat base plates

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    return float(arr.mean()) if arr.size else math.nan


def summarize(results: Sequence[SampleEval]) -> EvalSummary:
    if not results:
        raise ValueError("cannot summarise an empty evaluation")
    outputs = [r for r in results if r.output]
    return EvalSummary(
        samples=len(results),
        pct_output=100.0 * len(outputs) / len(results),
        pct_stable=100.0 * sum(r.stable for r in outputs) / len(outputs) if outputs else math.nan,
        mean_tilt_deg=_mean([r.tilt_deg for r in outputs]),
        mean_rotation_deg=_mean([r.rotation_deg for r in outputs]),
        chamfer=_mean([r.chamfer for r in outputs]),
        fscore=100.0 * _mean([r.fscore for r in outputs]),
        base_area_ratio=_mean([r.base_area_ratio for r in outputs]),
    )


def by_family(results: Sequence[SampleEval]) -> dict[str, EvalSummary]:
    families = sorted({r.family for r in results})
    return {f: summarize([r for r in results if r.family == f]) for f in families}


COLUMNS = (
    ("% stable", "pct_stable", "{:.1f}"),
    ("% output", "pct_output", "{:.1f}"),
    ("tilt (deg)", "mean_tilt_deg", "{:.2f}"),
    ("rotation (deg)", "mean_rotation_deg", "{:.2f}"),
    ("Chamfer", "chamfer", "{:.4f}"),
    ("F-score@0.05", "fscore", "{:.2f}"),
    ("base area ratio", "base_area_ratio", "{:.2f}"),
    ("samples", "samples", "{:d}"),
)


def _cells(summary: EvalSummary) -> list[str]:
    return [fmt.format(getattr(summary, key)) for _, key, fmt in COLUMNS]


def markdown_table(rows: Mapping[str, EvalSummary], label: str = "model") -> str:
    head = f"| {label} | " + " | ".join(name for name, _, _ in COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    body = [f"| {name} | " + " | ".join(_cells(s)) + " |" for name, s in rows.items()]
    return "\n".join([head, rule, *body])


def rich_table(rows: Mapping[str, EvalSummary], title: str = "Held-out evaluation"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("model")
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="right")
    for name, s in rows.items():
        table.add_row(name, *_cells(s))
    return table


def write_json(path: Path, results: Sequence[SampleEval], extra: dict | None = None) -> dict:
    """Summary, per-family summaries and every sample, in one JSON file (NaN written as null)."""
    doc = {
        "summary": summarize(results).to_dict(),
        "by_family": {k: v.to_dict() for k, v in by_family(results).items()},
        "samples": [r.to_dict() for r in results],
        **(extra or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_nan_to_none(doc), indent=1))
    return doc


def _nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x
