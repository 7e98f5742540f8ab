"""Tilt (yaw ignored) and total rotation angle of orientations given as quaternions (w, x, y, z)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dso.sim.rotation import rotation_deg, tilt_deg


def axis_angle(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    half = math.radians(degrees) / 2
    return np.r_[math.cos(half), math.sin(half) * axis]


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (apply b, then a)."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def test_identity_has_no_tilt_and_no_rotation():
    assert tilt_deg([1, 0, 0, 0]) == pytest.approx(0.0)
    assert rotation_deg([1, 0, 0, 0]) == pytest.approx(0.0)


@pytest.mark.parametrize("yaw", [10.0, 90.0, 179.0, 270.0])
def test_yaw_only_is_rotation_but_not_tilt(yaw):
    q = axis_angle([0, 0, 1], yaw)
    assert tilt_deg(q) == pytest.approx(0.0, abs=1e-6)
    assert rotation_deg(q) == pytest.approx(min(yaw, 360 - yaw), abs=1e-6)


@pytest.mark.parametrize("axis", [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0.3, -0.8, 0]])
@pytest.mark.parametrize("angle", [5.0, 20.0, 90.0, 150.0])
def test_tilt_about_a_horizontal_axis_is_the_angle(axis, angle):
    q = axis_angle(axis, angle)
    assert tilt_deg(q) == pytest.approx(angle, abs=1e-6)
    assert rotation_deg(q) == pytest.approx(angle, abs=1e-6)


def test_yaw_before_or_after_a_tilt_changes_rotation_not_tilt():
    tilt = axis_angle([1, 0, 0], 30.0)
    yaw = axis_angle([0, 0, 1], 70.0)
    for q in (compose(yaw, tilt), compose(tilt, yaw)):
        assert tilt_deg(q) == pytest.approx(30.0, abs=1e-6)
        assert rotation_deg(q) > 30.0 + 1.0


def test_upside_down_is_180_degrees_of_tilt():
    assert tilt_deg(axis_angle([0, 1, 0], 180.0)) == pytest.approx(180.0, abs=1e-6)


def test_quaternion_sign_and_scale_do_not_matter():
    q = axis_angle([1, 2, 3], 40.0)
    for variant in (-q, 3.0 * q):
        assert tilt_deg(variant) == pytest.approx(tilt_deg(q))
        assert rotation_deg(variant) == pytest.approx(rotation_deg(q))


def test_rotation_is_relative_to_the_initial_orientation():
    start = axis_angle([0, 1, 0], 25.0)
    end = compose(axis_angle([0, 1, 0], 10.0), start)
    assert rotation_deg(end, initial=start) == pytest.approx(10.0, abs=1e-6)


@pytest.mark.parametrize("bad", [[0, 0, 0, 0], [math.nan, 0, 0, 1], [math.inf, 0, 0, 0]])
def test_degenerate_quaternions_are_rejected(bad):
    with pytest.raises(ValueError, match="quaternion"):
        tilt_deg(bad)
