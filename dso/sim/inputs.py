"""Reading and validating oracle inputs: occupancy grids and triangle meshes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
import numpy.lib.format as npformat
import trimesh

from dso.sim.errors import InvalidInputError

MESH_SUFFIXES = frozenset({".glb", ".gltf", ".obj", ".ply", ".stl", ".off"})
GRID_SUFFIXES = frozenset({".npy"})

# Anything simulate() accepts: a grid, a mesh, a file path, or an object with `.occupancy` (or only a `.mesh`).
SimInput = Union[np.ndarray, trimesh.Trimesh, str, Path, Any]


def check_grid_shape(shape: tuple[int, ...], max_side: int | None, where: str = "occupancy grid") -> None:
    """Refuse a shape that is not (N, N, N) with 0 < N <= ``max_side`` (``sim.max_grid_side``)."""
    if len(shape) != 3 or len(set(shape)) != 1:
        raise InvalidInputError(f"{where} must have shape (N, N, N), got {tuple(shape)}")
    if shape[0] == 0:
        raise InvalidInputError(f"{where} is empty (N = 0)")
    if max_side is not None and shape[0] > max_side:
        raise InvalidInputError(
            f"{where} is {shape[0]}^3, larger than the limit of {max_side}^3 (sim.max_grid_side)"
        )


def as_occupancy(array: Any, max_side: int | None = None) -> np.ndarray:
    """Validate an (N, N, N) occupancy array (x, y, z, z-up) and return it as bool."""
    arr = np.asarray(array)
    check_grid_shape(arr.shape, max_side)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.number)):
        raise InvalidInputError(f"occupancy grid must be boolean or numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("occupancy grid holds NaN or infinite values")
    return arr > 0.5


def grid_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` file declares, read from its header alone (no array data)."""
    try:
        with path.open("rb") as handle:
            version = npformat.read_magic(handle)
            read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
            shape, _fortran_order, dtype = read(handle)
    except Exception as exc:  # not a .npy, or a header numpy cannot parse
        raise InvalidInputError(f"cannot read occupancy grid {path}: {exc}") from exc
    return tuple(shape), dtype


def load_grid(path: Path, max_side: int | None = None) -> np.ndarray:
    """Load a ``.npy`` occupancy grid (no pickles); its shape is checked from the header, before reading."""
    shape, dtype = grid_header(path)
    check_grid_shape(shape, max_side, where=f"occupancy grid {path}")
    if dtype.hasobject:
        raise InvalidInputError(f"occupancy grid {path} holds Python objects (dtype {dtype}); expected bool or numbers")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # unreadable, truncated, or a pickle
        raise InvalidInputError(f"cannot read occupancy grid {path}: {exc}") from exc
    return as_occupancy(arr, max_side)


def load_mesh(path: Path) -> trimesh.Trimesh:
    """Load a mesh file as one triangle mesh (scenes are concatenated), no processing yet."""
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:
        raise InvalidInputError(f"cannot read mesh {path}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh):
        raise InvalidInputError(f"{path} holds no triangle mesh (got {type(mesh).__name__})")
    return mesh


# glTF's frame is +Y up (the spec); a turn of +90 deg about x takes it to our +Z up: (x, y, z) -> (x, -z, y)
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
Y_UP_SUFFIXES = frozenset({".glb", ".gltf"})


def mesh_up_axis(mesh_up: str, suffix: str | None) -> str:
    """"z" or "y": ``mesh_up`` ("auto" -> "y" for glTF files, whose spec is y-up; "z" for anything else)."""
    if mesh_up == "auto":
        return "y" if suffix in Y_UP_SUFFIXES else "z"
    if mesh_up not in ("y", "z"):
        raise ValueError(f"mesh_up must be auto, z or y; got {mesh_up!r}")
    return mesh_up


def to_z_up(mesh: trimesh.Trimesh, up: str) -> trimesh.Trimesh:
    """The mesh in our z-up frame (a y-up mesh is turned, a z-up one returned as is)."""
    if up == "z":
        return mesh
    turned = mesh.copy()
    turned.apply_transform(Y_UP_TO_Z_UP)
    return turned


def resolve_input(
    item: SimInput, max_grid_side: int | None = None, mesh_up: str = "z"
) -> np.ndarray | trimesh.Trimesh:
    """Turn any accepted input into an occupancy array (bool) or a z-up Trimesh (grids up to ``max_grid_side``).

    ``mesh_up`` is the up axis of meshes (``sim.mesh_up``): "z", "y", or "auto" (y for .glb / .gltf files).
    """
    if isinstance(item, trimesh.Trimesh):
        return to_z_up(item, mesh_up_axis(mesh_up, None))
    if isinstance(item, (str, Path)):
        path = Path(item)
        if not path.is_file():
            raise InvalidInputError(f"no such file: {path}")
        suffix = path.suffix.lower()
        if suffix in GRID_SUFFIXES:
            return load_grid(path, max_grid_side)
        if suffix in MESH_SUFFIXES:
            return to_z_up(load_mesh(path), mesh_up_axis(mesh_up, suffix))
        raise InvalidInputError(
            f"unknown input type {suffix!r} for {path}; expected .npy or one of {sorted(MESH_SUFFIXES)}"
        )
    if isinstance(item, np.ndarray):
        return as_occupancy(item, max_grid_side)
    occupancy = getattr(item, "occupancy", None)
    if occupancy is not None:
        return as_occupancy(occupancy, max_grid_side)
    mesh = getattr(item, "mesh", None)  # a generator that emits meshes (no grid): the same contract
    if isinstance(mesh, trimesh.Trimesh):
        return to_z_up(mesh, mesh_up_axis(mesh_up, None))
    raise InvalidInputError(f"cannot simulate an input of type {type(item).__name__}")


def check_mesh(mesh: trimesh.Trimesh, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Refuse meshes that cannot be simulated at all; return (vertices float64, faces int64), unreferenced vertices dropped."""
    vertices = np.asarray(mesh.vertices, dtype=float)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0 or len(vertices) < 4:
        raise InvalidInputError("mesh has no faces (or fewer than 4 vertices)")
    if len(faces) > max_faces:
        raise InvalidInputError(f"mesh has {len(faces)} faces, more than max_faces={max_faces} (sim.max_faces)")
    if not np.all(np.isfinite(vertices)):
        raise InvalidInputError("mesh has NaN or infinite vertex coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InvalidInputError("mesh faces index vertices that do not exist")
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    if not used.all():  # unreferenced vertices (common in OBJ files) are not part of the object: drop them
        vertices, faces = vertices[used], (np.cumsum(used) - 1)[faces]
    extents = np.ptp(vertices, axis=0)
    if np.min(extents) <= 1e-9 * max(float(np.max(extents)), 1e-300):
        raise InvalidInputError(f"mesh is flat (extents {extents.tolist()}): zero volume")
    return vertices, faces


def clean_mesh(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Reject broken meshes, then repair what is cheap to repair (duplicate vertices, holes, winding)."""
    vertices, faces = check_mesh(mesh, max_faces)
    repaired = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)  # merges duplicate vertices
    repaired.update_faces(repaired.nondegenerate_faces())
    if not repaired.is_watertight:
        trimesh.repair.fill_holes(repaired)
    trimesh.repair.fix_normals(repaired)
    return repaired
