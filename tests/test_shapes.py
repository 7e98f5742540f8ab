"""Procedural objects, their stability helpers and the held-out prompt set (dso.shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dso.config import ShapesSettings
from dso.shapes.families import biped, furniture, quadruped, slender, top_heavy
from dso.shapes.parts import Part
from dso.shapes.voxelize import Pose, voxelize
from dso.shapes.procedural import (
    FAMILIES,
    center_of_mass,
    family_of_seed,
    grid_problems,
    sample_object,
    support_margin,
    support_polygon,
    tipping_angle,
)
from dso.shapes.primitives import Box, Capsule, Cylinder
from dso.shapes.prompts import heldout_prompts, heldout_seeds, training_prompt, training_seeds

SEEDS = range(100)
FAMILY_MODULES = (biped, quadruped, slender, furniture, top_heavy)  # in FAMILIES order


@pytest.fixture(scope="module", params=[32, 64])
def objects(request):
    return [sample_object(seed, resolution=request.param) for seed in SEEDS]


def test_objects_are_valid_standing_grids(objects):
    for obj in objects:
        r = obj.resolution
        assert obj.occupancy.shape == (r, r, r) and obj.occupancy.dtype == bool
        assert obj.parts.shape == (r, r, r) and obj.parts.dtype == np.uint8
        assert obj.occupancy.any()
        assert ndimage.label(obj.occupancy)[1] == 1, f"seed {obj.seed} is not one 6-connected piece"
        assert obj.occupancy[:, :, 0].any(), f"seed {obj.seed} does not touch the ground"
        assert not (obj.occupancy[[0, -1]].any() or obj.occupancy[:, [0, -1]].any()), f"seed {obj.seed} on a side face"
        assert grid_problems(obj.occupancy) == []
        assert np.array_equal(obj.parts > 0, obj.occupancy), "labels must cover exactly the occupied voxels"
        assert set(np.unique(obj.parts[obj.occupancy])) <= {int(p) for p in Part}
        margin = support_margin(obj.occupancy)
        assert margin > 0, f"seed {obj.seed} ({obj.kind}) tips over: margin {margin}"
        assert margin == pytest.approx(obj.margin)
        assert tipping_angle(obj.occupancy) >= ShapesSettings().min_tip_angle_deg - 1e-9, f"seed {obj.seed} too tippy"
        assert obj.family in FAMILIES


def test_many_objects_stand_only_just(objects):
    """Downstream needs near-misses: a good share of margins within ~2 voxels (at 64^3) of tipping."""
    margins = np.array([obj.margin for obj in objects])
    assert np.mean(margins < 0.03) >= 0.3
    assert np.mean(margins > 0.06) >= 0.1  # and not everything is on a knife edge


def test_sampling_is_deterministic_by_seed():
    a, b = sample_object(7, resolution=32), sample_object(7, resolution=32)
    assert np.array_equal(a.occupancy, b.occupancy) and np.array_equal(a.parts, b.parts)
    assert a.params == b.params and a.family == b.family and a.kind == b.kind


def test_different_seeds_give_different_objects():
    grids = [sample_object(seed, resolution=32).occupancy for seed in range(12)]
    for i in range(len(grids)):
        for j in range(i + 1, len(grids)):
            assert not np.array_equal(grids[i], grids[j])


def test_every_family_and_kind_is_reachable():
    assert {family_of_seed(seed) for seed in range(60)} == set(FAMILIES)
    kinds = {name: set(module.KINDS) for name, module in zip(FAMILIES, FAMILY_MODULES, strict=True)}
    assert kinds["slender"] == {"lamp", "tree", "vase", "bottle"}
    for family, expected in kinds.items():
        seen = {sample_object(seed, resolution=32, family=family).kind for seed in range(40)}
        assert seen == expected, family
        assert sample_object(3, resolution=32, family=family).family == family


def test_family_weights_steer_the_choice():
    only_trees = ShapesSettings(family_weights={"slender": 1.0})
    assert {family_of_seed(seed, only_trees) for seed in range(30)} == {"slender"}
    with pytest.raises(ValueError, match="unknown families"):
        family_of_seed(0, ShapesSettings(family_weights={"dragon": 1.0}))


def test_parts_survive_at_resolution_32():
    """Thin parts stay at least a voxel or two thick: the same seed keeps all its parts at 32^3."""
    same = 0
    for seed in range(30):
        big, small = sample_object(seed, resolution=64), sample_object(seed, resolution=32)
        if big.params["attempt"] == small.params["attempt"]:
            same += 1
            assert set(np.unique(big.parts)) == set(np.unique(small.parts)), seed
    assert same >= 27


def test_other_resolutions_work():
    for resolution, seeds in ((16, range(40)), (48, range(5))):
        for seed in seeds:
            obj = sample_object(seed, resolution=resolution)
            assert obj.occupancy.shape == (resolution,) * 3 and grid_problems(obj.occupancy) == []
            assert obj.margin > 0


def test_lean_tilts_the_body_but_keeps_the_footprint():
    solids = [
        Box(Part.BASE, (0.0, 0.0, -0.47), (0.1, 0.1, 0.03)),
        Cylinder(Part.BODY, (0.0, 0.0, -0.45), (0.0, 0.0, 0.3), 0.06),
    ]
    upright, _ = voxelize(solids, 32, Pose(onset=-0.44))
    leaning, parts = voxelize(solids, 32, Pose(lean=(0.15, 0.0), onset=-0.44))
    assert np.array_equal(upright[:, :, 0], leaning[:, :, 0])
    assert np.array_equal(support_polygon(upright), support_polygon(leaning))
    shift = center_of_mass(leaning) - center_of_mass(upright)
    assert shift[0] > 0.02 and abs(shift[1]) < 1e-9
    assert support_margin(leaning) < support_margin(upright)
    assert set(np.unique(parts)) == {0, Part.BASE, Part.BODY}


def test_supersampling_keeps_thin_parts_connected():
    thin = [Capsule(Part.LEG, (-0.3, -0.3, -0.49), (0.3, 0.25, 0.3), 0.03)]  # a diagonal limb, < 1 voxel wide at R = 16
    plain, _ = voxelize(thin, 16)
    pooled, labels = voxelize(thin, 16, supersample=2)
    assert ndimage.label(plain)[1] > 1  # plain sampling breaks it into pieces
    assert ndimage.label(pooled)[1] == 1 and np.array_equal(labels > 0, pooled)
    assert pooled.sum() >= plain.sum() and (pooled | plain).sum() == pooled.sum()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="resolution"):
        sample_object(0, resolution=8)
    with pytest.raises(ValueError, match="unknown family"):
        sample_object(0, family="dragon")
    with pytest.raises(ValueError, match="empty"):
        support_margin(np.zeros((16, 16, 16), dtype=bool))
    with pytest.raises(ValueError, match="cubic"):
        center_of_mass(np.ones((4, 4, 5), dtype=bool))


def _column(resolution=20, x=(8, 12), y=(8, 12), z=(0, 10)):
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[x[0] : x[1], y[0] : y[1], z[0] : z[1]] = True
    return grid


def test_center_of_mass_and_margin_of_a_centred_column():
    grid = _column()
    np.testing.assert_allclose(center_of_mass(grid), [0.0, 0.0, -0.25], atol=1e-12)
    assert support_margin(grid) == pytest.approx(2 / 20)  # half of the 4-voxel-wide footprint
    assert tipping_angle(grid) == pytest.approx(np.degrees(np.arctan2(0.1, 0.25)))
    polygon = support_polygon(grid)
    np.testing.assert_allclose(polygon.min(axis=0), [-0.1, -0.1])
    np.testing.assert_allclose(polygon.max(axis=0), [0.1, 0.1])


def test_margin_goes_negative_when_the_mass_overhangs():
    grid = _column(z=(0, 4))
    grid[8:20 - 1, 8:12, 4:8] = True  # a long arm sticking out towards +x above the foot
    com = center_of_mass(grid)
    assert com[0] > 0.1  # beyond the foot's edge at x = +0.1
    assert support_margin(grid) == pytest.approx(0.1 - com[0])


def test_margin_uses_the_hull_of_separate_feet():
    grid = _column(x=(2, 4), z=(0, 3))
    grid |= _column(x=(16, 18), z=(0, 3))
    grid[2:18, 8:12, 3:5] = True  # a bridge between the two feet
    assert support_margin(grid) == pytest.approx(2 / 20)  # limited by the feet's depth in y, not by the gap


def test_grid_problems_names_each_defect():
    floating = _column(z=(2, 6))
    assert any("ground" in p for p in grid_problems(floating))
    two = _column(x=(2, 4)) | _column(x=(14, 16))
    assert any("components" in p for p in grid_problems(two))
    edge = _column(x=(0, 3))
    assert any("boundary" in p for p in grid_problems(edge))


# --- prompts ---------------------------------------------------------------------


SMALL = ShapesSettings(resolution=32, render_size=64, heldout_objects=5, heldout_views=2)


def test_heldout_prompts_are_deterministic_and_unique():
    first, second = heldout_prompts(SMALL), heldout_prompts(SMALL)
    assert len(first) == SMALL.heldout_objects * SMALL.heldout_views
    assert [p.prompt_id for p in first] == [p.prompt_id for p in second]
    assert len({p.prompt_id for p in first}) == len(first)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.image, b.image) and a.camera == b.camera
        assert a.image.shape == (64, 64, 4) and a.image[..., 3].any()
    assert {p.object.family for p in first} == set(FAMILIES)  # balanced: one object per family here
    assert first[0].camera != first[1].camera  # two distinct views of the same object


def test_heldout_seeds_are_disjoint_from_training_seeds():
    held = set(heldout_seeds(SMALL))
    train = training_seeds(SMALL, 1000)
    assert held.isdisjoint(train)
    assert min(held) >= SMALL.training_seed_limit
    for prompt in heldout_prompts(SMALL):
        assert prompt.object.seed in held and prompt.prompt_id.startswith(f"heldout-{prompt.object.family}-")
    with pytest.raises(ValueError, match="overlaps"):
        heldout_seeds(ShapesSettings(heldout_seed=5))
    with pytest.raises(ValueError, match="training_seed_limit"):
        training_seeds(SMALL, 10, start=SMALL.training_seed_limit - 5)


def test_training_prompt_matches_its_object_and_view():
    prompt = training_prompt(11, view_seed=3, settings=SMALL)
    assert prompt.object.seed == 11 and prompt.prompt_id == f"train-{prompt.object.family}-11-s3"
    again = training_prompt(11, view_seed=3, settings=SMALL)
    assert np.array_equal(prompt.image, again.image)
    other_view = training_prompt(11, view_seed=4, settings=SMALL)
    assert not np.array_equal(prompt.image, other_view.image)
    with pytest.raises(ValueError, match="outside"):
        training_prompt(SMALL.heldout_seed, view_seed=0, settings=SMALL)
