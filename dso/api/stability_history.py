"""The stability rate over time, for the console's chart, from the stats store's verdict events.

The stats store (``dso.broker.stats``) keeps the newest ``broker.stats_window_samples``
verdict events (``time,version,outcome``) in a capped list; this module buckets them into
equal time slices from the oldest event kept to now. The chart therefore covers the
last N verdicts, however long they took; the per-version totals in ``/v1/stats`` cover
the whole run. Adapter publish times come from the registry's manifests; the canary's
score of each version comes from ``broker.promotion`` (never from its Redis keys directly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from dso.broker.keys import KeySpace
from dso.broker.promotion import PromotionStore

CANARY_CHART_SCORES = ("stable_ratio", "paired_drift", "chamfer")  # the scores a chart point carries

_OUTCOMES = {b"s": "stable", b"u": "unstable", b"i": "invalid"}


@dataclass(frozen=True)
class VerdictEvent:
    time: float
    version: int
    outcome: str  # stable | unstable | invalid


def parse_events(raw: list[bytes]) -> list[VerdictEvent]:
    """Decode ``time,version,code`` entries, oldest first; malformed entries are skipped."""
    out = []
    for entry in raw:
        try:
            stamp, version, code = entry.split(b",")
            out.append(VerdictEvent(float(stamp), int(version), _OUTCOMES[code]))
        except (ValueError, KeyError):
            continue
    out.sort(key=lambda e: e.time)
    return out


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


def read_events(client: redis.Redis, keys: KeySpace) -> list[VerdictEvent]:
    return parse_events(client.lrange(keys.stats("labelled_events"), 0, -1))


def adapter_publications(client: redis.Redis, keys: KeySpace) -> list[dict[str, Any]]:
    """Every announced adapter version with its publish time (Unix seconds), oldest first."""
    out = []
    for version, raw in client.hgetall(keys.adapter_manifests()).items():
        try:
            manifest = json.loads(raw)
            created = datetime.fromisoformat(manifest["created_at"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        out.append({"version": int(version), "created_at": created, "step": manifest.get("step"),
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
