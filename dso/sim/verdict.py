"""The oracle's answer for one input: a JSON-serialisable record, the one verdict type of the loop.

Every oracle returns a ``Verdict``; the simulator workers put it unchanged into the
broker's labelled records, and stats, Prometheus metrics, the replay buffer, the API
and the console all read its ``outcome`` (``Verdict.outcome``, the single place that
turns a status and a stability flag into stable / unstable / invalid / error).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict


class SimStatus(str, Enum):
    """Whether the verdict's physics fields mean anything."""

    ok = "ok"
    invalid_input = "invalid_input"  # the input cannot be simulated (empty, degenerate, unreadable...)
    sim_error = "sim_error"  # MuJoCo failed, or the worker process died
    timeout = "timeout"  # the wall-clock limit per item ran out


class Outcome(str, Enum):
    """What a verdict means for the loop (the ``result`` label of ``dso_samples_labelled_total``)."""

    stable = "stable"  # judged, and it stands
    unstable = "unstable"  # judged, and it falls
    invalid = "invalid"  # the input was not a usable object (status invalid_input)
    error = "error"  # the oracle failed on it (status sim_error or timeout)

    @property
    def judged(self) -> bool:
        """True when the oracle actually judged the object: a label the learner can train on."""
        return self in (Outcome.stable, Outcome.unstable)

    @property
    def counted_as(self) -> str:
        """Its class in the run's counters (stats, per-prompt stats): stable, unstable or invalid.

        The counters keep one ``invalid`` class for every verdict without a label (invalid
        input, simulator error, timeout); Prometheus keeps ``invalid`` and ``error`` apart.
        """
        return self.value if self.judged else Outcome.invalid.value


COUNTED_CLASSES = (Outcome.stable.value, Outcome.unstable.value, Outcome.invalid.value)


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
    The robust-standing oracle (``dso.sim.robust``) runs flat and on slopes; its
    physics fields are those of the worst run, tilt measured from the ground's normal.
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
    mode: str | None = None  # collision geometry actually used: boxes | solid (meshes: hull + voxel-solid mass) | decompose | hull
    collision_geoms: int = 0  # geoms that collide: boxes on hull vertices, convex parts, or 1 hull
    box_count: int = 0  # boxes in the exact partition of a grid (0 for meshes)
    mass: float | None = None  # kg
    com: list[float] | None = None  # centre of mass in the initial (placed) frame, metres
    elapsed_s: float = 0.0  # wall-clock seconds for this item, geometry included

    @property
    def outcome(self) -> Outcome:
        """The one classification of a verdict, used by every consumer."""
        if self.status == SimStatus.ok:
            return Outcome.stable if self.stable else Outcome.unstable
        return Outcome.invalid if self.status == SimStatus.invalid_input else Outcome.error

    @classmethod
    def failure(cls, status: SimStatus, message: str, elapsed_s: float = 0.0, **extra) -> "Verdict":
        """A verdict for an input that produced no physics result."""
        if status == SimStatus.ok:
            raise ValueError("failure verdicts need a non-ok status")
        return cls(status=status, message=message, elapsed_s=elapsed_s, **extra)
