"""Mass properties of a uniform-density solid: exact for voxels, trimesh's for closed meshes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from dso.sim.errors import InvalidInputError


@dataclass(frozen=True)
class MassProperties:
    """Mass (kg), centre of mass (m) and inertia tensor about the centre of mass (kg m^2)."""

    mass: float
    com: np.ndarray  # (3,)
    inertia: np.ndarray  # (3, 3), about com, world-aligned axes

    def shifted(self, offset: np.ndarray) -> "MassProperties":
        """The same solid translated by ``offset``."""
        return MassProperties(self.mass, self.com + offset, self.inertia)

    def full_inertia(self) -> list[float]:
        """MuJoCo's fullinertia order: Ixx, Iyy, Izz, Ixy, Ixz, Iyz."""
        i = self.inertia
        return [i[0, 0], i[1, 1], i[2, 2], i[0, 1], i[0, 2], i[1, 2]]


def _point_inertia(offsets: np.ndarray, point_mass: float) -> np.ndarray:
    """Inertia tensor of point masses at ``offsets`` from the reference point."""
    second = offsets.T @ offsets * point_mass  # sum m r r^T
    return np.trace(second) * np.eye(3) - second


def voxel_mass_properties(centres: np.ndarray, voxel_size: float, density: float) -> MassProperties:
    """Exact mass properties of a union of equal cubes centred at ``centres``.

    Each cube contributes its own inertia m s^2 / 6 about its centre plus the
    parallel-axis term, so the result is exact for the voxel solid.
    """
    if len(centres) == 0:
        raise InvalidInputError("no occupied voxels: nothing to simulate")
    voxel_mass = density * voxel_size**3
    com = centres.mean(axis=0)
    inertia = _point_inertia(centres - com, voxel_mass)
    inertia += np.eye(3) * len(centres) * voxel_mass * voxel_size**2 / 6.0
    return MassProperties(voxel_mass * len(centres), com, inertia)


def mesh_mass_properties(mesh: trimesh.Trimesh, density: float) -> MassProperties:
    """Mass properties of a closed, outward-oriented mesh as a uniform solid."""
    if not mesh.is_watertight:
        raise InvalidInputError("mesh is not watertight: its solid (and mass) is undefined")
    props = mesh.mass_properties  # unit density; trimesh integrates over the closed surface
    volume = float(props["volume"])
    if not np.isfinite(volume) or volume <= 0:
        raise InvalidInputError(f"mesh encloses no volume (volume {volume:.3g}); is it flat or inside-out?")
    inertia = np.asarray(props["inertia"], dtype=float) * density
    return MassProperties(volume * density, np.asarray(props["center_mass"], dtype=float), inertia)


def box_mass_properties(lo: np.ndarray, hi: np.ndarray, density: float) -> MassProperties:
    """Exact mass properties of a union of disjoint axis-aligned boxes (corners ``lo``, ``hi``, metres)."""
    if len(lo) == 0:
        raise InvalidInputError("no occupied voxels: nothing to simulate")
    dims = hi - lo
    masses = density * np.prod(dims, axis=1)
    total = float(masses.sum())
    centres = (lo + hi) / 2
    com = masses @ centres / total
    sq = dims**2
    own = np.stack([sq[:, 1] + sq[:, 2], sq[:, 0] + sq[:, 2], sq[:, 0] + sq[:, 1]], axis=1) * (masses / 12)[:, None]
    offsets = centres - com
    second = (offsets * masses[:, None]).T @ offsets
    inertia = np.diag(own.sum(axis=0)) + np.trace(second) * np.eye(3) - second
    return MassProperties(total, com, inertia)


def grid_mass_properties(weights: np.ndarray, origin: np.ndarray, voxel: float, density: float) -> MassProperties:
    """Exact mass properties of cubic cells of side ``voxel`` filled to ``weights`` (0..1) of ``density``.

    Cell (i, j, k) spans ``origin + [i, i+1] * voxel`` (and so on); each cell is a
    uniform cube of mass ``density * weight * voxel^3``. Moments come from sums of
    the grid along its axes (no per-cell coordinates), so a 128^3 grid takes a few ms.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if total <= 0:
        raise InvalidInputError("the solid is empty: no cell is inside the surface")
    centres = [origin[a] + (np.arange(w.shape[a]) + 0.5) * voxel for a in range(3)]
    wxy, wxz, wyz = w.sum(axis=2), w.sum(axis=1), w.sum(axis=0)
    wx, wy, wz = wxy.sum(axis=1), wxy.sum(axis=0), wxz.sum(axis=0)
    com = np.array([wx @ centres[0], wy @ centres[1], wz @ centres[2]]) / total
    x, y, z = (centres[a] - com[a] for a in range(3))
    second = np.empty((3, 3))
    second[0, 0], second[1, 1], second[2, 2] = wx @ x**2, wy @ y**2, wz @ z**2
    second[0, 1] = second[1, 0] = x @ wxy @ y
    second[0, 2] = second[2, 0] = x @ wxz @ z
    second[1, 2] = second[2, 1] = y @ wyz @ z
    cell_mass = density * voxel**3
    inertia = cell_mass * (np.trace(second) * np.eye(3) - second) + np.eye(3) * total * cell_mass * voxel**2 / 6.0
    return MassProperties(total * cell_mass, com, inertia)
