"""The run's record of adapter adoptions: when each generator started sampling from each new version.

This is a run *record* in Redis, not a metric: Prometheus metrics (the
``dso_adapter_publish_to_adopt_seconds`` histogram among them) live in
:mod:`dso.telemetry` only, and each generator feeds both through
``GeneratorWorker.maybe_adopt``. The record exists because a run's summary and
the bench need the latencies of *every* generator after the actors are gone,
which no per-process exporter can give; it sits next to StatsStore under
``<prefix>:stats:adoptions`` (a capped list of ``time,version,latency_s,worker``).
Open it as ``broker.adoptions`` (``dso.broker.Broker``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import redis

from dso.broker.keys import KeySpace

ADOPTIONS_KEY = "adoptions"
MAX_EVENTS = 10_000


@dataclass(frozen=True)
class Adoption:
    time: float
    version: int
    latency_s: float  # adapter manifest time -> first batch sampled from it
    worker: str


class AdoptionLog:
    """Append and read adoption events of one run."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client = client
        self.key = keys.stats(ADOPTIONS_KEY)

    def record(self, version: int, latency_s: float, worker: str) -> None:
        if "," in worker:
            raise ValueError(f"worker name must not contain ',': {worker!r}")
        pipe = self.client.pipeline(transaction=True)
        pipe.lpush(self.key, f"{time.time():.3f},{int(version)},{float(latency_s):.6f},{worker}")
        pipe.ltrim(self.key, 0, MAX_EVENTS - 1)
        pipe.execute()

    def events(self) -> list[Adoption]:
        """Oldest first."""
        out = []
        for raw in reversed(self.client.lrange(self.key, 0, -1)):
            stamp, version, latency, worker = raw.decode().split(",", 3)
            out.append(Adoption(float(stamp), int(version), float(latency), worker))
        return out

    def latency_quantiles(self, quantiles: tuple[float, ...] = (0.5, 0.95)) -> dict[str, float | None]:
        """``{"p50": ..., "p95": ...}`` over every recorded adoption (None before the first)."""
        latencies = [event.latency_s for event in self.events()]
        return {
            f"p{round(q * 100)}": (float(np.quantile(latencies, q)) if latencies else None) for q in quantiles
        }
