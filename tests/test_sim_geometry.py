"""Exact box partition of voxel grids, exact mass properties, and hull-vertex collision pruning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial import ConvexHull

from dso.config import SimSettings
from dso.sim.boxes import merge_boxes
from dso.sim.geometry import _box_corners, build_geometry
from dso.sim.mass import box_mass_properties, voxel_mass_properties


def coverage(shape, lo, hi) -> np.ndarray:
    count = np.zeros(shape, dtype=int)
    for a, b in zip(lo, hi):
        count[a[0] : b[0], a[1] : b[1], a[2] : b[2]] += 1
    return count


@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7))))
def test_boxes_cover_every_occupied_voxel_exactly_once(occ):
    lo, hi = merge_boxes(occ)
    assert np.array_equal(coverage(occ.shape, lo, hi), occ.astype(int))
    assert np.all(hi > lo)


def test_solid_block_is_one_box_and_an_l_is_two():
    occ = np.zeros((16, 16, 16), dtype=bool)
    occ[2:10, 3:7, 0:12] = True
    assert len(merge_boxes(occ)[0]) == 1
    occ[2:14, 3:7, 0:3] = True
    assert len(merge_boxes(occ)[0]) == 2


def test_empty_grid_has_no_boxes():
    lo, hi = merge_boxes(np.zeros((4, 4, 4), dtype=bool))
    assert lo.shape == (0, 3) and hi.shape == (0, 3)


def test_box_mass_properties_equal_the_voxel_sum():
    rng = np.random.default_rng(3)
    occ = rng.random((12, 12, 12)) < 0.4
    voxel = 0.05
    lo, hi = merge_boxes(occ)
    from_boxes = box_mass_properties(lo * voxel, hi * voxel, density=700.0)
    from_voxels = voxel_mass_properties((np.argwhere(occ) + 0.5) * voxel, voxel, density=700.0)
    assert from_boxes.mass == pytest.approx(from_voxels.mass)
    np.testing.assert_allclose(from_boxes.com, from_voxels.com, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(from_boxes.inertia, from_voxels.inertia, rtol=1e-9, atol=1e-12)


def test_cuboid_inertia_matches_the_textbook_formula():
    occ = np.zeros((8, 8, 8), dtype=bool)
    occ[0:2, 0:4, 0:8] = True  # 0.25 x 0.5 x 1.0 m with object_scale 1
    g = build_geometry(occ, SimSettings(density=1000.0))
    a, b, c = 0.25, 0.5, 1.0
    m = 1000.0 * a * b * c
    assert g.mass.mass == pytest.approx(m)
    np.testing.assert_allclose(np.diag(g.mass.inertia), m / 12 * np.array([b * b + c * c, a * a + c * c, a * a + b * b]))
    assert g.mass.com[2] == pytest.approx(c / 2)  # lowest point on the ground


def test_pruned_boxes_keep_the_solid_convex_hull():
    rng = np.random.default_rng(0)
    occ = np.zeros((32, 32, 32), dtype=bool)
    occ[8:24, 8:24, 0:20] = rng.random((16, 16, 20)) < 0.7
    full = build_geometry(occ, SimSettings(prune_collision_boxes=False))
    pruned = build_geometry(occ, SimSettings(prune_collision_boxes=True))
    assert pruned.geom_count < full.geom_count // 2

    def hull_volume(geometry):
        lo = geometry.box_centres - geometry.box_half_sizes
        hi = geometry.box_centres + geometry.box_half_sizes
        return ConvexHull(_box_corners(lo, hi).reshape(-1, 3)).volume

    assert hull_volume(pruned) == pytest.approx(hull_volume(full), rel=1e-9)
    assert pruned.mass.mass == full.mass.mass  # pruning is for collision only


def test_hull_mode_uses_the_hull_for_mass():
    occ = np.zeros((16, 16, 16), dtype=bool)
    occ[0:16, 0:4, 0:2] = True  # an L: the hull fills the triangle between its arms
    occ[0:2, 0:4, 0:16] = True
    exact = build_geometry(occ, SimSettings())
    hull = build_geometry(occ, SimSettings(mode="hull"))
    assert hull.mode == "hull" and hull.geom_count == 1
    assert hull.mass.mass > 2 * exact.mass.mass  # 240 voxels of solid, ~550 of hull
