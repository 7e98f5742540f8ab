"""Collision geometry + mass properties of one rigid object, placed on the ground.

Grids become exact boxes (merged voxels) or one convex hull; meshes become
their convex hull for contact with the mass of their voxelised solid (the
default, ``solid``: dso/sim/solid.py), CoACD convex parts (``decompose``) or
one convex hull (``hull``). Everything is translated so that the
lowest point sits at z = 0. In ``hull`` mode the mass properties are those of
the hull too (one convex solid: a clean stand-in for the paper's code, which
let MuJoCo infer inertia from the mesh with its default "legacy" method that
also over-counts concave regions); in the other modes they are the exact
solid's.

Why the exact solid matters but the hull's collision shape alone would not:
a rigid body on a plane only ever touches it on its convex hull, so what the
single-hull model gets wrong is the mass (the filled-in concavities), which
moves the centre of mass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy.spatial import ConvexHull, QhullError

from dso.config import SimSettings
from dso.sim.boxes import merge_boxes
from dso.sim.decompose import convex_parts
from dso.sim.errors import InvalidInputError
from dso.sim.inputs import check_mesh, clean_mesh
from dso.sim.mass import MassProperties, box_mass_properties, grid_mass_properties, mesh_mass_properties
from dso.sim.solid import open_edge_fraction, voxel_solid


@dataclass(frozen=True)
class CollisionGeometry:
    """What MuJoCo needs: box geoms and/or convex parts, plus the body's mass properties."""

    mode: str
    mass: MassProperties
    box_centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    box_half_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    convex_parts: list[np.ndarray] = field(default_factory=list)
    total_boxes: int = 0  # boxes in the exact partition (grids), before collision pruning
    note: str = ""  # how the solid was derived (meshes), added to the verdict's message

    @property
    def geom_count(self) -> int:
        return len(self.box_centres) + len(self.convex_parts)


def _hull(points: np.ndarray, what: str) -> trimesh.Trimesh:
    """The convex hull of ``points`` as a closed mesh; a flat point set is invalid input."""
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError) as exc:
        raise InvalidInputError(f"{what} has no volume (degenerate convex hull): {exc}") from exc
    mesh = trimesh.convex.convex_hull(points[hull.vertices])
    if mesh.volume <= 0:
        raise InvalidInputError(f"{what} has no volume")
    return mesh


def _line_extremes(points: np.ndarray) -> np.ndarray:
    """Drop lattice points that lie strictly between two others on an axis-parallel line.

    Such points are never convex-hull vertices, so the hull of what is left is
    the same hull; it cuts qhull's input (box corners) by about 5x.
    """
    for axis in (2, 0, 1):
        others = [a for a in range(3) if a != axis]
        base = int(points.max()) + 1
        code = (points[:, others[0]] * base + points[:, others[1]]) * base + points[:, axis]
        order = np.argsort(code)
        line = code[order] // base
        ends = np.ones(len(line), dtype=bool)
        ends[1:-1] = (line[1:-1] != line[:-2]) | (line[1:-1] != line[2:])
        points = points[order[ends]]
    return points


def _lattice_codes(points: np.ndarray, base: int) -> np.ndarray:
    """One integer per lattice point (x, y, z), for sorting and lookup."""
    return (points[:, 0] * base + points[:, 1]) * base + points[:, 2]


def _hull_vertex_boxes(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mask of boxes (integer corners ``lo``, ``hi``) holding the vertices of the solid's convex hull.

    A rigid body touches a plane only where the plane supports its convex hull,
    and that contact patch is the hull of the hull vertices lying in the plane.
    Boxes holding those vertices therefore give every orientation exactly the
    same support polygon as the whole solid; the other boxes never change it.
    A hull vertex is extreme, so it is a corner of every box that holds it;
    each vertex is given to the largest such box.
    """
    corners = _box_corners(lo, hi).reshape(-1, 3)
    points = _line_extremes(corners)
    try:
        vertices = points[ConvexHull(points.astype(float)).vertices]
    except QhullError:  # flat sheet of voxels: keep everything
        return np.ones(len(lo), dtype=bool)
    base = int(hi.max()) + 1
    codes = _lattice_codes(corners, base)
    volume = np.repeat(np.prod(hi - lo, axis=1), 8)
    order = np.lexsort((-volume, codes))  # by corner, largest box first
    first = np.searchsorted(codes[order], _lattice_codes(vertices, base))
    keep = np.zeros(len(lo), dtype=bool)
    keep[order[first] // 8] = True
    return keep


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    choose = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=bool)
    return np.where(choose[None], hi[:, None, :], lo[:, None, :])


def grid_geometry(occupancy: np.ndarray, settings: SimSettings, mode: str) -> CollisionGeometry:
    """Boxes (exact) or one hull for an (N, N, N) grid; voxel i spans [i/N - 0.5, (i+1)/N - 0.5] * scale."""
    count = int(np.count_nonzero(occupancy))
    if count == 0:
        raise InvalidInputError("occupancy grid is empty: no occupied voxels")
    if count < settings.min_voxels:
        raise InvalidInputError(f"occupancy grid has {count} occupied voxel(s); an object needs at least min_voxels={settings.min_voxels}")
    n = occupancy.shape[0]
    voxel = settings.object_scale / n
    lo, hi = merge_boxes(occupancy)
    origin = np.array([n / 2, n / 2, lo[:, 2].min()])  # grid centre in x, y; lowest voxel face at z = 0
    lo_m, hi_m = (lo - origin) * voxel, (hi - origin) * voxel
    if mode == "hull":
        corners = _line_extremes(_box_corners(lo, hi).reshape(-1, 3))
        hull_mesh = _hull((corners - origin) * voxel, "occupancy grid")
        mass = mesh_mass_properties(hull_mesh, settings.density)
        return CollisionGeometry("hull", mass, convex_parts=[np.asarray(hull_mesh.vertices)], total_boxes=len(lo))
    mass = box_mass_properties(lo_m, hi_m, settings.density)
    keep = _hull_vertex_boxes(lo, hi) if settings.prune_collision_boxes else np.ones(len(lo), dtype=bool)
    return CollisionGeometry(
        "boxes",
        mass,
        box_centres=((lo_m + hi_m) / 2)[keep],
        box_half_sizes=((hi_m - lo_m) / 2)[keep],
        total_boxes=len(lo),
    )


def _hull_vertices(points: np.ndarray, what: str) -> np.ndarray:
    """Vertices of the convex hull of ``points``; collinear or coplanar points are invalid input.

    Up to 30k points: qhull on all of them (exact). More: points inside the hull of a
    few extreme points (along 13 directions) are dropped first (never hull vertices);
    if over 30k remain (a dense, nearly convex scan), an inscribed hull from extreme
    points along spread directions (``_directional_extremes``) stands in. Hulls of
    over 1000 vertices are thinned the same way, for MuJoCo.
    """
    directions = np.array(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1],
         [1, 1, 1], [1, 1, -1], [1, -1, 1], [1, -1, -1]], dtype=float,
    )
    candidates = points
    if len(points) > _HULL_EXACT_MAX_POINTS:
        centre = points.mean(axis=0)
        flat = np.ascontiguousarray((points - centre).T, dtype=np.float32)  # (3, n)
        proj = _project(directions, flat)  # (13, n): argmax along contiguous rows
        extremes = points[np.unique(np.r_[proj.argmin(axis=1), proj.argmax(axis=1)])]
        try:
            inner = ConvexHull(extremes - centre)
            # strictly inside the hull of extreme points (with a margin for float32): never a hull vertex
            slack = 1e-5 * float(np.ptp(points, axis=0).max())
            margin = inner.equations[:, 3:4].astype(np.float32) + np.float32(slack)
            inside = np.ones(len(points), dtype=bool)
            for normal, offset in zip(inner.equations[:, :3].astype(np.float32), margin):
                inside &= normal[0] * flat[0] + normal[1] * flat[1] + normal[2] * flat[2] < -offset
            candidates = points[~inside]
        except (QhullError, ValueError):
            pass  # too few distinct extremes: let the full hull decide
    if len(candidates) > _HULL_EXACT_MAX_POINTS:  # e.g. a dense, nearly convex scan: qhull would crawl
        candidates = _directional_extremes(candidates)
    try:
        vertices = candidates[ConvexHull(candidates).vertices]
    except (QhullError, ValueError) as exc:
        raise InvalidInputError(f"{what} has no volume (degenerate convex hull: collinear or coplanar points)") from exc
    if len(vertices) > _HULL_MAX_VERTICES:  # a smooth hull: MuJoCo compiles and collides a lighter one
        vertices = _directional_extremes(vertices)
    return vertices


_HULL_EXACT_MAX_POINTS = 30_000  # more hull candidates than this: keep the extreme points along _HULL_DIRECTIONS
_HULL_MAX_VERTICES = 1000  # hulls with more vertices are thinned the same way
_HULL_DIRECTIONS = 200


def _fibonacci_directions(count: int) -> np.ndarray:
    """``count`` nearly evenly spread unit vectors (a Fibonacci sphere)."""
    i = np.arange(count) + 0.5
    z = 1.0 - 2.0 * i / count
    r = np.sqrt(1.0 - z**2)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _directional_extremes(points: np.ndarray) -> np.ndarray:
    """The points extreme along 200 spread directions (and the 26 grid directions): an inscribed hull.

    Every vertex of that hull is a vertex of the true hull (boxes keep all their corners),
    and the true hull's support in any direction exceeds it by at most about
    R (1 - cos(theta / 2)), theta ~ 0.25 rad the spacing of the directions: under 1 % of
    the object's radius R, about half a voxel of the solid at 128^3, for a hull that
    qhull and MuJoCo handle in milliseconds (a dense sphere has 10^5 hull vertices).
    """
    grid = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)])
    grid = grid / np.linalg.norm(grid, axis=1)[:, None]
    centred = np.ascontiguousarray((points - points.mean(axis=0)).T, dtype=np.float32)  # (3, n)
    chosen = [np.unique(_project(grid, centred).argmax(axis=1))]  # the 26 grid extremes of all points
    if len(points) > _HULL_EXACT_MAX_POINTS:
        # a dense surface: spread directions over an even subsample (neighbours are far closer than a voxel)
        stride = -(-len(points) // _HULL_EXACT_MAX_POINTS)
        sub = np.arange(0, len(points), stride)
        chosen.append(sub[_argmax_along(_fibonacci_directions(_HULL_DIRECTIONS), centred[:, sub])])
    else:
        chosen.append(_argmax_along(_fibonacci_directions(_HULL_DIRECTIONS), centred))
    return points[np.unique(np.concatenate(chosen))]


def _project(directions: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``directions`` (K, 3) dotted with ``columns`` (3, n), as three broadcasts: a (K, 3) x (3, n) matmul
    goes through BLAS, whose threads stall when other processes hold the cores."""
    d = directions.astype(np.float32)
    return d[:, 0:1] * columns[0] + d[:, 1:2] * columns[1] + d[:, 2:3] * columns[2]


def _argmax_along(directions: np.ndarray, centred: np.ndarray) -> np.ndarray:
    """For each direction, the index of the column of ``centred`` (3, n) furthest along it."""
    dirs = directions.astype(np.float32)
    best = np.zeros(len(directions), dtype=np.int64)
    best_value = np.full(len(directions), -np.inf, dtype=np.float32)
    rows = np.arange(len(directions))
    step = 32768
    for start in range(0, centred.shape[1], step):
        proj = _project(dirs, centred[:, start:start + step])  # (K, chunk): argmax along contiguous rows
        arg = proj.argmax(axis=1)
        value = proj[rows, arg]
        better = value > best_value
        best[better], best_value[better] = arg[better] + start, value[better]
    return best


def _cap_small_holes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Cap holes bounded by 3 or 4 edges (a missing triangle or quad), as in trimesh.repair.fill_holes."""
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=True)
    before = len(mesh.faces)
    trimesh.repair.fill_holes(mesh)
    return np.asarray(mesh.vertices, dtype=float), np.asarray(mesh.faces, dtype=np.int64), len(mesh.faces) - before


_CAP_HOLES_MAX_FACES = 50_000  # low-poly meshes: a missing triangle there is a hole wider than the voxel closing


def solid_mesh_geometry(vertices: np.ndarray, faces: np.ndarray, settings: SimSettings) -> CollisionGeometry:
    """Contact on the convex hull of the (placed) mesh, mass of its voxelised solid (dso/sim/solid.py)."""
    hull_vertices = _hull_vertices(vertices, "mesh")
    open_share = open_edge_fraction(vertices, faces)
    capped = 0
    if open_share > 0 and len(faces) <= _CAP_HOLES_MAX_FACES:
        vertices, faces, capped = _cap_small_holes(vertices, faces)
    solid = voxel_solid(vertices, faces, settings.mesh_voxels)
    mass = grid_mass_properties(solid.weights, solid.origin, solid.voxel, settings.density)
    note = f"{solid.describe()}; {open_share * 100:.1f} % of edges open"
    if capped:
        note += f", {capped} face(s) capping small holes"
    note += f"; contact on the convex hull ({len(hull_vertices)} vertices)"
    return CollisionGeometry("solid", mass, convex_parts=[hull_vertices], note=note)


def mesh_geometry(mesh: trimesh.Trimesh, settings: SimSettings, mode: str) -> CollisionGeometry:
    """Hull contact with the voxel solid's mass, CoACD parts (exact solid mass) or one hull (hull mass), z-up mesh."""
    if mode == "solid":
        vertices, faces = check_mesh(mesh, settings.max_faces)
        vertices = vertices * (settings.object_scale * settings.mesh_scale)
        vertices = vertices - np.array([0.0, 0.0, vertices[:, 2].min()])
        return solid_mesh_geometry(vertices, faces, settings)
    mesh = clean_mesh(mesh, settings.max_faces)
    vertices = np.asarray(mesh.vertices, dtype=float) * (settings.object_scale * settings.mesh_scale)
    vertices = vertices - np.array([0.0, 0.0, vertices[:, 2].min()])
    placed = trimesh.Trimesh(vertices=vertices, faces=np.asarray(mesh.faces), process=False)
    if mode == "hull":
        hull_mesh = _hull(vertices, "mesh")
        mass = mesh_mass_properties(hull_mesh, settings.density)
        return CollisionGeometry("hull", mass, convex_parts=[np.asarray(hull_mesh.vertices)])
    if not placed.is_watertight:
        raise InvalidInputError(
            "mesh is not watertight even after repair (merging vertices, filling holes); "
            "its solid and mass are undefined. Use --mode hull to simulate its convex hull instead"
        )
    mass = mesh_mass_properties(placed, settings.density)
    parts = convex_parts(vertices, placed.faces, settings.coacd_threshold, settings.coacd_seed, settings.cache_dir)
    return CollisionGeometry("decompose", mass, convex_parts=parts)


def build_geometry(item: np.ndarray | trimesh.Trimesh, settings: SimSettings) -> CollisionGeometry:
    """Pick the geometry for an input: grids use boxes|hull, meshes solid (mode boxes)|decompose|hull."""
    if isinstance(item, trimesh.Trimesh):
        return mesh_geometry(item, settings, {"boxes": "solid"}.get(settings.mode, settings.mode))
    # a box partition already is an exact convex decomposition of a grid
    return grid_geometry(item, settings, "hull" if settings.mode == "hull" else "boxes")
