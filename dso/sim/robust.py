"""Robust standing: the object stands on flat ground AND on ground tilted a few degrees in several directions.

Tilting the ground by ``robust_tilt_deg`` so that it slopes down toward azimuth
``phi`` is the same, in the ground's own frame, as tilting gravity by that angle
toward ``phi``: the plane stays at z = 0, gravity gets a horizontal component, and
the object's tilt relative to the tilted ground's normal is still its tilt from +z
(``dso.sim.rotation.tilt_deg``). So one compiled MuJoCo model serves every slope:
only ``model.opt.gravity`` changes between runs.

The verdict is stable only if the object stands in every run (flat, then
``robust_directions`` azimuths evenly spaced from 0 deg); its physics fields are
those of the worst run (the largest final tilt), its ``steps`` and ``sim_time_s``
the totals. The runs share one wall-clock budget, ``item_timeout_s`` (the process
pool's hard deadline is sized from it), and stop at the first fall.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import mujoco
import numpy as np

from dso.config import SimSettings
from dso.sim.geometry import build_geometry
from dso.sim.inputs import SimInput, resolve_input
from dso.sim.mujoco_model import build_model
from dso.sim.oracle import _step_until_settled, _verdict_from_run, failure_verdict
from dso.sim.verdict import SimStatus, Verdict


def slope_gravity(slope_deg: float, azimuth_deg: float, g: float = 9.81) -> np.ndarray:
    """Gravity in the frame of a ground tilted by ``slope_deg`` whose downhill direction is ``azimuth_deg`` (from +x)."""
    slope, azimuth = math.radians(slope_deg), math.radians(azimuth_deg)
    return g * np.array([math.sin(slope) * math.cos(azimuth), math.sin(slope) * math.sin(azimuth), -math.cos(slope)])


def grounds(settings: SimSettings) -> list[tuple[float, float]]:
    """(slope, azimuth) in degrees of every run: flat first, then the tilted ones."""
    n = settings.robust_directions
    return [(0.0, 0.0)] + [(settings.robust_tilt_deg, 360.0 * k / n) for k in range(n)]


def _where(slope: float, azimuth: float) -> str:
    return "flat ground" if slope == 0.0 else f"a {slope:g} deg slope toward azimuth {azimuth:g} deg"


def simulate_robust(item: SimInput, settings: SimSettings | None = None) -> Verdict:
    """Label one input: stable iff it stands flat and on every slope; never raises for bad input."""
    settings = settings or SimSettings()
    started = time.perf_counter()
    deadline = started + settings.item_timeout_s
    try:
        geometry = build_geometry(resolve_input(item, settings.max_grid_side, settings.mesh_up), settings)
        model = build_model(geometry, settings)
        g = float(np.linalg.norm(model.opt.gravity))
        worst: tuple[Verdict, float, float] | None = None
        steps, sim_time = 0, 0.0
        for slope, azimuth in grounds(settings):
            model.opt.gravity[:] = slope_gravity(slope, azimuth, g)
            data = mujoco.MjData(model)  # the placed, upright initial state (qpos0) at rest
            run = _step_until_settled(model, data, settings, deadline)
            verdict = _verdict_from_run(run, data, geometry, settings, started)
            steps, sim_time = steps + run.steps, sim_time + run.sim_time
            if verdict.status != SimStatus.ok:  # out of wall-clock time: the whole item timed out
                worst = (verdict, slope, azimuth)
                break
            if worst is None or (verdict.tilt_deg or 0.0) > (worst[0].tilt_deg or 0.0):
                worst = (verdict, slope, azimuth)
            if not verdict.stable:
                break
        assert worst is not None
        verdict, slope, azimuth = worst
        if verdict.status != SimStatus.ok:
            message = f"{verdict.message} (on {_where(slope, azimuth)})"
        elif verdict.stable:
            message = (
                f"stable on flat ground and {settings.robust_directions} slopes of {settings.robust_tilt_deg:g} deg: "
                f"worst tilt {verdict.tilt_deg:.1f} deg on {_where(slope, azimuth)} ({verdict.stop_reason.value})"
            )
        else:
            message = f"unstable on {_where(slope, azimuth)}: tilt {verdict.tilt_deg:.1f} deg ({verdict.stop_reason.value})"
        return verdict.model_copy(
            update=dict(steps=steps, sim_time_s=sim_time, message=message, elapsed_s=time.perf_counter() - started)
        )
    except Exception as exc:  # bad input, MuJoCo failure or a bug: a failure verdict, never an exception
        return failure_verdict(exc, started)


class RobustStandingOracle:
    """Does it stand on flat ground and on ground tilted ``robust_tilt_deg`` toward ``robust_directions`` azimuths?"""

    name = "robust_standing"

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings or SimSettings(oracle="robust_standing")

    def simulate(self, item: SimInput) -> Verdict:
        return simulate_robust(item, self.settings)

    def simulate_batch(self, items: Sequence[SimInput], workers: int | None = None) -> list[Verdict]:
        from dso.sim.batch import label_batch  # the pool's workers build the oracle settings.oracle names

        return label_batch(items, self.settings.model_copy(update={"oracle": self.name}), workers=workers)
