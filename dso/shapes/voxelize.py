"""Turn a list of labelled solids into an occupancy grid (with an optional lean).

The lean is a horizontal shear ``(x, y) += lean * max(z - onset, 0)``: everything
above ``onset`` (the top of the feet / base) tilts, the ground contact stays as it
was. A shear keeps volume, so the centre of mass moves linearly with the lean,
which is what lets the generator dial in a chosen support margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dso.shapes.primitives import Solid


@dataclass(frozen=True)
class Pose:
    """Where the built object goes: a yaw about z (rad) and a lean (shear per unit height above ``onset``)."""

    yaw: float = 0.0
    lean: tuple[float, float] = (0.0, 0.0)
    onset: float = -0.5


def voxel_centers(resolution: int) -> np.ndarray:
    """Centre coordinate of voxel i along one axis: (i + 0.5) / R - 0.5."""
    return (np.arange(resolution) + 0.5) / resolution - 0.5


def world_bounds(solids: Sequence[Solid], pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds of the posed union (conservative: rotated boxes, then the shear's sweep)."""
    los, his = [], []
    for solid in solids:
        lo, hi = _posed_bounds(solid, pose)
        los.append(lo)
        his.append(hi)
    return np.min(los, axis=0), np.max(his, axis=0)


def _posed_bounds(solid: Solid, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = solid.bounds()
    corners = np.array([[x, y] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])])
    c, s = np.cos(pose.yaw), np.sin(pose.yaw)
    turned = corners @ np.array([[c, s], [-s, c]])  # rows: (c x - s y, s x + c y)
    xy_lo, xy_hi = turned.min(axis=0), turned.max(axis=0)
    h_lo, h_hi = max(lo[2] - pose.onset, 0.0), max(hi[2] - pose.onset, 0.0)
    shift = np.array([[pose.lean[0] * h_lo, pose.lean[1] * h_lo], [pose.lean[0] * h_hi, pose.lean[1] * h_hi]])
    xy_lo = xy_lo + shift.min(axis=0)
    xy_hi = xy_hi + shift.max(axis=0)
    return np.array([xy_lo[0], xy_lo[1], lo[2]]), np.array([xy_hi[0], xy_hi[1], hi[2]])


def _index_range(lo: float, hi: float, resolution: int) -> tuple[int, int]:
    """Voxel indices whose centres can fall in [lo, hi] (half-open, clipped to the grid)."""
    first = int(np.ceil((lo + 0.5) * resolution - 0.5 - 1e-9))
    last = int(np.floor((hi + 0.5) * resolution - 0.5 + 1e-9))
    return max(first, 0), min(last, resolution - 1) + 1


def voxelize(
    solids: Sequence[Solid], resolution: int, pose: Pose = Pose(), supersample: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy (bool) and part labels (uint8, 0 = empty) of the posed solids; later solids win labels.

    ``supersample`` > 1 voxelises at ``supersample * resolution`` and marks a coarse
    voxel occupied when any of its fine voxels is (label: the largest among them).
    That keeps parts thinner than a coarse voxel, and keeps 6-connected shapes
    connected, which coarse grids (R < 32) need.
    """
    if resolution < 1 or supersample < 1:
        raise ValueError(f"resolution and supersample must be positive, got {resolution}, {supersample}")
    if supersample > 1:
        fine_occ, fine_parts = voxelize(solids, resolution * supersample, pose)
        shape = (resolution, supersample) * 3
        occupancy = fine_occ.reshape(shape).any(axis=(1, 3, 5))
        parts = fine_parts.reshape(shape).max(axis=(1, 3, 5))
        return occupancy, parts
    occupancy = np.zeros((resolution,) * 3, dtype=bool)
    parts = np.zeros((resolution,) * 3, dtype=np.uint8)
    centers = voxel_centers(resolution)
    c, s = np.cos(pose.yaw), np.sin(pose.yaw)
    for solid in solids:
        lo, hi = _posed_bounds(solid, pose)
        (i0, i1), (j0, j1), (k0, k1) = (_index_range(lo[a], hi[a], resolution) for a in range(3))
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        x = centers[i0:i1, None, None]
        y = centers[None, j0:j1, None]
        z = centers[None, None, k0:k1]
        h = np.maximum(z - pose.onset, 0.0)
        ux, uy = x - pose.lean[0] * h, y - pose.lean[1] * h  # undo the shear
        lx, ly = c * ux + s * uy, -s * ux + c * uy  # undo the yaw
        inside = np.broadcast_to(solid.contains(lx, ly, z), (i1 - i0, j1 - j0, k1 - k0))
        block = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
        occupancy[block] |= inside
        parts[block][inside] = solid.part
    return occupancy, parts
