"""dso.scaling: the simulator count the samples stream asks for, on given lags."""

from __future__ import annotations

import pytest

from dso.config import ScalingSettings
from dso.scaling import ScalingWindow, desired_simulators, recommended_simulators

S = ScalingSettings(min_replicas=1, max_replicas=16, lag_per_replica=8, tolerance=0.1, scale_down_stabilization_s=300)


@pytest.mark.parametrize(
    ("lag", "pending", "in_flight", "want"),
    [(0, 0, 1, 0), (1, 0, 1, 1), (8, 0, 1, 1), (9, 0, 1, 2), (64, 3, 1, 8), (0, 5, 1, 5), (16, 12, 4, 3), (40, 3, 1, 5)],
)
def test_recommendation_is_the_larger_of_lag_and_in_flight(lag: int, pending: int, in_flight: int, want: int) -> None:
    assert recommended_simulators(lag, pending, S, in_flight) == want


@pytest.mark.parametrize(
    ("lag", "pending", "current", "want"),
    [
        (0, 0, 4, 1),  # idle stream: down to min (no window: nothing recent holds it)
        (0, 0, 0, 1),  # min 1 even from zero
        (1000, 0, 2, 16),  # clamped to max
        (80, 0, 10, 10),  # exactly on target
        (84, 0, 12, 12),  # 11 wanted, 8 % off: within tolerance
        (96, 0, 10, 12),  # 20 % off: scale out
        (8, 3, 3, 3),  # busy simulators are kept while the lag is small
    ],
)
def test_desired_simulators_on_given_lags(lag: int, pending: int, current: int, want: int) -> None:
    assert desired_simulators(lag, pending, current, S).replicas == want


def test_scale_to_zero_when_min_is_zero() -> None:
    zero = S.model_copy(update={"min_replicas": 0})
    assert desired_simulators(0, 0, 3, zero).replicas == 0
    assert desired_simulators(1, 0, 0, zero).replicas == 1  # the first sample wakes one


def test_scale_down_waits_out_the_stabilisation_window_scale_up_does_not() -> None:
    window = ScalingWindow(S)
    assert window.decide(0.0, lag=96, pending=0, current=2).replicas == 12  # up at once
    assert window.decide(15.0, lag=0, pending=4, current=12).replicas == 12  # a dip: held by the window
    assert window.decide(200.0, lag=8, pending=1, current=12).replicas == 12
    assert window.decide(301.0, lag=8, pending=1, current=12).replicas == 4  # the 12 is out of the window; 4 is newest max
    decision = window.decide(620.0, lag=0, pending=1, current=4)
    assert decision.replicas == 1 and decision.recommendation == 1


def test_stabilisation_never_scales_up_and_the_window_is_the_callers() -> None:
    decision = desired_simulators(0, 2, 5, S, window=[30])
    assert decision.replicas == 5 and decision.reason == "scale-down stabilisation"
    assert desired_simulators(0, 2, 5, S, window=[]).replicas == 2


def test_bad_inputs_and_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        recommended_simulators(-1, 0, S)
    with pytest.raises(ValueError):
        recommended_simulators(1, 0, S, in_flight_per_replica=0)
    with pytest.raises(ValueError):
        desired_simulators(1, 0, -1, S)
    with pytest.raises(ValueError, match="min_replicas"):
        ScalingSettings(min_replicas=5, max_replicas=4)
