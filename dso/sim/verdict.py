"""The oracle's answer for one input: a JSON-serialisable record."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


class SimStatus(str, Enum):
    """Whether the verdict's physics fields mean anything."""

    ok = "ok"
    invalid_input = "invalid_input"  # the input cannot be simulated (empty, degenerate, unreadable...)
    sim_error = "sim_error"  # MuJoCo failed, or the worker process died
    timeout = "timeout"  # the wall-clock limit per item ran out


class StopReason(str, Enum):
    """Why the stepping loop ended."""

    rest = "rest"  # velocities stayed under the rest thresholds for the dwell time
    fell = "fell"  # tilted past fall_stop_tilt_deg while moving: cannot come back upright
    max_time = "max_time"  # the simulated-time budget ran out
    none = "none"  # no simulation ran


class Verdict(BaseModel):
    """Stability of one rigid object released upright on flat ground.

    ``stable`` is the reward DSO learns from: the body's up axis ends within
    ``tilt_threshold_deg`` of vertical (yaw ignored). ``rotation_deg`` is the
    total rotation angle (yaw included), the angle the paper's code reports.
    """

    model_config = ConfigDict(extra="forbid")

    status: SimStatus
    stable: bool = False
    tilt_deg: float | None = None
    rotation_deg: float | None = None
    settle_time_s: float | None = None  # sim time at which rest began; None if never at rest
    stop_reason: StopReason = StopReason.none
    sim_time_s: float = 0.0
    steps: int = 0
    position: list[float] | None = None  # final body-frame origin, metres
    quaternion: list[float] | None = None  # final orientation, (w, x, y, z)
    message: str = ""
    mode: str | None = None  # collision geometry actually used: boxes | decompose | hull
    collision_geoms: int = 0  # geoms that collide: boxes on hull vertices, convex parts, or 1 hull
    box_count: int = 0  # boxes in the exact partition of a grid (0 for meshes)
    mass: float | None = None  # kg
    com: list[float] | None = None  # centre of mass in the initial (placed) frame, metres
    elapsed_s: float = 0.0  # wall-clock seconds for this item, geometry included

    @classmethod
    def failure(cls, status: SimStatus, message: str, elapsed_s: float = 0.0, **extra) -> "Verdict":
        """A verdict for an input that produced no physics result."""
        if status == SimStatus.ok:
            raise ValueError("failure verdicts need a non-ok status")
        return cls(status=status, message=message, elapsed_s=elapsed_s, **extra)
