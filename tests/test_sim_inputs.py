"""Inputs the oracle accepts (grids, meshes, files) and the clear invalid_input verdicts for bad ones."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from dso.config import SimSettings
from dso.sim import simulate
from dso.sim.verdict import SimStatus, Verdict


def block(n: int = 16) -> np.ndarray:
    occ = np.zeros((n, n, n), dtype=bool)
    occ[4:12, 4:12, 0:8] = True
    return occ


def gamma_mesh() -> trimesh.Trimesh:
    """A watertight post-and-arm mesh (marching cubes of voxels) whose centre of mass overhangs its foot."""
    occ = np.zeros((16, 16, 16), dtype=bool)
    occ[2:4, 6:10, 0:12] = True
    occ[2:15, 6:10, 10:12] = True
    mesh = trimesh.voxel.ops.matrix_to_marching_cubes(np.pad(occ, 1))
    mesh.apply_scale(1 / 16)
    return mesh


def assert_invalid(verdict: Verdict, *fragments: str) -> None:
    assert verdict.status == SimStatus.invalid_input
    assert not verdict.stable
    for fragment in fragments:
        assert fragment in verdict.message, verdict.message


# --- grids ------------------------------------------------------------------------------------


def test_grid_from_npy_file(tmp_path):
    path = tmp_path / "block.npy"
    np.save(path, block())
    v = simulate(path)
    assert v.status == SimStatus.ok and v.stable and v.mode == "boxes"


def test_integer_grid_and_object_with_occupancy_are_accepted():
    class Sample:
        occupancy = block().astype(np.uint8)

    assert simulate(block().astype(np.int64)).status == SimStatus.ok
    assert simulate(Sample()).status == SimStatus.ok


def test_empty_grid():
    assert_invalid(simulate(np.zeros((16, 16, 16), dtype=bool)), "empty")


def test_single_voxel():
    occ = np.zeros((16, 16, 16), dtype=bool)
    occ[3, 3, 3] = True
    assert_invalid(simulate(occ), "1 occupied voxel")


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 8), (4, 4, 4, 4)])
def test_grid_of_the_wrong_shape(shape):
    assert_invalid(simulate(np.ones(shape, dtype=bool)), "(N, N, N)")


def test_grid_with_nan():
    occ = block().astype(float)
    occ[0, 0, 0] = np.nan
    assert_invalid(simulate(occ), "NaN")


def test_unreadable_files(tmp_path):
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not a numpy file")
    assert_invalid(simulate(junk), "cannot read occupancy grid")
    assert_invalid(simulate(tmp_path / "missing.npy"), "no such file")
    other = tmp_path / "shape.xyz"
    other.write_text("1 2 3")
    assert_invalid(simulate(other), "unknown input type")
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"glTF\x02\x00\x00\x00garbage")
    assert_invalid(simulate(broken), "broken.glb")


def huge_npy_header(path, side: int) -> None:
    """A .npy that declares a side^3 bool grid but holds only its header (so reading it would fail differently)."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|b1", "fortran_order": False, "shape": (side,) * 3})


def test_huge_grid_is_refused_from_the_npy_header_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.npy"
    huge_npy_header(path, 1000)

    def no_read(*args, **kwargs):
        raise AssertionError("np.load must not be called for a grid refused by its header")

    monkeypatch.setattr(np, "load", no_read)
    limit = SimSettings().max_grid_side
    assert_invalid(simulate(path), "1000^3", f"limit of {limit}^3", "sim.max_grid_side")


def test_grid_side_limit_applies_to_arrays_and_files(tmp_path):
    settings = SimSettings(max_grid_side=8)
    assert_invalid(simulate(block(16), settings), "16^3", "limit of 8^3")
    np.save(tmp_path / "block.npy", block(16))
    assert_invalid(simulate(tmp_path / "block.npy", settings), "limit of 8^3")
    np.save(tmp_path / "objects.npy", np.empty((4, 4, 4), dtype=object), allow_pickle=True)
    assert_invalid(simulate(tmp_path / "objects.npy"), "Python objects")


def test_unsupported_python_object():
    assert_invalid(simulate(object()), "cannot simulate")


# --- meshes -----------------------------------------------------------------------------------


def test_mesh_decomposition_is_cached_and_falls_like_physics_says(tmp_path, monkeypatch):
    settings = SimSettings(mode="decompose", cache_dir=tmp_path / "coacd")
    first = simulate(gamma_mesh(), settings)
    assert first.status == SimStatus.ok, first.message
    assert first.mode == "decompose" and first.collision_geoms >= 2
    assert not first.stable and first.tilt_deg > 30
    assert len(list((tmp_path / "coacd").glob("*.npz"))) == 1

    import coacd

    def no_coacd(*args, **kwargs):
        raise AssertionError("CoACD ran although the parts were cached")

    monkeypatch.setattr(coacd, "run_coacd", no_coacd)
    again = simulate(gamma_mesh(), settings)
    assert again.status == SimStatus.ok and again.tilt_deg == pytest.approx(first.tilt_deg, abs=1e-6)


def test_mesh_file_in_hull_mode(tmp_path):
    path = tmp_path / "box.stl"
    trimesh.creation.box([0.3, 0.3, 0.5]).export(path)
    v = simulate(path, SimSettings(mode="hull"))
    assert v.status == SimStatus.ok and v.stable and v.mode == "hull"
    assert v.mass == pytest.approx(1000.0 * 0.3 * 0.3 * 0.5)


def test_mesh_with_a_small_hole_is_repaired(tmp_path):
    box = trimesh.creation.box([0.2, 0.2, 0.2])
    holed = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)
    assert not holed.is_watertight
    v = simulate(holed, SimSettings(mode="decompose", cache_dir=tmp_path))
    assert v.status == SimStatus.ok and v.mass == pytest.approx(8.0)
    v = simulate(holed)  # the default mesh path caps it too, and weighs the voxel solid
    assert v.status == SimStatus.ok and v.mode == "solid" and v.mass == pytest.approx(8.0, rel=0.02)


def test_open_mesh_is_rejected_for_decomposition_but_hull_works(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.2)
    open_bowl = trimesh.Trimesh(sphere.vertices, sphere.faces[sphere.triangles_center[:, 2] < 0.15])
    assert_invalid(simulate(open_bowl, SimSettings(mode="decompose", cache_dir=tmp_path)), "not watertight", "--mode hull")
    assert simulate(open_bowl, SimSettings(mode="hull")).status == SimStatus.ok


def test_mesh_with_nan_vertices():
    box = trimesh.creation.box([0.2, 0.2, 0.2])
    vertices = box.vertices.copy()
    vertices[0, 1] = np.nan
    assert_invalid(simulate(trimesh.Trimesh(vertices, box.faces, process=False)), "NaN or infinite")


def test_flat_mesh_has_zero_volume():
    plane = trimesh.Trimesh(
        vertices=[[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], faces=[[0, 1, 2], [0, 2, 3], [0, 3, 2], [0, 2, 1]], process=False
    )
    assert_invalid(simulate(plane), "flat")
    assert_invalid(simulate(plane, SimSettings(mode="hull")), "flat")


def test_mesh_with_too_many_faces():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    assert_invalid(simulate(sphere, SimSettings(max_faces=100)), f"{len(sphere.faces)} faces", "max_faces=100")


def test_verdict_round_trips_through_json():
    v = simulate(block())
    again = Verdict.model_validate_json(v.model_dump_json())
    assert again == v
