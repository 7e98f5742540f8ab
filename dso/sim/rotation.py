"""Angles of a free body's orientation: tilt (yaw ignored) and total rotation."""

from __future__ import annotations

import math

import numpy as np


def _unit_quat(quat) -> np.ndarray:
    q = np.asarray(quat, dtype=float).reshape(4)
    n = float(np.linalg.norm(q))
    if not math.isfinite(n) or n == 0.0:
        raise ValueError(f"quaternion must be finite and non-zero, got {q.tolist()}")
    return q / n


def tilt_deg(quat) -> float:
    """Angle between the body's up axis and world +z, in degrees; yaw ignored.

    ``quat`` is (w, x, y, z), body -> world. The body z axis in world is the
    third column of the rotation matrix, whose z component is 1 - 2(x^2 + y^2).
    """
    w, x, y, z = _unit_quat(quat)
    cos_tilt = 1.0 - 2.0 * (x * x + y * y)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos_tilt))))


def rotation_deg(quat, initial=(1.0, 0.0, 0.0, 0.0)) -> float:
    """Total rotation angle from ``initial`` to ``quat`` in degrees, in [0, 180]; yaw included."""
    q = _unit_quat(quat)
    q0 = _unit_quat(initial)
    dot = abs(float(np.dot(q, q0)))  # |<q, q0>| = cos(angle / 2) of the relative rotation
    return math.degrees(2.0 * math.acos(min(1.0, dot)))
