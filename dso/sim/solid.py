"""The solid a triangle soup encloses, robustly: voxelise the surface, flood-fill from outside.

Real assets and generators' meshes are rarely clean solids: open seams, holes,
several overlapping components, internal faces, inverted normals. None of that
matters here. The surface is sampled densely (spacing under half a voxel) into a
grid of ``resolution`` voxels along the longest side; the surface voxels are
dilated by one voxel (closing holes up to about two voxels wide) before a flood
fill from outside, and the outside is grown back by one voxel afterwards (a
morphological closing). Every cell the outside cannot reach is solid:

- enclosed cells (not on the surface) weigh 1;
- surface cells weigh 1/2 where they face the outside (on average half of such
  a cell lies inside the surface) and 1 where they do not (internal faces);

so a closed mesh gets its volume within a fraction of a voxel layer, an open
cup gets its walls and bottom (not the filled interior), and an open sheet gets
a one-voxel-thick shell. Orientation is never read (inverted or mixed normals are
common), so a cavity sealed off from the outside (a hollow ball modelled with an
inner surface) counts as solid, like the overlap of two parts does: telling the two
apart needs consistent normals (a winding number), which real assets do not promise. Mass properties come from the weighted cells
(``dso.sim.mass.grid_mass_properties``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dso.sim.errors import InvalidInputError

_PAD = 2  # empty cells around the surface: after a one-cell dilation the border is still outside
_SAMPLE_SPACING = 0.7  # surface samples at most 0.7 voxel apart (the closing covers any cell they skip)
_CHUNK_POINTS = 2_000_000  # surface samples materialised at once


@dataclass(frozen=True)
class VoxelSolid:
    """Per-cell weights (0, 1/2 or 1) of the solid, on a grid whose cell (0, 0, 0) has its lower corner at ``origin``."""

    weights: np.ndarray  # (nx, ny, nz) float32
    origin: np.ndarray  # (3,) metres
    voxel: float  # metres per cell edge
    resolution: int  # cells along the longest side of the surface's bounding box
    surface_cells: int
    enclosed_cells: int

    def describe(self) -> str:
        return f"solid by voxel flood fill at {self.resolution}^3 (1-voxel closing)"


def _barycentric_lattice(k: int) -> np.ndarray:
    """Barycentric coordinates (m, 3) of the points (i/k, j/k) with i + j <= k."""
    i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
    keep = i + j <= k
    a, b = i[keep] / k, j[keep] / k
    return np.stack([1.0 - a - b, a, b], axis=1)


def _mark(surface: np.ndarray, points: np.ndarray, origin: np.ndarray, voxel: float) -> None:
    idx = np.floor((points - origin) / voxel).astype(np.int64)
    np.clip(idx, 0, np.array(surface.shape) - 1, out=idx)
    flat = (idx[:, 0] * surface.shape[1] + idx[:, 1]) * surface.shape[2] + idx[:, 2]
    surface.ravel()[flat] = True


def surface_cells(vertices: np.ndarray, faces: np.ndarray, surface: np.ndarray, origin: np.ndarray, voxel: float) -> None:
    """Mark every cell of ``surface`` that a sample of a triangle falls in (samples < 0.7 voxel apart)."""
    _mark(surface, vertices, origin, voxel)  # every vertex is on some face (check_mesh drops the others)
    tris = vertices[faces].astype(np.float32)  # (F, 3, 3)
    # the longest edge is at most the diagonal of the triangle's bounding box: sample by that
    diagonal = np.sqrt(np.square(tris.max(axis=1) - tris.min(axis=1)).sum(axis=1))
    big = np.flatnonzero(diagonal > _SAMPLE_SPACING * voxel)  # smaller ones: their corners are samples enough
    if len(big) == 0:
        return
    k = np.ceil(diagonal[big] / (_SAMPLE_SPACING * voxel)).astype(np.int64)
    for level in np.unique(k):
        which = big[k == level]
        bary = _barycentric_lattice(int(level))
        per_chunk = max(1, _CHUNK_POINTS // len(bary))
        for start in range(0, len(which), per_chunk):
            chunk = tris[which[start:start + per_chunk]].astype(np.float64)  # (f, 3 corners, 3)
            corners = chunk.transpose(1, 0, 2).reshape(3, -1)  # (3 corners, f * 3)
            # bary @ corners as broadcasts: BLAS threads stall when other processes hold the cores
            points = bary[:, 0:1] * corners[0] + bary[:, 1:2] * corners[1] + bary[:, 2:3] * corners[2]
            _mark(surface, points.reshape(-1, 3), origin, voxel)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-cell dilation with the full 3x3x3 neighbourhood, as three separable passes of shifted ORs."""
    out = mask.copy()
    for axis in range(3):
        grown = out.copy()
        lead = [slice(None)] * 3
        lag = [slice(None)] * 3
        lead[axis], lag[axis] = slice(1, None), slice(None, -1)
        grown[tuple(lead)] |= out[tuple(lag)]
        grown[tuple(lag)] |= out[tuple(lead)]
        out = grown
    return out


def voxel_solid(vertices: np.ndarray, faces: np.ndarray, resolution: int) -> VoxelSolid:
    """The weighted voxel solid of a triangle soup (any orientation, holes, overlaps) at ``resolution``."""
    lo = vertices.min(axis=0)
    extent = vertices.max(axis=0) - lo
    longest = float(extent.max())
    if not np.isfinite(longest) or longest <= 0:
        raise InvalidInputError("mesh has no extent: every vertex is at the same point")
    voxel = longest / resolution
    # half a cell of offset: faces flush with the bounding box (boxes, flat bottoms) run through the middle
    # of their cells, where the weight 1/2 is right, not along cell boundaries
    dims = np.ceil(extent / voxel + 1.0 - 1e-9).astype(np.int64) + 2 * _PAD
    origin = lo - (_PAD + 0.5) * voxel
    surface = np.zeros(tuple(int(d) for d in dims), dtype=bool)
    surface_cells(vertices, faces, surface, origin, voxel)

    closed = _dilate(surface)
    labels, _ = ndimage.label(~closed)  # 6-connected free space
    outside = labels == labels[0, 0, 0]  # the padded border is one free component
    outside = _dilate(outside) & ~surface  # grow back through the closing band, never into the surface
    solid = ~outside
    facing_out = surface & _dilate(outside)
    weights = solid.astype(np.float32)
    weights[facing_out] = 0.5
    enclosed = int(np.count_nonzero(solid & ~surface))
    return VoxelSolid(
        weights=weights,
        origin=origin,
        voxel=voxel,
        resolution=resolution,
        surface_cells=int(np.count_nonzero(surface)),
        enclosed_cells=enclosed,
    )


def open_edge_fraction(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Share of edges used by exactly one face, vertices merged where they coincide (to 1e-6 of the size)."""
    lo = vertices.min(axis=0)
    size = float(np.ptp(vertices, axis=0).max()) or 1.0
    q = np.round((vertices - lo) / size * 1e6).astype(np.int64)
    codes = (q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2]
    _, merged = np.unique(codes, return_inverse=True)
    merged = merged.reshape(-1)
    if merged.max() + 1 == len(vertices):  # no coincident vertices: the faces as indexed
        return _open_share(faces, len(vertices))
    return _open_share(merged[faces], int(merged.max()) + 1)


def _open_share(f: np.ndarray, vertex_count: int) -> float:
    """Share of the distinct edges of faces ``f`` (vertex indices) used by exactly one face."""
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    keep = a != b
    lo_e, hi_e = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    edge = lo_e * vertex_count + hi_e
    edge.sort()
    if len(edge) == 0:
        return 1.0
    starts = np.r_[True, edge[1:] != edge[:-1]]
    counts = np.diff(np.r_[np.flatnonzero(starts), len(edge)])
    return float(np.count_nonzero(counts == 1)) / len(counts)
