"""Known-answer stability cases for the oracle (64^3 grids, 1 m across, z up).

Each shape's answer follows from statics: a rigid body released at rest on a
plane stays upright iff its centre of mass lies over its support polygon (the
convex hull of its ground contacts). The tests also check the reason (tilt,
stop reason), not only the boolean.
"""

from __future__ import annotations

import numpy as np
import pytest

from dso.config import SimSettings
from dso.sim import simulate
from dso.sim.geometry import build_geometry
from dso.sim.perturb import lean
from dso.sim.verdict import SimStatus, StopReason

N = 64
VOXEL = 1.0 / N


def grid() -> np.ndarray:
    return np.zeros((N, N, N), dtype=bool)


def cube() -> np.ndarray:
    occ = grid()
    occ[20:44, 20:44, 0:24] = True
    return occ


def gamma_shape() -> np.ndarray:
    """A post on a small foot with a long arm at the top: centre of mass far outside the foot."""
    occ = grid()
    occ[10:16, 28:36, 0:40] = True  # post, footprint x in [10, 16)
    occ[10:60, 28:36, 34:40] = True  # arm reaching to x = 60
    return occ


def biped(body_shift: int) -> np.ndarray:
    """Two legs (feet x in [18, 22) and [42, 46)) under a heavy body shifted by ``body_shift`` voxels.

    Centre of mass (in voxels): x = 32 + body_shift * 5 / 6; the right foot's edge is at x = 46.
    """
    occ = grid()
    occ[18:22, 28:36, 0:16] = True
    occ[42:46, 28:36, 0:16] = True
    occ[18:46, 28:36, 16:20] = True  # hip bar joining the legs
    occ[24 + body_shift : 40 + body_shift, 22:42, 20:50] = True
    return occ


def pole() -> np.ndarray:
    """A slender pole (4 x 4 voxels, 56 tall) on a 12 x 12 base plate."""
    occ = grid()
    occ[26:38, 26:38, 0:2] = True
    occ[30:34, 30:34, 2:58] = True
    return occ


def overhung_arch() -> np.ndarray:
    """An inverted U (legs at x in [2, 5) and [39, 42)) whose top bar carries a heavy block beyond the right leg.

    True solid: the block puts the centre of mass ~0.085 m beyond the right
    foot, so the arch tips over that foot. As ONE convex hull (the paper's
    model), the gap under the bar and the space under the arm count as solid
    mass, which pulls the centre of mass ~0.095 m back inside the feet: the
    hull model says it stands. Collision shape alone could not make this
    difference (a plane only ever touches the convex hull of a rigid body);
    the mass distribution does.
    """
    occ = grid()
    occ[2:5, 28:36, 0:40] = True
    occ[39:42, 28:36, 0:40] = True
    occ[2:62, 28:36, 40:43] = True
    occ[52:62, 16:48, 19:43] = True  # block hanging from the arm's end, clear of the ground
    return occ


def check_ok(verdict) -> None:
    assert verdict.status == SimStatus.ok, verdict.message


def test_cube_on_a_face_stands_still():
    v = simulate(cube())
    check_ok(v)
    assert v.stable and v.tilt_deg < 0.5 and v.rotation_deg < 0.5
    assert v.stop_reason == StopReason.rest and v.settle_time_s is not None
    assert v.collision_geoms == 1
    side = 24 * VOXEL
    assert v.mass == pytest.approx(1000.0 * side**3)
    assert v.position[2] == pytest.approx(0.0, abs=2e-3)  # rests on the ground, no drop, no sinking


def test_gamma_with_com_outside_its_foot_falls():
    v = simulate(gamma_shape())
    check_ok(v)
    assert not v.stable
    assert v.tilt_deg > 30


def test_the_same_shape_upside_down_stands_on_its_long_side():
    """Mirrored in z, the arm becomes a foot along the ground: the centre of mass lies over it."""
    v = simulate(gamma_shape()[:, :, ::-1].copy())
    check_ok(v)
    assert v.stable and v.tilt_deg < 1.0


def test_biped_with_body_between_its_feet_stands():
    v = simulate(biped(body_shift=0))
    check_ok(v)
    assert v.stable and v.tilt_deg < 1.0


def test_biped_with_body_shifted_but_still_over_its_feet_stands():
    v = simulate(biped(body_shift=12))  # centre of mass at x = 42, 4 voxels inside the right foot's edge
    check_ok(v)
    assert v.stable and v.tilt_deg < 1.0


def test_biped_with_body_past_one_foot_falls():
    occ = biped(body_shift=22)  # centre of mass at x ~ 50.3, 4 voxels beyond the right foot's edge
    assert build_geometry(occ, SimSettings()).mass.com[0] > (46 - N / 2) * VOXEL
    v = simulate(occ)
    check_ok(v)
    assert not v.stable and v.tilt_deg > 30


def test_slender_pole_stands_upright():
    v = simulate(pole())
    check_ok(v)
    assert v.stable and v.tilt_deg < 1.0


def test_pole_leaning_past_its_base_falls():
    leaning = lean(pole(), angle_deg=25.0, azimuth_deg=0.0)  # top shifted ~25 voxels, base half-width 6
    geometry = build_geometry(leaning, SimSettings())
    assert geometry.mass.com[0] > 6 * VOXEL  # centre of mass beyond the base plate's edge
    v = simulate(leaning)
    check_ok(v)
    assert not v.stable and v.tilt_deg > 30


def test_exact_geometry_falls_where_the_single_hull_stands():
    occ = overhung_arch()
    exact = simulate(occ, SimSettings(mode="boxes"))
    hull = simulate(occ, SimSettings(mode="hull"))
    check_ok(exact)
    check_ok(hull)
    assert exact.mode == "boxes" and hull.mode == "hull"
    assert not exact.stable and exact.tilt_deg > 30
    assert hull.stable and hull.tilt_deg < 1.0
    assert hull.mass > exact.mass  # the hull fills the arch's gap


def test_yaw_only_rotation_is_not_tilt():
    """A cube spinning about the vertical axis ends yawed: rotation_deg counts that, tilt_deg does not."""
    import mujoco

    from dso.sim.mujoco_model import build_model
    from dso.sim.rotation import rotation_deg, tilt_deg

    settings = SimSettings()
    model = build_model(build_geometry(cube(), settings), settings)
    data = mujoco.MjData(model)
    mujoco.mj_step(model, data, nstep=50)  # settle onto the ground
    data.qvel[:] = 0.0
    data.qvel[5] = 20.0  # a hard spin about the vertical axis
    mujoco.mj_step(model, data, nstep=25)
    quat = data.qpos[3:7]
    assert rotation_deg(quat) > 10.0
    assert tilt_deg(quat) < 0.5


@pytest.mark.parametrize("make", [gamma_shape, lambda: biped(0), overhung_arch])
def test_pruned_collision_boxes_give_the_same_outcome_as_all_boxes(make):
    """Colliding only the boxes on convex-hull vertices is exact for a rigid body on a plane."""
    occ = make()
    full = simulate(occ, SimSettings(prune_collision_boxes=False))
    pruned = simulate(occ, SimSettings(prune_collision_boxes=True))
    check_ok(full)
    check_ok(pruned)
    assert pruned.collision_geoms <= full.collision_geoms
    assert pruned.stable == full.stable
    assert pruned.tilt_deg == pytest.approx(full.tilt_deg, abs=2.0)


def test_default_agrees_with_the_high_fidelity_reference_on_known_shapes():
    from dso.sim.presets import reference_settings

    reference = reference_settings().model_copy(update=dict(max_time=3.0))  # enough for these to settle
    for occ in (biped(0), biped(22), gamma_shape()):
        assert simulate(occ).stable == simulate(occ, reference).stable


def test_floating_part_is_part_of_the_same_rigid_body():
    """A detached voxel clump far to the side still counts in the mass: one rigid body."""
    occ = cube()
    occ[60:64, 30:34, 40:44] = True
    v = simulate(occ)
    check_ok(v)
    assert v.mass == pytest.approx(1000.0 * (24**3 + 4**3) * VOXEL**3)
