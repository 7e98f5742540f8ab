"""What the console shows of one labelled sample: its mesh (upright or at rest) as GLB, and a PNG preview.

Frames. The occupancy grid spans the unit cube [-0.5, 0.5]^3, z up (TRELLIS's frame,
``dso.models.mesh.occupancy_to_mesh``). The simulator (``dso.sim.geometry``) places the
same grid with its body origin at the grid centre in x, y and at the lowest voxel face
in z, scaled by ``sim.object_scale`` metres per unit, and reports the body's final
``position`` (metres) and ``quaternion`` (w, x, y, z). Here the resting pose is drawn in
grid units: ``v' = R (v - o) + o + (0, 0, p_z / scale)`` with ``o`` the body origin, so
the ground stays where the upright object stood; the horizontal drift is dropped so
the object stays in view.

A sample from a mesh-emitting generator is drawn from its own mesh (z up, in mesh units):
the simulator puts that body's origin at (0, 0, lowest vertex) and scales it by
``sim.object_scale * sim.mesh_scale`` metres per unit (``dso.sim.geometry.mesh_geometry``),
so the same formula holds with that origin and scale. Every function below takes either
an occupancy grid or such a mesh (``Drawable``).

GLB files are y-up (glTF's convention): the z-up mesh is rotated -90 degrees about x,
and shifted so that the ground is the plane y = 0.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import trimesh
from PIL import Image

from dso.config import ShapesSettings
from dso.models.mesh import occupancy_to_mesh
from dso.shapes.camera import Camera
from dso.shapes.render import render_mesh, render_occupancy, to_pil

Pose = Literal["upright", "resting"]
Drawable = Union[np.ndarray, trimesh.Trimesh]  # an occupancy grid, or a mesh-emitting generator's mesh (z up)
POSES: tuple[str, ...] = ("upright", "resting")
Z_UP_TO_Y_UP = trimesh.transformations.rotation_matrix(-np.pi / 2, [1.0, 0.0, 0.0])


class NoRestingPoseError(ValueError):
    """The record carries no final pose (older record, or the simulator gave no physics result)."""


@dataclass(frozen=True)
class RestingPose:
    """The simulator's final pose of the body: origin in metres and unit quaternion (w, x, y, z)."""

    position: tuple[float, float, float]
    quaternion: tuple[float, float, float, float]

    @classmethod
    def from_lists(cls, position: list[float] | None, quaternion: list[float] | None) -> RestingPose | None:
        if position is None or quaternion is None:
            return None
        if len(position) != 3 or len(quaternion) != 4:
            raise ValueError(f"pose needs 3 position and 4 quaternion values, got {len(position)} and {len(quaternion)}")
        q = np.asarray(quaternion, dtype=float)
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError(f"pose quaternion {quaternion} is not a rotation")
        return cls(tuple(float(v) for v in position), tuple(float(v) for v in q / norm))  # type: ignore[arg-type]

    def rotation(self) -> np.ndarray:
        """3x3 rotation matrix of the quaternion."""
        return trimesh.transformations.quaternion_matrix(self.quaternion)[:3, :3]


def ground_height(occupancy: Drawable) -> float:
    """Height of the lowest occupied voxel face (grid units) or lowest vertex (mesh units): where the simulator put the ground."""
    if isinstance(occupancy, trimesh.Trimesh):
        return float(np.min(occupancy.vertices[:, 2]))
    occ = np.asarray(occupancy, dtype=bool)
    if not occ.any():
        return -0.5
    lowest = int(np.nonzero(occ.any(axis=(0, 1)))[0].min())
    return -0.5 + lowest / occ.shape[2]


def voxel_bounds(occupancy: np.ndarray) -> np.ndarray:
    """(2, 3) min/max corner of the occupied voxels in grid units (the unit cube when empty)."""
    occ = np.asarray(occupancy, dtype=bool)
    n = np.array(occ.shape, dtype=float)
    if not occ.any():
        return np.array([[-0.5] * 3, [0.5] * 3])
    index = np.argwhere(occ)
    return np.stack([index.min(axis=0) / n - 0.5, (index.max(axis=0) + 1) / n - 0.5])


def body_origin(occupancy: Drawable) -> np.ndarray:
    """The simulator's body origin: grid centre (mesh: x = y = 0) in x, y; the ground height in z."""
    return np.array([0.0, 0.0, ground_height(occupancy)])


def upright_mesh(occupancy: Drawable) -> trimesh.Trimesh:
    """The sample as generated: marching cubes of a grid, or the generator's own mesh."""
    return occupancy if isinstance(occupancy, trimesh.Trimesh) else occupancy_to_mesh(occupancy)


def resting_mesh(occupancy: Drawable, pose: RestingPose, object_scale: float) -> trimesh.Trimesh:
    """The sample's mesh turned into the simulator's final pose (its own units, z up, same ground).

    ``object_scale``: metres per unit (``sim.object_scale`` for grids, times ``sim.mesh_scale`` for meshes).
    """
    if object_scale <= 0:
        raise ValueError(f"object_scale must be > 0, got {object_scale}")
    mesh = upright_mesh(occupancy)
    origin = body_origin(occupancy)
    lift = np.array([0.0, 0.0, pose.position[2] / object_scale])
    vertices = (np.asarray(mesh.vertices) - origin) @ pose.rotation().T + origin + lift
    return trimesh.Trimesh(vertices=vertices, faces=np.asarray(mesh.faces), process=False)


def posed_mesh(
    occupancy: Drawable, which: Pose, pose: RestingPose | None, object_scale: float
) -> trimesh.Trimesh:
    """Upright (as generated) or resting (as the simulator left it) mesh of one sample."""
    if which == "upright":
        return upright_mesh(occupancy)
    if pose is None:
        raise NoRestingPoseError("this sample's verdict carries no final pose")
    return resting_mesh(occupancy, pose, object_scale)


def glb_bytes(mesh: trimesh.Trimesh, ground_z: float) -> bytes:
    """Binary glTF of a z-up mesh: y up, ground (z = ground_z) moved to y = 0."""
    out = mesh.copy()
    out.apply_translation([0.0, 0.0, -ground_z])
    out.apply_transform(Z_UP_TO_Y_UP)
    return out.export(file_type="glb")


@dataclass(frozen=True)
class PreviewView:
    """Direction of the preview camera; its distance and target follow the object (framing)."""

    azimuth_deg: float
    elevation_deg: float
    fov_deg: float = 30.0
    margin: float = 1.1  # the object's bounding sphere, enlarged by this factor, fills the view


def framing_camera(bounds: np.ndarray, view: PreviewView) -> Camera:
    """A camera aimed at the centre of ``bounds`` ((2, 3) min/max), far enough that all of it is in view."""
    lo, hi = np.asarray(bounds, dtype=float)
    radius = max(float(np.linalg.norm(hi - lo)) / 2, 1e-3) * view.margin
    distance = radius / np.sin(np.deg2rad(view.fov_deg) / 2)
    centre = tuple(float(c) for c in (lo + hi) / 2)
    return Camera(view.azimuth_deg, view.elevation_deg, distance=distance, fov_deg=view.fov_deg, target=centre)


def preview_png(
    occupancy: Drawable,
    which: Pose,
    pose: RestingPose | None,
    object_scale: float,
    view: PreviewView,
    size: int,
    shapes: ShapesSettings,
) -> bytes:
    """PNG (RGBA, transparent background) of the sample: voxels when upright, the posed mesh at rest (meshes: always)."""
    if which == "upright" and not isinstance(occupancy, trimesh.Trimesh):  # voxels drawn as they are; no mesh needed
        rgba = render_occupancy(occupancy, framing_camera(voxel_bounds(occupancy), view), size, settings=shapes)
    else:
        mesh = posed_mesh(occupancy, which, pose, object_scale)
        rgba = render_mesh(mesh, framing_camera(mesh.bounds, view), size, settings=shapes)
    buffer = io.BytesIO()
    image: Image.Image = to_pil(rgba)
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


class MediaCache:
    """The most recently used rendered bytes, up to a byte budget; samples never change, so entries never go stale."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        data = make()
        if len(data) > self.max_bytes:
            return data  # larger than the whole budget: serve it, keep nothing
        with self._lock:
            if key not in self._entries:
                self._entries[key] = data
                self.size_bytes += len(data)
            while self.size_bytes > self.max_bytes:
                _old, evicted = self._entries.popitem(last=False)
                self.size_bytes -= len(evicted)
        return data

    def __len__(self) -> int:
        return len(self._entries)
