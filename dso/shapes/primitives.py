"""Solid primitives the procedural families are built from.

Each solid answers two questions: its axis-aligned bounds (so the voxeliser only
visits the block it can occupy) and whether points lie inside it. Coordinates are
the unit cube's (z up, ground at z = -0.5); points come as broadcastable arrays so
a whole voxel block is tested at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]


def _as_vec(v: Vec3 | np.ndarray) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (3,):
        raise ValueError(f"expected a 3-vector, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class Solid(ABC):
    """Base class: a labelled region of space (``part`` is the uint8 part label, >= 1)."""

    part: int

    @abstractmethod
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned (lo, hi) corners enclosing the solid."""

    @abstractmethod
    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of the points (x, y, z) inside the solid."""


@dataclass(frozen=True)
class Box(Solid):
    """Box with half extents ``half`` around ``center``, turned by ``yaw`` (rad) about z then ``pitch`` about x."""

    center: Vec3 = (0.0, 0.0, 0.0)
    half: Vec3 = (0.1, 0.1, 0.1)
    yaw: float = 0.0
    pitch: float = 0.0

    def _rotation(self) -> np.ndarray:
        cy, sy = np.cos(self.yaw), np.sin(self.yaw)
        cp, sp = np.cos(self.pitch), np.sin(self.pitch)
        rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
        return rz @ rx  # columns: the box's local axes in world coordinates

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        extent = np.abs(self._rotation()) @ _as_vec(self.half)
        c = _as_vec(self.center)
        return c - extent, c + extent

    def contains(self, x, y, z):
        r = self._rotation()
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        inside = None
        for axis in range(3):
            local = dx * r[0, axis] + dy * r[1, axis] + dz * r[2, axis]
            test = np.abs(local) <= self.half[axis]
            inside = test if inside is None else inside & test
        return inside


@dataclass(frozen=True)
class Frustum(Solid):
    """Flat-capped cone frustum from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``); r0 == r1 is a cylinder."""

    p0: Vec3 = (0.0, 0.0, -0.5)
    p1: Vec3 = (0.0, 0.0, 0.0)
    r0: float = 0.05
    r1: float = 0.05

    def bounds(self):
        a, b = _as_vec(self.p0), _as_vec(self.p1)
        u = (b - a) / np.linalg.norm(b - a)
        spread = np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))  # a cap disc's half extent per unit radius
        lo = np.minimum(a - self.r0 * spread, b - self.r1 * spread)
        hi = np.maximum(a + self.r0 * spread, b + self.r1 * spread)
        return lo, hi

    def contains(self, x, y, z):
        a, b = _as_vec(self.p0), _as_vec(self.p1)
        axis = b - a
        length = float(np.linalg.norm(axis))
        if length == 0.0:
            raise ValueError("Frustum needs two distinct end points")
        u = axis / length
        dx, dy, dz = x - a[0], y - a[1], z - a[2]
        along = dx * u[0] + dy * u[1] + dz * u[2]
        radial2 = dx * dx + dy * dy + dz * dz - along * along
        t = along / length
        radius = self.r0 + (self.r1 - self.r0) * np.clip(t, 0.0, 1.0)
        return (t >= 0.0) & (t <= 1.0) & (radial2 <= radius * radius)


def Cylinder(part: int, p0: Vec3, p1: Vec3, radius: float) -> Frustum:
    """A flat-capped cylinder (a frustum with equal radii)."""
    return Frustum(part=part, p0=p0, p1=p1, r0=radius, r1=radius)


@dataclass(frozen=True)
class Capsule(Solid):
    """All points within ``radius`` of the segment ``p0``-``p1`` (limbs, branches, necks)."""

    p0: Vec3 = (0.0, 0.0, 0.0)
    p1: Vec3 = (0.0, 0.0, 0.1)
    radius: float = 0.05

    def bounds(self):
        a, b = _as_vec(self.p0), _as_vec(self.p1)
        return np.minimum(a, b) - self.radius, np.maximum(a, b) + self.radius

    def contains(self, x, y, z):
        a, b = _as_vec(self.p0), _as_vec(self.p1)
        axis = b - a
        length2 = float(axis @ axis)
        dx, dy, dz = x - a[0], y - a[1], z - a[2]
        if length2 == 0.0:
            t = 0.0
        else:
            t = np.clip((dx * axis[0] + dy * axis[1] + dz * axis[2]) / length2, 0.0, 1.0)
        ex, ey, ez = dx - t * axis[0], dy - t * axis[1], dz - t * axis[2]
        return ex * ex + ey * ey + ez * ez <= self.radius * self.radius


@dataclass(frozen=True)
class Ellipsoid(Solid):
    """Axis-aligned ellipsoid; ``z_min`` cuts it flat from below (domes, caps, canopies)."""

    center: Vec3 = (0.0, 0.0, 0.0)
    radii: Vec3 = (0.1, 0.1, 0.1)
    z_min: float = -np.inf

    def bounds(self):
        c, r = _as_vec(self.center), _as_vec(self.radii)
        lo = c - r
        lo[2] = max(lo[2], self.z_min)
        return lo, c + r

    def contains(self, x, y, z):
        c, r = self.center, self.radii
        q = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
        return (q <= 1.0) & (z >= self.z_min)


@dataclass(frozen=True)
class Lathe(Solid):
    """Solid of revolution about a vertical axis: radius is piecewise linear in z (vases, bottles, stems)."""

    center_xy: tuple[float, float] = (0.0, 0.0)
    zs: tuple[float, ...] = (-0.5, 0.0)
    radii: tuple[float, ...] = (0.1, 0.1)

    def __post_init__(self) -> None:
        if len(self.zs) != len(self.radii) or len(self.zs) < 2:
            raise ValueError("Lathe needs matching zs and radii with at least two entries")
        if np.any(np.diff(self.zs) <= 0):
            raise ValueError("Lathe zs must be strictly increasing")

    def bounds(self):
        r = max(self.radii)
        cx, cy = self.center_xy
        return np.array([cx - r, cy - r, self.zs[0]]), np.array([cx + r, cy + r, self.zs[-1]])

    def contains(self, x, y, z):
        radius = np.interp(z, self.zs, self.radii)
        dx, dy = x - self.center_xy[0], y - self.center_xy[1]
        return (dx * dx + dy * dy <= radius * radius) & (z >= self.zs[0]) & (z <= self.zs[-1])
