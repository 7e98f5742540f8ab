"""How many simulators the samples stream asks for: the scaling rule, as a pure function.

The chart scales the ``dso worker simulate`` Deployment with KEDA's ``redis-streams`` scaler
(helm/dso/templates/simulator-scaledobject.yaml), which feeds the HorizontalPodAutoscaler two
metrics of the simulators' consumer group: its lag (entries not yet delivered) and its pending
entries (delivered, not yet acked). This module states the same rule in Python, so it is tested
on given lags, documented once (docs/scaling.md), and usable by a Ray job that sizes its own
simulator actors. It imports nothing but the settings: no Redis, no Ray, no clock.

The rule (Kubernetes' HPA algorithm, which KEDA drives):

1. per metric, replicas = ceil(value / target): lag / ``lag_per_replica`` and
   pending / the entries one simulator holds at once (``loop.simulator_batch``); the larger wins,
   so the simulators already busy are kept while the backlog is worked off;
2. a change within ``tolerance`` of the current count is no change (no flapping on noise);
3. a scale-down takes the highest recommendation of the last ``scale_down_stabilization_s``
   (hysteresis: a lag that dips for a poll does not remove simulators); scale-ups are immediate;
4. the result is clamped to [``min_replicas``, ``max_replicas``]; an idle stream (no lag, nothing
   pending) asks for ``min_replicas``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from dso.config import ScalingSettings


@dataclass(frozen=True)
class ScalingDecision:
    """What one evaluation decided, and the unstabilised recommendation to remember for the window."""

    replicas: int
    recommendation: int
    reason: str


def recommended_simulators(lag: int, pending: int, settings: ScalingSettings, in_flight_per_replica: int = 1) -> int:
    """Step 1 of the rule: simulators for the lag and for the work in flight (not clamped, no hysteresis)."""
    if lag < 0 or pending < 0:
        raise ValueError(f"lag and pending must be >= 0, got {lag} and {pending}")
    if in_flight_per_replica < 1:
        raise ValueError(f"in_flight_per_replica must be >= 1, got {in_flight_per_replica}")
    return max(math.ceil(lag / settings.lag_per_replica), math.ceil(pending / in_flight_per_replica))


def desired_simulators(
    lag: int,
    pending: int,
    current: int,
    settings: ScalingSettings,
    in_flight_per_replica: int = 1,
    window: tuple[int, ...] | list[int] = (),
) -> ScalingDecision:
    """The simulator count for this poll.

    ``window``: the recommendations of the polls within the last ``scale_down_stabilization_s``
    (``ScalingWindow`` keeps them); the caller adds this decision's ``recommendation`` to it.
    """
    if current < 0:
        raise ValueError(f"current must be >= 0, got {current}")
    raw = recommended_simulators(lag, pending, settings, in_flight_per_replica)
    if raw == 0:
        reason = "idle stream"
    elif current > 0 and abs(raw / current - 1.0) <= settings.tolerance:
        raw, reason = current, "within tolerance"
    else:
        reason = "lag" if math.ceil(lag / settings.lag_per_replica) >= math.ceil(pending / in_flight_per_replica) else "in flight"
    target = raw
    if target < current and window:
        held = max(window)
        if held > target:
            target, reason = min(held, current), "scale-down stabilisation"
    clamped = min(max(target, settings.min_replicas), settings.max_replicas)
    if clamped != target:
        reason = f"{reason}, clamped to [{settings.min_replicas}, {settings.max_replicas}]"
    return ScalingDecision(replicas=clamped, recommendation=raw, reason=reason)


@dataclass
class ScalingWindow:
    """The recommendations of the last ``scale_down_stabilization_s``; the caller passes the time in."""

    settings: ScalingSettings
    _entries: deque[tuple[float, int]] = field(default_factory=deque)

    def decide(self, now: float, lag: int, pending: int, current: int, in_flight_per_replica: int = 1) -> ScalingDecision:
        while self._entries and now - self._entries[0][0] > self.settings.scale_down_stabilization_s:
            self._entries.popleft()
        decision = desired_simulators(
            lag, pending, current, self.settings, in_flight_per_replica, [r for _, r in self._entries]
        )
        self._entries.append((now, decision.recommendation))
        return decision
