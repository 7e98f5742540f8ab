"""Occupancy grid -> surface mesh, in TRELLIS's z-up frame over [-0.5, 0.5]^3."""

from __future__ import annotations

import numpy as np
import trimesh
from skimage.measure import marching_cubes


def occupancy_to_mesh(occupancy: np.ndarray) -> trimesh.Trimesh:
    """Marching cubes at the 0.5 level of the (padded) grid; voxel i is centred at (i + 0.5)/N - 0.5.

    Returns an empty mesh for an empty grid rather than failing, so a batch of
    samples always yields one mesh per sample (the oracle judges empty ones invalid).
    """
    occ = np.asarray(occupancy)
    if occ.ndim != 3 or len(set(occ.shape)) != 1:
        raise ValueError(f"occupancy must be a cubic (N, N, N) grid, got shape {occ.shape}")
    n = occ.shape[0]
    if not occ.any():
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64))
    padded = np.pad(occ.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5)
    # padded index j <-> voxel j - 1, whose centre is (j - 1 + 0.5)/n - 0.5
    verts = (verts - 0.5) / n - 0.5
    mesh = trimesh.Trimesh(vertices=verts, faces=faces[:, ::-1], process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


MESH_FORMATS = ("glb", "ply", "obj", "stl")


def export_mesh(mesh: trimesh.Trimesh, path, y_up: bool = False) -> None:
    """Write a mesh; z-up by default (the frame we simulate in). ``y_up`` rotates like TRELLIS's GLB export."""
    from pathlib import Path

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {path.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    out = mesh.copy()
    if y_up:
        out.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    out.export(path, file_type=fmt)
