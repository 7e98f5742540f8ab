"""Live statistics of the loop, kept in Redis where the API and the metrics exporter read them.

Counters (hashes) per adapter version and in total: generated, labelled, stable,
unstable, invalid. A sliding window over the most recent events (capped lists of
``time,version,...`` entries: the last ``stats_window_samples`` events, of which only
those younger than ``stats_window_seconds`` count) gives the *current* stability
rate, which is what a dashboard should plot while the adapter improves.

Rates (``generated_per_s``, ``labelled_per_s``) divide the events of the window by
the time the window actually covers, not by ``stats_window_seconds``: from the
window's start, or from the oldest event still held when the run is younger than
the window or the event cap dropped older ones (that oldest event only marks the
start and is not counted: its work was done before its time stamp), to now. A run
of 10 s labelling 6/s reports 6/s, not 60 / 300 s; a stopped loop decays to 0.

Stability rate = stable / (stable + unstable): verdicts the simulator could not
give (invalid input, sim error, timeout) are counted as ``invalid`` and reported
as their own rate, not folded into either class. The class comes from the
verdict itself (``dso.sim.verdict.Verdict.outcome`` and ``Outcome.counted_as``).

Record a labelled sample once: call ``record_labelled`` when the replay buffer
reports ``IngestResult.INSERTED`` (or SKIPPED), so redeliveries do not count twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from dso.broker.keys import KeySpace
from dso.broker.registry import AdapterRegistry
from dso.broker.streams import WorkQueue
from dso.config import BrokerSettings
from dso.sim.verdict import Outcome, Verdict

COUNTERS = ("generated", "labelled", "stable", "unstable", "invalid")
_OUTCOME_CODES = {Outcome.stable.value: "s", Outcome.unstable.value: "u", Outcome.invalid.value: "i"}
_CODE_OUTCOMES = {code.encode(): outcome for outcome, code in _OUTCOME_CODES.items()}


@dataclass(frozen=True)
class VerdictEvent:
    """One counted verdict of the recent-events window."""

    time: float
    version: int
    outcome: str  # stable | unstable | invalid


def parse_verdict_events(raw: Sequence[bytes]) -> list[VerdictEvent]:
    """Decode ``time,version,code`` entries, oldest first; malformed entries are skipped."""
    out = []
    for entry in raw:
        try:
            stamp, version, code = entry.split(b",")
            out.append(VerdictEvent(float(stamp), int(version), _CODE_OUTCOMES[code]))
        except (ValueError, KeyError):
            continue
    out.sort(key=lambda e: e.time)
    return out


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _per_second(stamps_counts: Sequence[tuple[float, int]], cutoff: float, now: float) -> tuple[float, float]:
    """(events per second, seconds covered) over the part of ``(stamp, count)`` events the window covers.

    The window starts at ``cutoff`` or at the oldest event held, whichever is later;
    an event at that start is the boundary and is not counted (see the module docstring).
    """
    if not stamps_counts:
        return 0.0, max(0.0, now - cutoff)
    start = max(cutoff, min(stamp for stamp, _ in stamps_counts))
    covered = now - start
    if covered <= 0:
        return 0.0, 0.0
    return sum(count for stamp, count in stamps_counts if stamp > start) / covered, covered


def _with_rates(counts: Mapping[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {name: int(counts.get(name, 0)) for name in COUNTERS}
    out["stability_rate"] = _rate(out["stable"], out["stable"] + out["unstable"])
    out["invalid_rate"] = _rate(out["invalid"], out["labelled"])
    return out


class StatsStore:
    """Writes and reads the live statistics of one run."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        settings: BrokerSettings,
        queues: Sequence[WorkQueue] = (),
        registry: AdapterRegistry | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.window_samples = settings.stats_window_samples
        self.window_seconds = settings.stats_window_seconds
        self.queues = list(queues)
        self.registry = registry

    # --- writing ------------------------------------------------------------------

    def record_generated(
        self, adapter_version: int, count: int = 1, seconds: float = 0.0, pipe: redis.client.Pipeline | None = None
    ) -> None:
        """``count`` samples made by ``adapter_version`` (``seconds``: their total generation time).

        With ``pipe`` the writes are only queued there, for the caller's transaction (the samples themselves).
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        now = time.time()
        own = pipe is None
        pipe = self.client.pipeline(transaction=True) if own else pipe
        for key in (self.keys.stats("totals"), self._version_key(adapter_version)):
            pipe.hincrby(key, "generated", count)
            pipe.hincrbyfloat(key, "generation_seconds", seconds)
        pipe.sadd(self.keys.stats("versions"), adapter_version)
        pipe.lpush(self.keys.stats("generated_events"), f"{now:.3f},{adapter_version},{count}")
        pipe.ltrim(self.keys.stats("generated_events"), 0, self.window_samples - 1)
        if own:
            pipe.execute()

    def record_labelled(self, verdict: Verdict, adapter_version: int) -> str:
        """One verdict on a sample of ``adapter_version``; returns its counted class (``Outcome.counted_as``)."""
        outcome = verdict.outcome.counted_as
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        for key in (self.keys.stats("totals"), self._version_key(adapter_version)):
            pipe.hincrby(key, "labelled", 1)
            pipe.hincrby(key, outcome, 1)
        pipe.sadd(self.keys.stats("versions"), adapter_version)
        pipe.lpush(self.keys.stats("labelled_events"), f"{now:.3f},{adapter_version},{_OUTCOME_CODES[outcome]}")
        pipe.ltrim(self.keys.stats("labelled_events"), 0, self.window_samples - 1)
        pipe.execute()
        return outcome

    def record_learner(self, step: int, loss: float, version: int, **extra: float) -> None:
        """The learner's latest step, loss and the adapter version it trains (plus any scalar extras)."""
        now = time.time()
        fields: dict[str, Any] = {"step": step, "loss": float(loss), "version": version, "updated_at": now}
        fields.update({k: float(v) for k, v in extra.items()})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.stats("learner"), mapping=fields)
        pipe.lpush(self.keys.stats("losses"), f"{now:.3f},{step},{float(loss)!r}")
        pipe.ltrim(self.keys.stats("losses"), 0, self.window_samples - 1)
        pipe.execute()

    # --- reading ------------------------------------------------------------------

    def verdict_events(self) -> list[VerdictEvent]:
        """The newest ``stats_window_samples`` counted verdicts, oldest first (the console's chart)."""
        return parse_verdict_events(self.client.lrange(self.keys.stats("labelled_events"), 0, -1))

    def snapshot(self) -> dict[str, Any]:
        """Everything a dashboard needs, as plain JSON-ready data."""
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.stats("totals"))
        pipe.smembers(self.keys.stats("versions"))
        pipe.hgetall(self.keys.stats("learner"))
        pipe.lrange(self.keys.stats("labelled_events"), 0, -1)
        pipe.lrange(self.keys.stats("generated_events"), 0, -1)
        pipe.lrange(self.keys.stats("losses"), 0, -1)
        totals_raw, versions_raw, learner_raw, labelled_events, generated_events, losses = pipe.execute()
        versions = sorted(int(v) for v in versions_raw)
        by_version = self._by_version(versions)
        learner = {k.decode(): float(v) for k, v in learner_raw.items()}
        for name in ("step", "version"):
            if name in learner:
                learner[name] = int(learner[name])
        current = self.registry.latest() if self.registry is not None else None
        if current is None:
            current = learner.get("version")
        cutoff = now - self.window_seconds
        recent_losses = [float(e.split(b",")[2]) for e in losses if float(e.split(b",")[0]) >= cutoff]
        learner["loss_window_mean"] = sum(recent_losses) / len(recent_losses) if recent_losses else None
        return {
            "time": now,
            "current_version": current,
            "totals": self._totals(totals_raw),
            "by_version": by_version,
            "window": self._window(labelled_events, generated_events, cutoff, current, now),
            "learner": learner,
            "queues": {queue.name: queue.depth().as_dict() for queue in self.queues},
        }

    # --- helpers -------------------------------------------------------------------

    def _version_key(self, version: int) -> str:
        return self.keys.stats("version", version)

    @staticmethod
    def _decode_counts(raw: Mapping[bytes, bytes]) -> dict[str, int]:
        return {k.decode(): int(float(v)) for k, v in raw.items() if k.decode() in COUNTERS}

    def _totals(self, raw: Mapping[bytes, bytes]) -> dict[str, Any]:
        out = _with_rates(self._decode_counts(raw))
        out["generation_seconds"] = float(raw.get(b"generation_seconds", 0.0))
        return out

    def _by_version(self, versions: list[int]) -> dict[int, dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for version in versions:
            pipe.hgetall(self._version_key(version))
        return {v: _with_rates(self._decode_counts(raw)) for v, raw in zip(versions, pipe.execute(), strict=True)}

    def _window(
        self,
        labelled_events: list[bytes],
        generated_events: list[bytes],
        cutoff: float,
        current: int | None,
        now: float,
    ) -> dict[str, Any]:
        counts = dict.fromkeys(COUNTERS, 0)
        staleness: list[int] = []
        code_to_outcome = {v.encode(): k for k, v in _OUTCOME_CODES.items()}
        for event in labelled_events:
            stamp, version, code = event.split(b",")
            if float(stamp) < cutoff:
                continue
            counts["labelled"] += 1
            counts[code_to_outcome[code]] += 1
            if current is not None:
                staleness.append(current - int(version))
        for event in generated_events:
            stamp, _version, count = event.split(b",")
            if float(stamp) >= cutoff:
                counts["generated"] += int(count)
        out = _with_rates(counts)
        out["samples"] = self.window_samples
        out["seconds"] = self.window_seconds
        labelled_per_s, out["labelled_seconds"] = _per_second(
            [(float(e.split(b",")[0]), 1) for e in labelled_events], cutoff, now
        )
        generated_per_s, out["generated_seconds"] = _per_second(
            [(float(e.split(b",")[0]), int(e.split(b",")[2])) for e in generated_events], cutoff, now
        )
        out["labelled_per_s"], out["generated_per_s"] = labelled_per_s, generated_per_s
        out["staleness_mean"] = sum(staleness) / len(staleness) if staleness else None
        out["staleness_max"] = max(staleness) if staleness else None
        return out
