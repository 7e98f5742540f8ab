"""Meshes as real assets come: open, overlapping, inverted, degenerate, huge, y-up -- each gets a verdict or a clear error.

The default mesh path (``mode: boxes`` -> verdict mode ``solid``) takes contact from the convex hull and the mass
from the voxelised solid (dso/sim/solid.py); these tests hold it to analytic values.
"""

from __future__ import annotations


import json

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from dso.cli import app
from dso.config import SimSettings
from dso.models.mesh import export_mesh
from dso.sim import simulate
from dso.sim.verdict import SimStatus, Verdict

VOXELS = SimSettings().mesh_voxels


def box(lo, hi) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    mesh = trimesh.creation.box(hi - lo)
    mesh.apply_translation((lo + hi) / 2)
    return mesh


def union_of(*boxes: trimesh.Trimesh) -> trimesh.Trimesh:
    """Overlapping boxes as one triangle soup: several components, internal faces, not a valid solid."""
    return trimesh.util.concatenate(list(boxes))


def assert_ok(verdict: Verdict) -> Verdict:
    assert verdict.status == SimStatus.ok, verdict.message
    assert verdict.mode == "solid"
    assert f"solid by voxel flood fill at {VOXELS}^3" in verdict.message
    return verdict


def voxel_of(size: float) -> float:
    return size / VOXELS


# --- what real assets look like -----------------------------------------------------------------


def test_box_missing_a_face_is_capped_and_weighs_the_full_box():
    full = box([0, 0, 0], [0.3, 0.2, 0.4])
    top = full.face_normals[:, 2] > 0.9
    open_box = trimesh.Trimesh(full.vertices, full.faces[~top], process=False)
    assert not open_box.is_watertight
    v = assert_ok(simulate(open_box))
    assert v.stable
    assert v.mass == pytest.approx(1000 * 0.3 * 0.2 * 0.4, rel=0.03)
    assert "% of edges open" in v.message and "capping small holes" in v.message


def test_cup_solid_is_walls_and_bottom_not_the_filled_interior():
    """A cup of five overlapping boxes: the flood fill enters the open top, so the cavity is not solid."""
    t = 0.02
    cup = union_of(
        box([0, 0, 0], [0.2, 0.2, t]),  # bottom
        box([0, 0, 0], [0.2, t, 0.2]),  # walls overlap the bottom: internal faces
        box([0, 0.2 - t, 0], [0.2, 0.2, 0.2]),
        box([0, 0, 0], [t, 0.2, 0.2]),
        box([0.2 - t, 0, 0], [0.2, 0.2, 0.2]),
    )
    v = assert_ok(simulate(cup))
    volume = 0.2 * 0.2 * 0.2 - (0.2 - 2 * t) ** 2 * (0.2 - t)
    com_z = (0.2 * 0.2 * 0.2 * 0.1 - (0.2 - 2 * t) ** 2 * (0.2 - t) * (t + (0.2 - t) / 2)) / volume
    assert v.mass == pytest.approx(1000 * volume, rel=0.05)  # the filled cup would weigh 8 kg
    assert v.com[2] == pytest.approx(com_z, abs=voxel_of(0.2))
    assert v.stable


def test_several_separate_components_weigh_their_sum():
    pair = union_of(box([0, 0, 0], [0.1, 0.1, 0.1]), box([0.3, 0, 0], [0.4, 0.1, 0.1]))
    v = assert_ok(simulate(pair))
    assert v.mass == pytest.approx(2.0, rel=0.03)
    assert v.com[0] == pytest.approx(0.2, abs=voxel_of(0.4))  # placed on the ground, x and y as given
    assert v.stable


def test_inverted_normals_change_nothing():
    straight = box([0, 0, 0], [0.2, 0.2, 0.3])
    inverted = trimesh.Trimesh(straight.vertices, straight.faces[:, ::-1], process=False)
    assert inverted.volume < 0
    a, b = assert_ok(simulate(straight)), assert_ok(simulate(inverted))
    assert a.mass == pytest.approx(b.mass) and a.com == pytest.approx(b.com)
    assert a.mass == pytest.approx(12.0, rel=0.03) and b.stable


def test_zero_area_faces_are_harmless():
    solid = box([0, 0, 0], [0.2, 0.2, 0.2])
    faces = np.vstack([solid.faces, [[0, 0, 1], [2, 2, 2], [3, 4, 3]]])
    v = assert_ok(simulate(trimesh.Trimesh(solid.vertices, faces, process=False)))
    assert v.mass == pytest.approx(8.0, rel=0.03)


def test_collinear_and_coplanar_points_are_invalid_input_with_a_clear_reason():
    t = np.linspace(0, 1, 6)
    line = trimesh.Trimesh(np.stack([t, 2 * t, 3 * t], axis=1), [[0, 1, 2], [2, 3, 4], [3, 4, 5]], process=False)
    v = simulate(line)
    assert v.status == SimStatus.invalid_input and "collinear or coplanar" in v.message
    tilted_sheet = trimesh.Trimesh([[0, 0, 0], [1, 0, 1], [1, 1, 1], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    v = simulate(tilted_sheet)
    assert v.status == SimStatus.invalid_input and "no volume" in v.message


def test_huge_mesh_gets_a_verdict_and_past_max_faces_the_documented_refusal():
    sphere = trimesh.creation.icosphere(subdivisions=7, radius=0.2)  # 327,680 faces
    assert len(sphere.faces) > 300_000
    v = assert_ok(simulate(sphere))
    assert v.stable and v.mass == pytest.approx(1000 * 4 / 3 * np.pi * 0.2**3, rel=0.03)
    assert v.elapsed_s < SimSettings().item_timeout_s
    refused = simulate(sphere, SimSettings(max_faces=300_000))
    assert refused.status == SimStatus.invalid_input
    assert "327680 faces" in refused.message and "sim.max_faces" in refused.message


# --- mass of the real solid, not of its hull ------------------------------------------------------


def overhang() -> trimesh.Trimesh:
    """A heavy foot, a thin post on its edge and a long thin arm on top reaching far past the foot.

    The real solid's centre of mass lies over the foot (x < 0.1); its convex hull fills the wedge
    under the arm, and the hull's centroid lies past the foot's edge.
    """
    return union_of(box([0, 0, 0], [0.1, 0.1, 0.1]), box([0, 0, 0.1], [0.02, 0.1, 0.6]), box([0, 0, 0.58], [0.4, 0.1, 0.6]))


def overhang_analytic() -> tuple[float, np.ndarray]:
    parts = [  # disjoint pieces of the union: (volume, centroid)
        (0.1 * 0.1 * 0.1, [0.05, 0.05, 0.05]),
        (0.02 * 0.1 * 0.48, [0.01, 0.05, 0.34]),
        (0.4 * 0.1 * 0.02, [0.2, 0.05, 0.59]),
    ]
    volume = sum(p[0] for p in parts)
    return volume, sum(p[0] * np.asarray(p[1]) for p in parts) / volume


def test_centre_of_mass_of_a_concave_object_matches_its_analytic_value_within_a_voxel():
    v = assert_ok(simulate(overhang()))
    volume, com = overhang_analytic()
    assert v.mass == pytest.approx(1000 * volume, rel=0.08)  # thin 2 cm parts are ~4 voxels thick
    assert np.allclose(v.com, com, atol=voxel_of(0.6)), (v.com, com)


def test_hull_mass_topples_where_the_real_object_stands():
    hull = simulate(overhang(), SimSettings(mode="hull"))
    assert hull.status == SimStatus.ok and hull.com[0] > 0.1  # the hull's centroid is past the foot
    assert not hull.stable
    real = assert_ok(simulate(overhang()))
    assert real.com[0] < 0.1 and real.stable


# --- files, up axis, scale ------------------------------------------------------------------------


def test_glb_written_y_up_is_turned_z_up(tmp_path):
    z_up, y_up = tmp_path / "overhang.stl", tmp_path / "overhang.glb"
    export_mesh(overhang(), z_up)
    export_mesh(overhang(), y_up, y_up=True)
    a, b = simulate(z_up), simulate(y_up)
    assert a.stable and b.stable
    assert b.mass == pytest.approx(a.mass, rel=1e-3) and np.allclose(a.com, b.com, atol=voxel_of(0.6))
    lying = simulate(y_up, SimSettings(mesh_up="z"))  # read as z-up, the object lies on its side
    assert lying.com[2] < 0.1
    assert simulate(y_up, SimSettings(mesh_up="y")).com == pytest.approx(b.com)


@pytest.mark.parametrize("suffix", ["obj", "ply", "stl", "glb"])
def test_every_mesh_format_gives_the_same_verdict(tmp_path, suffix):
    path = tmp_path / f"overhang.{suffix}"
    export_mesh(overhang(), path, y_up=suffix == "glb")
    v = assert_ok(simulate(path))
    assert v.stable and np.allclose(v.com, overhang_analytic()[1], atol=voxel_of(0.6))


def test_mesh_scale_turns_millimetres_into_metres():
    millimetres = overhang()
    millimetres.apply_scale(1000.0)
    v = assert_ok(simulate(millimetres, SimSettings(mesh_scale=0.001)))
    assert v.mass == pytest.approx(assert_ok(simulate(overhang())).mass, rel=1e-3)


# --- dso simulate on a folder or a glob: the physical-soundness benchmark -------------------------


def generator_outputs(tmp_path):
    """A folder as a generator leaves it: meshes in several formats, a grid, a broken file, other files."""
    out = tmp_path / "outputs"
    (out / "nested").mkdir(parents=True)
    export_mesh(overhang(), out / "overhang.glb", y_up=True)
    export_mesh(box([0, 0, 0], [0.2, 0.2, 0.2]), out / "nested" / "cube.obj")
    arm = union_of(box([0, 0, 0], [0.05, 0.1, 0.6]), box([0, 0, 0.55], [0.5, 0.1, 0.6]))  # falls
    export_mesh(arm, out / "arm.stl")
    (out / "broken.ply").write_bytes(b"ply\nnot really")
    (out / "notes.txt").write_text("not an input")
    return out


def test_folder_gives_jsonl_summary_and_exit_1_when_any_input_failed(tmp_path):
    out = generator_outputs(tmp_path)
    jsonl = tmp_path / "verdicts.jsonl"
    result = CliRunner().invoke(app, ["simulate", str(out), "--jsonl", str(jsonl), "--workers", "1", "--no-progress"])
    assert result.exit_code == 1, result.output
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["input"].rsplit("/", 1)[1] for r in rows) == ["arm.stl", "broken.ply", "cube.obj", "overhang.glb"]
    by_name = {r["input"].rsplit("/", 1)[1]: r for r in rows}
    assert by_name["overhang.glb"]["stable"] and by_name["cube.obj"]["stable"] and not by_name["arm.stl"]["stable"]
    assert by_name["broken.ply"]["status"] == "invalid_input"
    assert "summary: 4 input(s), 3 judged; stable 2/3 (66.7 %)" in result.output
    assert "failures: 1 (invalid_input 1)" in result.output and "1 x invalid_input: cannot read mesh" in result.output


def test_glob_and_up_and_scale_options(tmp_path):
    out = generator_outputs(tmp_path)
    result = CliRunner().invoke(app, ["simulate", str(out / "**" / "*.obj"), str(out / "*.glb"), "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["input"].rsplit("/", 1)[1] for r in rows] == ["cube.obj", "overhang.glb"]
    assert all(r["stable"] and r["mode"] == "solid" for r in rows)
    lying = CliRunner().invoke(app, ["simulate", str(out / "overhang.glb"), "--up", "z", "--scale", "2", "--json"])
    row = json.loads(lying.output)
    assert row["com"][2] < 0.2 and row["mass"] == pytest.approx(8 * rows[1]["mass"], rel=1e-3)


def test_empty_folder_or_glob_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    assert CliRunner().invoke(app, ["simulate", str(tmp_path / "empty")]).exit_code == 2
    assert CliRunner().invoke(app, ["simulate", str(tmp_path / "*.glb")]).exit_code == 2


def test_a_generator_sample_that_carries_only_a_mesh_goes_through_the_same_contract():
    from dso.sim import make_oracle

    class MeshSample:  # a stage-2 / mesh generator's output: no occupancy grid
        occupancy = None
        mesh = overhang()

    v = make_oracle(SimSettings()).simulate(MeshSample())
    assert v.status == SimStatus.ok and v.mode == "solid" and v.stable


def test_progress_bar_goes_to_stderr_on_request(tmp_path):
    out = generator_outputs(tmp_path)
    result = CliRunner().invoke(app, ["simulate", str(out / "*.stl"), str(out / "*.glb"), "--progress", "--workers", "1"])
    assert "simulating" in result.stderr and "2/2" in result.stderr
    assert "simulating" not in result.stdout and "summary: 2 input(s), 2 judged" in result.stdout
