"""Build the MuJoCo model in memory (MjSpec): a ground plane and one free rigid body.

The body's mass and inertia are set explicitly from the exact solid; its geoms
are for collision only, so overlapping or pruned geoms never change the mass.
"""

from __future__ import annotations

import mujoco
import numpy as np

from dso.config import SimSettings
from dso.sim.errors import SimulationError
from dso.sim.geometry import CollisionGeometry

_INTEGRATORS = {
    "euler": mujoco.mjtIntegrator.mjINT_EULER,
    "implicitfast": mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
    "implicit": mujoco.mjtIntegrator.mjINT_IMPLICIT,
    "rk4": mujoco.mjtIntegrator.mjINT_RK4,
}
_CONES = {"pyramidal": mujoco.mjtCone.mjCONE_PYRAMIDAL, "elliptic": mujoco.mjtCone.mjCONE_ELLIPTIC}
OBJECT_BODY = "object"


def build_spec(geometry: CollisionGeometry, settings: SimSettings) -> mujoco.MjSpec:
    """MjSpec with gravity -z, a plane at z = 0 and the object as one free body at the origin."""
    spec = mujoco.MjSpec()
    spec.modelname = "dso_oracle"
    spec.option.timestep = settings.timestep
    spec.option.integrator = _INTEGRATORS[settings.integrator]
    spec.option.cone = _CONES[settings.cone]
    spec.option.noslip_iterations = settings.noslip_iterations
    spec.option.gravity = [0.0, 0.0, -9.81]
    friction = list(settings.friction)
    spec.worldbody.add_geom(type=mujoco.mjtGeom.mjGEOM_PLANE, size=[0.0, 0.0, 1.0], friction=friction)

    body = spec.worldbody.add_body(name=OBJECT_BODY)
    body.add_freejoint()
    body.explicitinertial = True
    body.mass = geometry.mass.mass
    body.ipos = geometry.mass.com.tolist()
    body.fullinertia = geometry.mass.full_inertia()
    for centre, half in zip(geometry.box_centres, geometry.box_half_sizes):
        body.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=half.tolist(), pos=centre.tolist(), friction=friction)
    for index, vertices in enumerate(geometry.convex_parts):
        mesh = spec.add_mesh(name=f"part{index}")
        mesh.uservert = np.asarray(vertices, dtype=np.float32).ravel().tolist()
        mesh.inertia = mujoco.mjtMeshInertia.mjMESH_INERTIA_CONVEX  # unused (explicit inertia), but never fails
        body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"part{index}", friction=friction)
    return spec


def build_model(geometry: CollisionGeometry, settings: SimSettings) -> mujoco.MjModel:
    """Compile the model; MuJoCo errors become SimulationError."""
    if geometry.geom_count == 0:
        raise SimulationError("object has no collision geometry")
    try:
        return build_spec(geometry, settings).compile()
    except Exception as exc:  # mujoco raises ValueError for compile errors
        raise SimulationError(f"MuJoCo could not compile the model: {exc}") from exc
