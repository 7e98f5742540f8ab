"""simulate(input, settings) -> Verdict: the stability oracle for one object, in-process.

The object starts upright at rest with its lowest point on the ground and is
stepped until it is at rest (velocity thresholds held for a dwell time), has
clearly fallen (tilted past ``fall_stop_tilt_deg`` while still moving: a body
released at rest that tips that far does not come back within the stability
threshold; bench/oracle.py checks this against full-length reference runs),
or the simulated-time budget runs out. Wall-clock time is
checked between chunks of steps, so the per-item limit works in any thread
or process (no signals).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import mujoco
import numpy as np

from dso.config import SimSettings
from dso.sim.errors import InvalidInputError, SimulationError
from dso.sim.geometry import CollisionGeometry, build_geometry
from dso.sim.inputs import SimInput, resolve_input
from dso.sim.mujoco_model import build_model
from dso.sim.rotation import rotation_deg, tilt_deg
from dso.sim.verdict import SimStatus, StopReason, Verdict


@dataclass
class _Run:
    """Outcome of the stepping loop."""

    stop_reason: StopReason
    steps: int
    sim_time: float
    settle_time: float | None
    timed_out: bool = False


def _step_until_settled(model: mujoco.MjModel, data: mujoco.MjData, settings: SimSettings, deadline: float) -> _Run:
    """Step in chunks of ``check_interval``; early-stop at rest or after a fall when enabled."""
    dt = model.opt.timestep
    chunk = max(1, int(round(settings.check_interval / dt)))
    max_steps = int(math.ceil(settings.max_time / dt - 1e-9))
    steps = 0
    rest_since: float | None = None
    while steps < max_steps:
        n = min(chunk, max_steps - steps)
        mujoco.mj_step(model, data, nstep=n)
        steps += n
        t = steps * dt
        qvel = data.qvel
        if not np.all(np.isfinite(qvel)) or not np.all(np.isfinite(data.qpos)):
            raise SimulationError(f"simulation diverged (non-finite state) at t = {t:.3f} s")
        if time.perf_counter() > deadline:
            return _Run(StopReason.none, steps, t, None, timed_out=True)
        if not settings.early_stop:
            continue
        # free joint: qvel[0:3] linear velocity of the body origin (world), qvel[3:6] angular (body frame)
        omega = float(np.linalg.norm(qvel[3:6]))
        com_speed = float(np.linalg.norm(data.cvel[1][3:6]))  # cvel: [angular, linear] at subtree com
        if omega < settings.rest_angular_velocity and com_speed < settings.rest_linear_velocity:
            if rest_since is None:
                rest_since = t - n * dt
            if t - rest_since >= settings.rest_dwell_time:
                return _Run(StopReason.rest, steps, t, rest_since)
        else:
            rest_since = None
            if settings.fall_stop_tilt_deg is not None and tilt_deg(data.qpos[3:7]) > settings.fall_stop_tilt_deg:
                return _Run(StopReason.fell, steps, t, None)
    return _Run(StopReason.max_time, steps, steps * dt, rest_since)


def _verdict_from_run(
    run: _Run, data: mujoco.MjData, geometry: CollisionGeometry, settings: SimSettings, started: float
) -> Verdict:
    quat = data.qpos[3:7].copy()
    tilt = tilt_deg(quat)
    common = dict(
        mode=geometry.mode,
        collision_geoms=geometry.geom_count,
        box_count=geometry.total_boxes,
        mass=float(geometry.mass.mass),
        com=geometry.mass.com.tolist(),
        steps=run.steps,
        sim_time_s=run.sim_time,
        position=data.qpos[0:3].tolist(),
        quaternion=quat.tolist(),
        tilt_deg=tilt,
        rotation_deg=rotation_deg(quat),
    )
    if run.timed_out:
        return Verdict(
            status=SimStatus.timeout,
            message=f"wall-clock limit {settings.item_timeout_s:g} s reached after {run.sim_time:.2f} s simulated",
            elapsed_s=time.perf_counter() - started,
            **common,
        )
    stable = tilt < settings.tilt_threshold_deg
    return Verdict(
        status=SimStatus.ok,
        stable=stable,
        settle_time_s=run.settle_time,
        stop_reason=run.stop_reason,
        message=f"{'stable' if stable else 'unstable'}: tilt {tilt:.1f} deg ({run.stop_reason.value})"
        + (f"; {geometry.note}" if geometry.note else ""),
        elapsed_s=time.perf_counter() - started,
        **common,
    )


def simulate(item: SimInput, settings: SimSettings | None = None) -> Verdict:
    """Label one input (grid array, mesh, path, or object with ``.occupancy``); never raises for bad input."""
    settings = settings or SimSettings()
    started = time.perf_counter()
    deadline = started + settings.item_timeout_s
    try:
        geometry = build_geometry(resolve_input(item, settings.max_grid_side, settings.mesh_up), settings)
        model = build_model(geometry, settings)
        data = mujoco.MjData(model)
        run = _step_until_settled(model, data, settings, deadline)
        return _verdict_from_run(run, data, geometry, settings, started)
    except Exception as exc:  # a bug or an unexpected library error must not take a batch down
        return failure_verdict(exc, started)


def failure_verdict(exc: BaseException, started: float) -> Verdict:
    """The failure verdict for an exception raised while judging an input (started: its perf_counter start)."""
    elapsed = time.perf_counter() - started
    if isinstance(exc, InvalidInputError):
        return Verdict.failure(SimStatus.invalid_input, str(exc), elapsed)
    if isinstance(exc, SimulationError):
        return Verdict.failure(SimStatus.sim_error, str(exc), elapsed)
    if isinstance(exc, MemoryError):
        return Verdict.failure(SimStatus.sim_error, f"out of memory: {exc}", elapsed)
    return Verdict.failure(SimStatus.sim_error, f"unexpected {type(exc).__name__}: {exc}", elapsed)
