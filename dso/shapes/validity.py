"""Checks every procedural object must pass (and that callers can run on any grid)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def grid_problems(occupancy: np.ndarray) -> list[str]:
    """Why a grid is not a valid standing object: [] when it is.

    Valid means: one 6-connected component, a voxel in the ground layer (z index 0),
    and no voxel on the four side faces of the grid (x or y index 0 or R - 1).
    """
    occ = np.asarray(occupancy)
    if occ.ndim != 3 or len(set(occ.shape)) != 1:
        return [f"not a cubic grid: shape {occ.shape}"]
    occ = occ.astype(bool, copy=False)
    if not occ.any():
        return ["empty grid"]
    problems = []
    _, components = ndimage.label(occ)  # default structure = 6-connectivity
    if components != 1:
        problems.append(f"{components} connected components (6-connectivity), expected 1")
    if not occ[:, :, 0].any():
        problems.append("does not touch the ground (no voxel at z index 0)")
    if occ[0].any() or occ[-1].any() or occ[:, 0].any() or occ[:, -1].any():
        problems.append("voxels on an x/y boundary face of the grid")
    return problems
