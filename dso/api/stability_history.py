"""The stability rate over time, for the console's chart, from the stats store's verdict events.

The stats store (``dso.broker.stats``, read through ``StatsStore.verdict_events``) keeps the newest ``broker.stats_window_samples``
verdict events (``time,version,outcome``) in a capped list; this module buckets them into
equal time slices from the oldest event kept to now. The chart therefore covers the
last N verdicts, however long they took; the per-version totals in ``/v1/stats`` cover
the whole run. Adapter publish times come from the registry's manifests (``AdapterRegistry.manifests``); the canary's
score of each version comes from ``broker.promotion`` (never from its Redis keys directly).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dso.broker.promotion import PromotionStore
from dso.broker.registry import AdapterRegistry
from dso.broker.stats import VerdictEvent

CANARY_CHART_SCORES = ("stable_ratio", "paired_drift", "chamfer")  # the scores a chart point carries

__all__ = ["VerdictEvent", "adapter_publications", "bucket_events", "canary_points"]


def bucket_events(events: list[VerdictEvent], buckets: int, now: float) -> list[dict[str, Any]]:
    """``buckets`` equal slices from the oldest event to ``now``: counts and rate per slice."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not events:
        return []
    start = events[0].time
    end = max(now, events[-1].time)
    width = (end - start) / buckets if end > start else 1.0
    rows = [
        {"start": start + i * width, "end": start + (i + 1) * width, "stable": 0, "unstable": 0, "invalid": 0,
         "max_version": None}
        for i in range(buckets)
    ]
    for event in events:
        row = rows[min(int((event.time - start) / width), buckets - 1)]
        row[event.outcome] += 1
        row["max_version"] = event.version if row["max_version"] is None else max(row["max_version"], event.version)
    for row in rows:
        judged = row["stable"] + row["unstable"]
        row["stability_rate"] = row["stable"] / judged if judged else None
    return rows


def adapter_publications(registry: AdapterRegistry) -> list[dict[str, Any]]:
    """Every announced adapter version with its publish time (Unix seconds), oldest first."""
    out = []
    for version, manifest in registry.manifests().items():
        try:
            created = datetime.fromisoformat(manifest["created_at"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        out.append({"version": version, "created_at": created, "step": manifest.get("step"),
                    "objective": manifest.get("objective")})
    out.sort(key=lambda a: a["version"])
    return out


def canary_points(promotion: PromotionStore) -> list[dict[str, Any]]:
    """Every scored version (the baseline included) with its decision time and chart scores, oldest first."""
    out = []
    for version, record in promotion.all().items():
        point: dict[str, Any] = {"version": version, "decided_at": record.decided_at, "decision": record.decision}
        point.update({name: record.scores.get(name) for name in CANARY_CHART_SCORES})
        out.append(point)
    out.sort(key=lambda p: (p["decided_at"], p["version"]))
    return out
