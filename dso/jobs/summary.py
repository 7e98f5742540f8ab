"""The end-of-run summary: samples, stability rate per adapter version, versions published, latency."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dso.broker.broker import Broker
from dso.broker.promotion import PromotionStore


@dataclass
class LoopSummary:
    """What a run did, read back from the broker's live statistics."""

    run_dir: str
    adapter_dir: str
    seconds: float
    totals: dict[str, Any]
    by_version: dict[int, dict[str, Any]]
    versions_published: list[int]
    learner: dict[str, Any]
    queues: dict[str, Any]
    dead_letters: int
    adoption_latency_s: dict[str, float | None] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)  # API URL, its metrics, each actor's /metrics
    restarts: dict[str, int] = field(default_factory=dict)  # loop re-issues per role (actors that crashed and came back)
    failures: dict[str, str] = field(default_factory=dict)  # actor name -> why it was given up on
    backlog_after_drain: int | None = None  # queued entries the drain did not finish (pending: reclaimed next start)
    broker_restarts: int = 0  # times the embedded Valkey died and was restarted from its AOF
    unreachable: list[str] = field(default_factory=list)  # what could not be read for this summary
    canary: dict[str, Any] = field(default_factory=dict)  # promoted version, decision counts, base vs promoted scores

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "problems": self.problems()}, indent=2, default=str)

    @classmethod
    def partial(cls, run_dir: Path, seconds: float, endpoints: dict[str, Any] | None, missing: str) -> LoopSummary:
        """A summary when the broker is gone: no counts, and ``missing`` says what could not be read."""
        return cls(
            run_dir=str(run_dir), adapter_dir="", seconds=seconds, totals={}, by_version={}, versions_published=[],
            learner={}, queues={}, dead_letters=0, endpoints=dict(endpoints or {}), unreachable=[missing],
        )

    def problems(self) -> list[str]:
        """One line per reason this run did not end cleanly (empty: exit 0): failed roles, work left, unread data."""
        lines = [f"{name} failed: {why}" for name, why in self.failures.items()]
        if self.backlog_after_drain:
            lines.append(f"{self.backlog_after_drain} queued entries left unlabelled after the drain (kept; reclaimed on the next start)")
        lines += [f"could not read {what}" for what in self.unreachable]
        return lines


def collect_summary(broker: Broker, run_dir: Path, seconds: float, endpoints: dict[str, Any] | None = None) -> LoopSummary:
    snapshot = broker.stats.snapshot()
    return LoopSummary(
        run_dir=str(run_dir),
        adapter_dir=broker.adapters.url,
        seconds=seconds,
        totals=snapshot["totals"],
        by_version=snapshot["by_version"],
        versions_published=broker.adapters.versions(),
        learner=snapshot["learner"],
        queues=snapshot["queues"],
        dead_letters=broker.samples.dead_letter_count(),
        adoption_latency_s=broker.adoptions.latency_quantiles(),
        endpoints=dict(endpoints or {}),
        canary=canary_summary(broker.promotion),
    )


CANARY_SUMMARY_SCORES = ("stable_ratio", "paired_drift", "chamfer")


def canary_summary(promotion: PromotionStore) -> dict[str, Any]:
    """The promoted version, decision counts, and the base's and the promoted version's headline scores."""
    records = promotion.all()
    promoted = promotion.promoted()

    def scores(version: int) -> dict[str, float] | None:
        record = records.get(version)
        return {k: record.scores[k] for k in CANARY_SUMMARY_SCORES if k in record.scores} if record and record.scores else None

    return {"promoted": promoted, "counts": promotion.counts(), "base": scores(0), "promoted_scores": scores(promoted)}


def _versions(versions: list[int]) -> str:
    if not versions:
        return "none"
    return f"{len(versions)} (v{versions[0]}..v{versions[-1]})" if len(versions) > 3 else ", ".join(map(str, versions))


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.1f} %"


def progress_line(snapshot: dict[str, Any], elapsed_s: float) -> str:
    """One line of live progress from a StatsStore snapshot."""
    totals, window, learner = snapshot["totals"], snapshot["window"], snapshot["learner"]
    backlog = sum(q["backlog"] for q in snapshot["queues"].values())
    return (
        f"[{elapsed_s:6.0f} s] generated {totals['generated']}  labelled {totals['labelled']}  "
        f"stable(window) {_pct(window['stability_rate'])}  version {snapshot['current_version'] or 0}  "
        f"learner step {learner.get('step', 0)} loss {learner.get('loss', float('nan')):.4f}  backlog {backlog}"
    )


SUMMARY_ROWS = 12  # adapter versions shown in the summary table


def _scores_line(scores: dict[str, float] | None) -> str:
    if not scores:
        return "not scored"
    return "  ".join(f"{k} {scores[k]:.4g}" for k in CANARY_SUMMARY_SCORES if k in scores)


def canary_lines(canary: dict[str, Any]) -> str:
    """The canary block of the summary: decisions, then the base and the promoted version side by side."""
    counts = canary.get("counts", {})
    promoted = canary.get("promoted", 0)
    return (
        f"canary: promoted v{promoted}   decisions: {counts.get('promoted', 0)} promoted, {counts.get('refused', 0)} refused, "
        f"{counts.get('superseded', 0)} superseded\n"
        f"  base (v0):        {_scores_line(canary.get('base'))}\n"
        f"  promoted (v{promoted}):{' ' * max(1, 5 - len(str(promoted)))}{_scores_line(canary.get('promoted_scores'))}"
    )


def _row(version: int, row: dict[str, Any]) -> list[str]:
    counts = [str(row[k]) for k in ("generated", "labelled", "stable", "unstable", "invalid")]
    return [str(version), *counts, _pct(row["stability_rate"])]


def print_summary(summary: LoopSummary, console: Console) -> None:
    table = Table(title=f"DSO loop: {summary.seconds:.0f} s")
    for column in ("adapter version", "generated", "labelled", "stable", "unstable", "invalid", "stability rate"):
        table.add_column(column, justify="right")
    rows = sorted(summary.by_version.items())
    if len(rows) > SUMMARY_ROWS:  # the first version and the newest ones tell the story
        table.add_row(*map(str, _row(*rows[0])))
        table.add_row("...", *[""] * 6)
        rows = rows[-(SUMMARY_ROWS - 1):]
    for version, row in rows:
        table.add_row(*_row(version, row))
    t = summary.totals
    table.add_row("all", *(str(t.get(k, "-")) for k in ("generated", "labelled", "stable", "unstable", "invalid")), _pct(t.get("stability_rate")))
    console.print(table)
    latency = summary.adoption_latency_s
    p50, p95 = latency.get("p50"), latency.get("p95")
    console.print(
        f"versions published: {_versions(summary.versions_published)}   learner step: {summary.learner.get('step', 0)}   "
        f"dead-lettered: {summary.dead_letters}   publish-to-adopt p50/p95: "
        + (f"{p50:.3f} s / {p95:.3f} s" if p50 is not None else "-")
    )
    if summary.canary:
        console.print(canary_lines(summary.canary))
    if any(summary.restarts.values()) or summary.broker_restarts:
        counts = {**summary.restarts, **({"valkey": summary.broker_restarts} if summary.broker_restarts else {})}
        console.print("restarts: " + "  ".join(f"{role} {n}" for role, n in counts.items()))
    for line in summary.problems():
        console.print(line, style="bold red", markup=False)
    console.print(f"run dir: {summary.run_dir}\nadapters: {summary.adapter_dir}\nsummary: {Path(summary.run_dir) / 'summary.json'}")
    endpoints = summary.endpoints
    if "api" in endpoints:
        console.print(
            f"API (stopped with the loop): {endpoints['api']}  metrics {endpoints['metrics']}  "
            f"scrape targets {endpoints['scrape_targets']}"
        )
    for name, url in endpoints.get("process_metrics", {}).items():
        console.print(f"metrics of {name}: {url}")
