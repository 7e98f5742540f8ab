"""Render occupancy grids and meshes to RGBA prompt images on the CPU (numpy, no display, no GPU).

Voxels are drawn as their exposed, camera-facing square faces; meshes as their
triangles. Both go through the same z-buffer rasteriser and the same Lambert shading
with a light fixed relative to the camera, on a transparent background.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dso.config import ShapesSettings
from dso.shapes.camera import Camera, default_views
from dso.shapes.raster import rasterize
from dso.shapes.voxelize import voxel_centers

__all__ = ["Camera", "default_views", "render_occupancy", "render_mesh", "to_pil"]

MIN_SIZE, MAX_SIZE = 32, 1024  # 518 (the DINOv2 input size) renders directly
# For a face normal along each axis, the two in-plane axes in counter-clockwise order.
_FACE_AXES = {0: (1, 2), 1: (2, 0), 2: (0, 1)}
_CORNER_SIGNS = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)


def _check_size(size: int) -> int:
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"image size must be within {MIN_SIZE}..{MAX_SIZE}, got {size}")
    return int(size)


def _light(camera: Camera, settings: ShapesSettings) -> np.ndarray:
    """The light direction (towards the light) in world coordinates; fixed relative to the camera."""
    right, up, forward = camera.basis()
    lx, ly, lz = settings.light_direction
    light = lx * right + ly * up - lz * forward
    return light / np.linalg.norm(light)


def _shade(normals: np.ndarray, colors: np.ndarray, camera: Camera, settings: ShapesSettings) -> np.ndarray:
    """Lambert shading: colour * (ambient + diffuse * max(n . l, 0)), as uint8 RGB per face."""
    lambert = settings.ambient + settings.diffuse * np.clip(normals @ _light(camera, settings), 0.0, None)
    return np.clip(colors * lambert[:, None], 0, 255).astype(np.uint8)


def _compose(face_ids: np.ndarray, face_rgb: np.ndarray) -> np.ndarray:
    size = face_ids.shape[0]
    image = np.zeros((size, size, 4), dtype=np.uint8)
    covered = face_ids >= 0
    image[covered, :3] = face_rgb[face_ids[covered]]
    image[covered, 3] = 255
    return image


def _part_colors(labels: np.ndarray, palette: Sequence[Sequence[int]] | None, settings: ShapesSettings) -> np.ndarray:
    table = np.asarray(palette if palette is not None else settings.palette, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 3 or len(table) == 0:
        raise ValueError(f"palette must be a non-empty list of RGB triples, got shape {table.shape}")
    default = np.asarray(settings.default_color, dtype=np.float64)
    colors = table[(labels.astype(np.int64) - 1) % len(table)]
    colors[labels == 0] = default  # occupied but unlabelled
    return colors


def exposed_faces(occupancy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices (N, 3), face axis (N,) and face sign (N,) of every face with empty space outside it."""
    occ = np.asarray(occupancy, dtype=bool)
    voxels, axes, signs = [], [], []
    for axis in range(3):
        for sign in (-1, 1):
            neighbour = np.zeros_like(occ)
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            if sign > 0:  # neighbour[i] = occ[i + 1]
                src[axis], dst[axis] = slice(1, None), slice(None, -1)
            else:
                src[axis], dst[axis] = slice(None, -1), slice(1, None)
            neighbour[tuple(dst)] = occ[tuple(src)]
            idx = np.argwhere(occ & ~neighbour)
            voxels.append(idx)
            axes.append(np.full(len(idx), axis))
            signs.append(np.full(len(idx), sign))
    return np.concatenate(voxels), np.concatenate(axes), np.concatenate(signs)


def render_occupancy(
    occupancy: np.ndarray,
    camera: Camera,
    size: int = 128,
    parts: np.ndarray | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    settings: ShapesSettings | None = None,
) -> np.ndarray:
    """RGBA uint8 (size, size, 4) image of a cubic occupancy grid in the unit cube; alpha 0 off the object.

    ``parts`` (uint8, same shape) colours each voxel by label from ``palette``
    (default settings.palette); without it every voxel gets settings.default_color.
    """
    settings = settings or ShapesSettings()
    size = _check_size(size)
    occ = np.asarray(occupancy)
    if occ.ndim != 3 or len(set(occ.shape)) != 1:
        raise ValueError(f"occupancy must be a cubic (R, R, R) grid, got shape {occ.shape}")
    if parts is not None and np.shape(parts) != occ.shape:
        raise ValueError(f"parts shape {np.shape(parts)} differs from occupancy shape {occ.shape}")
    occ = occ.astype(bool, copy=False)
    resolution = occ.shape[0]
    voxels, axes, signs = exposed_faces(occ)
    centers = voxel_centers(resolution)[voxels]  # (N, 3) voxel centres
    normals = np.zeros((len(voxels), 3))
    normals[np.arange(len(voxels)), axes] = signs
    half = 0.5 / resolution
    face_centers = centers + normals * half
    visible = camera.sees_front_of(face_centers, normals)
    voxels, axes, normals, face_centers = voxels[visible], axes[visible], normals[visible], face_centers[visible]

    corners = np.repeat(face_centers[:, None, :], 4, axis=1)
    for axis, (u_axis, v_axis) in _FACE_AXES.items():
        on_axis = axes == axis
        corners[on_axis, :, u_axis] += _CORNER_SIGNS[:, 0] * half
        corners[on_axis, :, v_axis] += _CORNER_SIGNS[:, 1] * half
    cols, rows, keys = camera.project(corners.reshape(-1, 3), size)
    face_ids = rasterize(cols.reshape(-1, 4), rows.reshape(-1, 4), keys.reshape(-1, 4), size)

    labels = parts[tuple(voxels.T)] if parts is not None else np.zeros(len(voxels), dtype=np.uint8)
    face_rgb = _shade(normals, _part_colors(np.asarray(labels), palette, settings), camera, settings)
    return _compose(face_ids, face_rgb)


def render_mesh(
    mesh, camera: Camera, size: int = 128, color: Sequence[int] | None = None, settings: ShapesSettings | None = None
) -> np.ndarray:
    """RGBA uint8 (size, size, 4) image of a triangle mesh (``trimesh.Trimesh``, unit-cube coordinates).

    Faces are shaded from the side the camera sees, so meshes with inconsistent
    winding still render.
    """
    settings = settings or ShapesSettings()
    size = _check_size(size)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"mesh faces must be (F, 3) triangles, got shape {faces.shape}")
    if len(faces) == 0:
        return np.zeros((size, size, 4), dtype=np.uint8)
    triangles = vertices[faces]  # (F, 3, 3)
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = normals / np.where(lengths > 0, lengths, 1.0)
    facing = camera.sees_front_of(triangles.mean(axis=1), normals)
    normals[~facing] *= -1.0
    cols, rows, keys = camera.project(triangles.reshape(-1, 3), size)
    face_ids = rasterize(cols.reshape(-1, 3), rows.reshape(-1, 3), keys.reshape(-1, 3), size)
    base = np.asarray(color if color is not None else settings.default_color, dtype=np.float64)
    face_rgb = _shade(normals, np.broadcast_to(base, (len(faces), 3)), camera, settings)
    return _compose(face_ids, face_rgb)


def to_pil(rgba: np.ndarray) -> Image.Image:
    """A PIL RGBA image of a rendered array."""
    arr = np.asarray(rgba)
    if arr.ndim != 3 or arr.shape[2] != 4 or arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 4) array, got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr, mode="RGBA")
