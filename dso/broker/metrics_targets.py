"""Where every process of a run serves ``/metrics``: a scrape-target set in Redis with expiry.

Layout: ``<prefix>:metrics:targets``, a sorted set of ``["component", "host:port"]``
(JSON) scored by the Unix time the entry expires. The broker only stores and expires
entries; what a component is, how often to re-announce and the Prometheus HTTP SD
shape are :mod:`dso.telemetry`'s (``MetricsTargets``, ``TargetAnnouncer``).
"""

from __future__ import annotations

import json

import redis

from dso.broker.keys import KeySpace


class MetricsTargetStore:
    """Scrape targets of one run, each with the time it expires."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client = client
        self.key = keys.metrics_targets()

    def put(self, component: str, address: str, expires_at: float) -> None:
        """Add or refresh one target until ``expires_at`` (Unix seconds)."""
        self.client.zadd(self.key, {json.dumps([component, address]): expires_at})

    def remove(self, component: str, address: str) -> None:
        self.client.zrem(self.key, json.dumps([component, address]))

    def live(self, now: float) -> list[tuple[str, str]]:
        """``(component, address)`` of every target not expired at ``now``, sorted; expired ones are dropped."""
        self.client.zremrangebyscore(self.key, "-inf", now)
        out = []
        for raw in self.client.zrangebyscore(self.key, now, "+inf"):
            component, address = json.loads(raw)
            out.append((component, address))
        return sorted(out)
