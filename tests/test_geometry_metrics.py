import numpy as np
import trimesh

from dso.evaluate.geometry import compare_meshes, compare_points, normalize_unit_cube


def _box(extents=(0.4, 0.3, 0.8)):
    return trimesh.creation.box(extents=extents)


def test_identical_meshes_score_perfectly():
    pts = np.random.default_rng(0).random((500, 3))
    s = compare_points(pts, pts)
    assert s.chamfer == 0.0 and s.fscore == 1.0


def test_identical_mesh_samples_are_close():
    m = _box()
    s = compare_meshes(m, m)
    assert s.chamfer < 0.02 and s.fscore > 0.99


def test_shifted_and_scaled_copy_is_realigned():
    m = _box()
    moved = m.copy()
    moved.apply_scale(1.7)
    moved.apply_translation([0.3, -0.2, 0.5])
    s_aligned = compare_meshes(moved, m)
    assert s_aligned.fscore > 0.99


def test_icp_recovers_a_small_rotation_that_normalisation_cannot():
    m = trimesh.creation.cylinder(radius=0.1, height=1.0, sections=32)
    m.apply_translation([0.2, 0.0, 0.0])
    rot = m.copy()
    rot.apply_transform(trimesh.transformations.rotation_matrix(0.12, [1, 0, 0]))
    raw = compare_meshes(rot, m, align=False)
    aligned = compare_meshes(rot, m, align=True)
    assert aligned.chamfer < raw.chamfer


def test_different_shapes_score_worse():
    s = compare_meshes(_box((0.9, 0.1, 0.1)), _box((0.3, 0.3, 0.3)))
    assert s.fscore < 0.6 and s.chamfer > 0.05


def test_normalise_rejects_degenerate():
    import pytest

    with pytest.raises(ValueError):
        normalize_unit_cube(np.zeros((10, 3)))
