"""CPU renderer for occupancy grids and meshes (dso.shapes.render)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trimesh

from dso.config import ShapesSettings
from dso.shapes.procedural import sample_object
from dso.shapes.render import Camera, default_views, render_mesh, render_occupancy, to_pil

CAMERA = Camera(azimuth=30.0, elevation=25.0)


def _block(resolution=32, lo=(12, 12, 0), hi=(20, 20, 8)):
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return grid


def _pixel_of(camera: Camera, point, size: int) -> tuple[int, int]:
    col, row, _ = camera.project(np.asarray([point], dtype=float), size)
    return int(row[0]), int(col[0])


@pytest.mark.parametrize("size", [32, 128, 200])
def test_image_size_alpha_and_corners(size):
    grid = _block()
    image = render_occupancy(grid, CAMERA, size=size)
    assert image.shape == (size, size, 4) and image.dtype == np.uint8
    alpha = image[..., 3]
    assert set(np.unique(alpha)) <= {0, 255}
    assert alpha[0, 0] == alpha[0, -1] == alpha[-1, 0] == alpha[-1, -1] == 0
    centre = (np.array([12, 12, 0]) + np.array([20, 20, 8])) / 2 / 32 - 0.5
    assert alpha[_pixel_of(CAMERA, centre, size)] > 0
    assert np.all(image[alpha == 0, :3] == 0)


def test_empty_grid_is_fully_transparent():
    image = render_occupancy(np.zeros((16, 16, 16), dtype=bool), CAMERA, size=64)
    assert image.shape == (64, 64, 4) and not image.any()


def test_shading_differs_between_faces_of_a_cube():
    image = render_occupancy(_block(), CAMERA, size=128)
    colors = {tuple(c) for c in image[image[..., 3] > 0, :3]}
    assert len(colors) == 3  # top and two sides, each flat-shaded differently


def test_nearer_voxels_hide_farther_ones():
    grid = np.zeros((32, 32, 32), dtype=bool)
    parts = np.zeros((32, 32, 32), dtype=np.uint8)
    grid[20:26, 12:20, 12:20] = True  # label 1 (red) towards +x
    parts[20:26, 12:20, 12:20] = 1
    grid[6:12, 8:24, 8:24] = True  # label 2 (blue), larger, towards -x
    parts[6:12, 8:24, 8:24] = 2
    palette = [(255, 0, 0), (0, 0, 255)]
    centre = (0.0, 0.0, 0.0)
    from_plus_x = Camera(azimuth=0.0, elevation=0.0)
    from_minus_x = Camera(azimuth=180.0, elevation=0.0)
    front = render_occupancy(grid, from_plus_x, size=64, parts=parts, palette=palette)
    back = render_occupancy(grid, from_minus_x, size=64, parts=parts, palette=palette)
    r, g, b, a = front[_pixel_of(from_plus_x, centre, 64)]
    assert a == 255 and r > 0 and b == 0
    r, g, b, a = back[_pixel_of(from_minus_x, centre, 64)]
    assert a == 255 and b > 0 and r == 0


def test_part_labels_pick_palette_colours():
    obj = sample_object(4, resolution=32)
    plain = render_occupancy(obj.occupancy, CAMERA, size=96)
    coloured = render_occupancy(obj.occupancy, CAMERA, size=96, parts=obj.parts)
    assert np.array_equal(plain[..., 3], coloured[..., 3])  # same silhouette
    def distinct(image):
        return len({tuple(c) for c in image[image[..., 3] > 0, :3]})

    assert distinct(coloured) > distinct(plain)
    with pytest.raises(ValueError, match="palette"):
        render_occupancy(obj.occupancy, CAMERA, size=96, parts=obj.parts, palette=[1, 2, 3])


def test_mesh_and_voxel_renders_of_the_same_box_agree():
    resolution = 32
    grid = _block(resolution, lo=(8, 10, 0), hi=(24, 22, 20))
    lo = np.array([8, 10, 0]) / resolution - 0.5
    hi = np.array([24, 22, 20]) / resolution - 0.5
    box = trimesh.creation.box(extents=hi - lo)
    box.apply_translation((lo + hi) / 2)
    for camera in default_views(3, seed=1):
        voxels = render_occupancy(grid, camera, size=96)[..., 3] > 0
        mesh = render_mesh(box, camera, size=96)[..., 3] > 0
        iou = (voxels & mesh).sum() / (voxels | mesh).sum()
        assert iou > 0.97
    flipped = trimesh.Trimesh(box.vertices, box.faces[:, ::-1], process=False)  # inverted winding still shades
    assert np.array_equal(render_mesh(flipped, CAMERA, size=64), render_mesh(box, CAMERA, size=64))


def test_default_views_keep_the_unit_cube_in_frame():
    views = default_views(24, seed=5)
    assert views == default_views(24, seed=5) and views != default_views(24, seed=6)
    settings = ShapesSettings()
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    for camera in views:
        assert settings.elevation_range[0] <= camera.elevation <= settings.elevation_range[1]
        col, row, _ = camera.project(corners, 128)
        assert col.min() >= 0 and row.min() >= 0 and col.max() <= 128 and row.max() <= 128


def test_procedural_objects_render_inside_the_frame():
    for seed in range(10):
        obj = sample_object(seed, resolution=64)
        for camera in default_views(2, seed=seed):
            alpha = render_occupancy(obj.occupancy, camera, size=128, parts=obj.parts)[..., 3]
            assert alpha.any()
            assert not (alpha[0].any() or alpha[-1].any() or alpha[:, 0].any() or alpha[:, -1].any())


def test_orthographic_camera_renders():
    camera = Camera(azimuth=45.0, elevation=30.0, orthographic=True, ortho_scale=0.9)
    image = render_occupancy(_block(), camera, size=64)
    assert image[..., 3].any() and image[0, 0, 3] == 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="size"):
        render_occupancy(_block(), CAMERA, size=16)
    with pytest.raises(ValueError, match="cubic"):
        render_occupancy(np.ones((4, 4, 5), dtype=bool), CAMERA)
    with pytest.raises(ValueError, match="elevation"):
        Camera(azimuth=0.0, elevation=90.0)
    with pytest.raises(ValueError, match="uint8"):
        to_pil(np.zeros((8, 8, 3), dtype=np.uint8))


def test_to_pil_round_trips():
    image = render_occupancy(_block(), CAMERA, size=48)
    pil = to_pil(image)
    assert pil.mode == "RGBA" and pil.size == (48, 48)
    assert np.array_equal(np.asarray(pil), image)


def test_render_is_fast_enough_for_pretraining():
    obj = sample_object(1, resolution=64)
    render_occupancy(obj.occupancy, CAMERA, size=128, parts=obj.parts)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        render_occupancy(obj.occupancy, CAMERA, size=128, parts=obj.parts)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.05  # target "well under 50 ms" on one busy core; typically ~4 ms
