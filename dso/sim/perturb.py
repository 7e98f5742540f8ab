"""Imperfect variants of occupancy grids, like a generator's samples: holes, specks, blobs, leans.

Used by the oracle benchmark (and usable by tests) to check that verdicts stay
right on noisy input, not only on clean primitives.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def surface_mask(occ: np.ndarray) -> np.ndarray:
    """Occupied voxels with at least one empty 6-neighbour."""
    return occ & ~ndimage.binary_erosion(occ, border_value=0)


def drop_surface_voxels(occ: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Remove a random ``fraction`` of the surface voxels (pitting)."""
    out = occ.copy()
    surface = np.argwhere(surface_mask(occ))
    if len(surface) == 0 or fraction <= 0:
        return out
    chosen = surface[rng.random(len(surface)) < fraction]
    out[tuple(chosen.T)] = False
    return out


def add_specks(occ: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Add ``count`` isolated voxels near the object (floating debris; still part of the rigid body)."""
    out = occ.copy()
    n = occ.shape[0]
    near = ndimage.binary_dilation(occ, iterations=max(1, n // 16)) & ~occ
    candidates = np.argwhere(near)
    if len(candidates) == 0 or count <= 0:
        return out
    chosen = candidates[rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)]
    out[tuple(chosen.T)] = True
    return out


def add_blob(occ: np.ndarray, rng: np.random.Generator, radius: float) -> np.ndarray:
    """Attach a ball of ``radius`` voxels centred on a random surface voxel (a lump)."""
    surface = np.argwhere(surface_mask(occ))
    if len(surface) == 0:
        return occ.copy()
    centre = surface[rng.integers(len(surface))]
    grid = np.indices(occ.shape).reshape(3, -1).T
    ball = (np.sum((grid - centre) ** 2, axis=1) <= radius**2).reshape(occ.shape)
    return occ | ball


def lean(occ: np.ndarray, angle_deg: float, azimuth_deg: float) -> np.ndarray:
    """Shear the grid so that its vertical axis leans by ``angle_deg`` towards ``azimuth_deg``.

    Each z-layer is shifted horizontally by z * tan(angle), relative to the lowest layer.
    """
    out = np.zeros_like(occ)
    zs = np.nonzero(occ.any(axis=(0, 1)))[0]
    if len(zs) == 0:
        return out
    slope = np.tan(np.radians(angle_deg))
    direction = np.array([np.cos(np.radians(azimuth_deg)), np.sin(np.radians(azimuth_deg))])
    n = occ.shape[0]
    for z in range(zs[0], zs[-1] + 1):
        dx, dy = np.rint(direction * slope * (z - zs[0])).astype(int)
        layer = occ[:, :, z]
        shifted = np.zeros_like(layer)
        xs = slice(max(0, dx), min(n, n + dx)), slice(max(0, -dx), min(n, n - dx))
        ys = slice(max(0, dy), min(n, n + dy)), slice(max(0, -dy), min(n, n - dy))
        shifted[xs[0], ys[0]] = layer[xs[1], ys[1]]
        out[:, :, z] = shifted
    return out


def noisy_variant(occ: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One random imperfection (or a mix), with a short description of what was done."""
    kind = rng.choice(["holes", "specks", "blob", "lean", "mixed"])
    if kind == "holes":
        return drop_surface_voxels(occ, rng, float(rng.uniform(0.02, 0.15))), "holes"
    if kind == "specks":
        return add_specks(occ, rng, int(rng.integers(1, 30))), "specks"
    if kind == "blob":
        return add_blob(occ, rng, float(rng.uniform(2, 6))), "blob"
    if kind == "lean":
        return lean(occ, float(rng.uniform(3, 25)), float(rng.uniform(0, 360))), "lean"
    out = lean(occ, float(rng.uniform(0, 12)), float(rng.uniform(0, 360)))
    out = drop_surface_voxels(out, rng, float(rng.uniform(0.0, 0.08)))
    out = add_specks(out, rng, int(rng.integers(0, 10)))
    return out, "mixed"
