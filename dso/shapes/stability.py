"""Static stability of an occupancy grid: centre of mass against the support polygon.

A rigid body resting on flat ground is statically stable when the ground projection
of its centre of mass lies inside the convex hull of its contact area. The signed
distance of that point to the hull's boundary (positive inside) is the *support
margin*: how far the mass can shift before the object tips.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull

from dso.shapes.voxelize import voxel_centers


def _check_grid(occupancy: np.ndarray) -> np.ndarray:
    occ = np.asarray(occupancy)
    if occ.ndim != 3 or len(set(occ.shape)) != 1:
        raise ValueError(f"occupancy must be a cubic (R, R, R) grid, got shape {occ.shape}")
    occ = occ.astype(bool, copy=False)
    if not occ.any():
        raise ValueError("occupancy grid is empty")
    return occ


def center_of_mass(occupancy: np.ndarray) -> np.ndarray:
    """Centre of mass (x, y, z) in unit-cube coordinates, uniform density."""
    occ = _check_grid(occupancy)
    centers = voxel_centers(occ.shape[0])
    count = occ.sum()
    return np.array(
        [
            (occ.sum(axis=(1, 2)) * centers).sum() / count,
            (occ.sum(axis=(0, 2)) * centers).sum() / count,
            (occ.sum(axis=(0, 1)) * centers).sum() / count,
        ]
    )


def support_polygon(occupancy: np.ndarray) -> np.ndarray:
    """Counter-clockwise (K, 2) vertices of the convex hull of the lowest occupied layer's voxel footprints.

    The lowest layer is the one the object rests on (z index 0 for a grounded object).
    Footprints are whole voxel squares, so a single contact voxel still has area.
    """
    occ = _check_grid(occupancy)
    resolution = occ.shape[0]
    layer = int(np.argmax(occ.any(axis=(0, 1))))
    ii, jj = np.nonzero(occ[:, :, layer])
    centers = voxel_centers(resolution)
    half = 0.5 / resolution
    offsets = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    points = (np.stack([centers[ii], centers[jj]], axis=1)[:, None, :] + offsets[None]).reshape(-1, 2)
    hull = ConvexHull(points)
    return points[hull.vertices]  # scipy returns 2-D hull vertices counter-clockwise


def signed_distance_inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance of (N, 2) points to a convex counter-clockwise polygon: > 0 inside, < 0 outside."""
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    edge = b - a  # (K, 2)
    length = np.linalg.norm(edge, axis=1)
    normal_in = np.stack([-edge[:, 1], edge[:, 0]], axis=1) / length[:, None]  # left of a CCW edge = inside
    rel = pts[:, None, :] - a[None]  # (N, K, 2)
    side = (rel * normal_in[None]).sum(axis=2)  # distance to each edge's line, + inside
    inside = np.all(side >= 0.0, axis=1)
    t = np.clip((rel * edge[None]).sum(axis=2) / (length**2)[None], 0.0, 1.0)
    nearest = a[None] + t[..., None] * edge[None]
    outside_distance = np.linalg.norm(pts[:, None, :] - nearest, axis=2).min(axis=1)
    return np.where(inside, side.min(axis=1), -outside_distance)


def support_margin(occupancy: np.ndarray) -> float:
    """Distance (unit-cube units) of the CoM's ground projection inside the support polygon; < 0 = tips over."""
    com = center_of_mass(occupancy)
    return float(signed_distance_inside(com[None, :2], support_polygon(occupancy))[0])


def tipping_angle(occupancy: np.ndarray) -> float:
    """Degrees the object must tilt about its nearest support edge before it tips over (< 0: it already does).

    atan(margin / CoM height above the ground): the same margin is safer for a low
    object than for a tall one.
    """
    occ = _check_grid(occupancy)
    com = center_of_mass(occ)
    ground = -0.5 + int(np.argmax(occ.any(axis=(0, 1)))) / occ.shape[0]
    return float(np.degrees(np.arctan2(support_margin(occ), com[2] - ground)))
