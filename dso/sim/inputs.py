"""Reading and validating oracle inputs: occupancy grids and triangle meshes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import trimesh

from dso.sim.errors import InvalidInputError

MESH_SUFFIXES = frozenset({".glb", ".gltf", ".obj", ".ply", ".stl", ".off"})
GRID_SUFFIXES = frozenset({".npy"})

# Anything simulate() accepts: a grid, a mesh, a file path, or an object with `.occupancy`.
SimInput = Union[np.ndarray, trimesh.Trimesh, str, Path, Any]


def as_occupancy(array: Any) -> np.ndarray:
    """Validate an (N, N, N) occupancy array (x, y, z, z-up) and return it as bool."""
    arr = np.asarray(array)
    if arr.ndim != 3 or len(set(arr.shape)) != 1:
        raise InvalidInputError(f"occupancy grid must have shape (N, N, N), got {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidInputError("occupancy grid is empty (N = 0)")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise InvalidInputError(f"occupancy grid must be boolean or numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("occupancy grid holds NaN or infinite values")
    return arr > 0.5


def load_grid(path: Path) -> np.ndarray:
    """Load a ``.npy`` occupancy grid (no pickles)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # unreadable, truncated, or a pickle
        raise InvalidInputError(f"cannot read occupancy grid {path}: {exc}") from exc
    return as_occupancy(arr)


def load_mesh(path: Path) -> trimesh.Trimesh:
    """Load a mesh file as one triangle mesh (scenes are concatenated), no processing yet."""
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:
        raise InvalidInputError(f"cannot read mesh {path}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh):
        raise InvalidInputError(f"{path} holds no triangle mesh (got {type(mesh).__name__})")
    return mesh


def resolve_input(item: SimInput) -> np.ndarray | trimesh.Trimesh:
    """Turn any accepted input into an occupancy array (bool) or a Trimesh."""
    if isinstance(item, trimesh.Trimesh):
        return item
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise InvalidInputError(f"no such file: {path}")
        suffix = path.suffix.lower()
        if suffix in GRID_SUFFIXES:
            return load_grid(path)
        if suffix in MESH_SUFFIXES:
            return load_mesh(path)
        raise InvalidInputError(
            f"unknown input type {suffix!r} for {path}; expected .npy or one of {sorted(MESH_SUFFIXES)}"
        )
    if isinstance(item, np.ndarray):
        return as_occupancy(item)
    occupancy = getattr(item, "occupancy", None)
    if occupancy is not None:
        return as_occupancy(occupancy)
    raise InvalidInputError(f"cannot simulate an input of type {type(item).__name__}")


def clean_mesh(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Reject broken meshes, then repair what is cheap to repair (duplicate vertices, holes, winding)."""
    vertices = np.asarray(mesh.vertices, dtype=float)
    faces = np.asarray(mesh.faces)
    if len(faces) == 0 or len(vertices) < 4:
        raise InvalidInputError("mesh has no faces (or fewer than 4 vertices)")
    if len(faces) > max_faces:
        raise InvalidInputError(f"mesh has {len(faces)} faces, more than max_faces={max_faces}")
    if not np.all(np.isfinite(vertices)):
        raise InvalidInputError("mesh has NaN or infinite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InvalidInputError("mesh faces index vertices that do not exist")
    extents = np.ptp(vertices[faces.ravel()], axis=0)
    if np.min(extents) <= 1e-9 * max(float(np.max(extents)), 1e-300):
        raise InvalidInputError(f"mesh is flat (extents {extents.tolist()}): zero volume")
    repaired = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)  # merges duplicate vertices
    repaired.update_faces(repaired.nondegenerate_faces())
    if not repaired.is_watertight:
        trimesh.repair.fill_holes(repaired)
    trimesh.repair.fix_normals(repaired)
    return repaired
