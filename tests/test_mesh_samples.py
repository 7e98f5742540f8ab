"""Meshes from any generator go through the loop: records carry a mesh, simulators judge it, the console draws it.

Real Valkey (the session's embedded server), the real oracle (MuJoCo), the real API app; no mocks.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from conftest_broker import make_settings
from dso.actors import GeneratorWorker, SimulatorWorker, seed_default_prompts
from dso.api.app import create_app
from dso.broker.broker import Broker
from dso.broker.records import LabelledRecord, RecordDecodeError, SampleMesh, SampleRecord, _decode
from dso.config import Settings, SimSettings
from dso.models.contract import GeneratedShape, MeshDecoder, generate_shapes
from dso.models.generator import Generator
from dso.sim.verdict import Outcome, SimStatus
from dso.telemetry import LoopMetrics
from test_loop_support import export_random_tiny_model, loop_test_settings

TOKEN = "mesh-token"
SIM = {"max_time": 3.0, "mesh_voxels": 48}  # small solids: the verdicts below do not depend on the voxel count


def box_mesh() -> trimesh.Trimesh:
    """0.6 x 0.6 x 0.4: wide and low, it stands."""
    return trimesh.creation.box((0.6, 0.6, 0.4))


def overhang_mesh() -> trimesh.Trimesh:
    """A thin post carrying a long heavy arm (two overlapping boxes, as generators' parts often are): it tips over.

    The centre of mass is about 0.2 to the side of a 0.1-wide footprint.
    """
    post = trimesh.creation.box((0.1, 0.1, 0.8), trimesh.transformations.translation_matrix([0.0, 0.0, 0.4]))
    arm = trimesh.creation.box((0.95, 0.1, 0.1), trimesh.transformations.translation_matrix([0.425, 0.0, 0.85]))
    return trimesh.util.concatenate([post, arm])


def box_grid(n: int = 16) -> np.ndarray:
    occ = np.zeros((n, n, n), bool)
    occ[4:12, 4:12, 0:6] = True
    return occ


def record(mesh: trimesh.Trimesh | SampleMesh | None = None, occupancy: np.ndarray | None = None, **kw) -> SampleRecord:
    return SampleRecord(
        prompt_id=kw.pop("prompt_id", "p0"), view=0, adapter_version=0, seed=kw.pop("seed", 0),
        latent=np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 4), occupancy=occupancy, mesh=mesh, **kw,
    )


# --- records ------------------------------------------------------------------------------------------


def test_mesh_only_record_round_trips_bit_exact():
    rng = np.random.default_rng(0)
    mesh = overhang_mesh()
    mesh.vertices += rng.normal(0.0, 1e-3, mesh.vertices.shape)  # float32 values no round number would hide
    sample = record(mesh)
    assert sample.occupancy is None and sample.mesh.vertices.dtype == np.float32 and sample.mesh.faces.dtype == np.int32
    back = SampleRecord.from_bytes(sample.to_bytes())
    assert back.occupancy is None and back.sample_id == sample.sample_id
    assert back.mesh.vertices.tobytes() == mesh.vertices.astype(np.float32).tobytes(), "vertices bit-exact"
    assert back.mesh.faces.tobytes() == mesh.faces.astype(np.int32).tobytes(), "faces bit-exact"
    assert np.array_equal(back.latent, sample.latent)
    _kind, header, _arrays = _decode(sample.to_bytes())
    assert set(header["arrays"]) == {"latent", "mesh_vertices", "mesh_faces"}, "no grid stored for a mesh-only sample"


def test_grid_and_mesh_together_round_trip_and_the_labelled_record_keeps_both():
    from conftest_broker import verdict_of

    sample = record(box_mesh(), box_grid())
    labelled = LabelledRecord.from_verdict(sample, verdict_of(Outcome.stable))
    back = LabelledRecord.from_bytes(labelled.to_bytes())
    assert np.array_equal(back.sample.occupancy, box_grid())
    assert np.array_equal(back.sample.mesh.vertices, sample.mesh.vertices)
    assert np.array_equal(back.sample.mesh.faces, sample.mesh.faces)
    assert back.verdict == labelled.verdict
    assert isinstance(back.sample.oracle_input(), trimesh.Trimesh), "with both, the oracle judges the generator's mesh"


def test_grid_only_records_keep_the_old_layout():
    """Without a mesh a record is encoded exactly as before meshes existed, so both sides read each other."""
    sample = record(occupancy=box_grid())
    _kind, header, arrays = _decode(sample.to_bytes())
    assert list(header["arrays"]) == ["latent", "occupancy"] and header["format"] == 1
    assert header["arrays"]["occupancy"]["offset"] == header["arrays"]["latent"]["nbytes"]
    assert SampleRecord.from_bytes(sample.to_bytes()).mesh is None
    assert isinstance(sample.oracle_input(), np.ndarray)


@pytest.mark.parametrize(
    ("vertices", "faces", "message"),
    [
        (np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]], float), np.array([[0, 1, 2]]), "NaN or infinite"),
        (np.array([[0, 0, 0], [1, 0, 0], [0, 1e39, 0]], float), np.array([[0, 1, 2]]), "NaN or infinite"),  # overflows float32
        (np.eye(3), np.array([[0, 1, 3]]), r"outside \[0, 3\)"),
        (np.eye(3), np.array([[0, -1, 2]]), r"outside \[0, 3\)"),
        (np.eye(3), np.zeros((0, 3), int), "F > 0"),
        (np.zeros((0, 3)), np.array([[0, 1, 2]]), "V > 0"),
        (np.eye(3)[:, :2], np.array([[0, 1, 2]]), r"shape \(V, 3\)"),
        (np.eye(3), np.array([[0.0, 1.0, 2.0]]), "integer vertex indices"),
    ],
    ids=["nan", "inf-in-float32", "index-too-large", "negative-index", "no-faces", "no-vertices", "2d", "float-faces"],
)
def test_bad_meshes_are_refused_with_clear_errors(vertices, faces, message):
    with pytest.raises(ValueError, match=message):
        record(SampleMesh(vertices, faces))


def test_oversize_meshes_are_refused_at_sim_max_faces():
    mesh = box_mesh()  # 12 faces
    assert len(SampleMesh.from_trimesh(mesh, max_faces=12).faces) == 12
    with pytest.raises(ValueError, match=r"13 faces, more than max_faces=12 \(sim.max_faces\)"):
        SampleMesh.from_trimesh(trimesh.util.concatenate([mesh, trimesh.Trimesh(mesh.vertices, mesh.faces[:1])]), max_faces=12)


def test_a_sample_needs_a_grid_or_a_mesh():
    with pytest.raises(ValueError, match="neither"):
        record()
    with pytest.raises(ValueError, match="SampleMesh or a trimesh.Trimesh"):
        record(mesh=(np.eye(3), np.array([[0, 1, 2]])))


def test_corrupt_mesh_bytes_are_decode_errors():
    data = record(box_mesh()).to_bytes()
    with pytest.raises(RecordDecodeError, match="truncated"):
        SampleRecord.from_bytes(data[:-4])
    kind, header, arrays = _decode(data)
    bad_faces = arrays["mesh_faces"].copy()
    bad_faces[0, 0] = 10_000
    from dso.broker.records import _encode

    # the encoder trusts a SampleMesh; a hand-made one with a bad index is what a buggy writer would send
    forged = SampleMesh.__new__(SampleMesh)
    object.__setattr__(forged, "vertices", arrays["mesh_vertices"])
    object.__setattr__(forged, "faces", bad_faces)
    header = {k: header[k] for k in record(box_mesh()).header()}
    with pytest.raises(RecordDecodeError, match="malformed mesh"):
        SampleRecord.from_bytes(_encode(kind, header, arrays["latent"], None, forged))


# --- the generator contract ---------------------------------------------------------------------------


class BoxMeshSampler:
    """Not a grid generator: a latent [2] decoded into a box whose height is the latent's first value."""

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.ones(len(images), 1, 4)

    def sample_latents(self, cond: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.tensor([0.1 * (s % 3 + 1), 0.0]) for s in seeds])

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        raise AssertionError("a MeshDecoder's grids are never asked for by generate_shapes")

    def decode_meshes(self, latents: torch.Tensor) -> list[trimesh.Trimesh]:
        return [trimesh.creation.box((0.5, 0.5, float(z[0]))) for z in latents]


def test_generate_shapes_carries_a_mesh_decoders_meshes():
    sampler = BoxMeshSampler()
    assert isinstance(sampler, MeshDecoder)
    shapes = generate_shapes(sampler, [Image.new("RGB", (8, 8))], samples_per_image=3, seed=0)
    assert [s.occupancy for s in shapes] == [None, None, None]
    assert [round(float(s.mesh.extents[2]), 3) for s in shapes] == [0.1, 0.2, 0.3]
    assert all(s.mesh is s.emitted_mesh for s in shapes)
    with pytest.raises(ValueError, match="grid or an emitted mesh"):
        GeneratedShape(torch.zeros(2), None, 0, 0)


# --- through the broker, the simulator and the API -----------------------------------------------------


@pytest.fixture()
def broker(tmp_path: Path, valkey_server):
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url, replay_capacity=64)) as opened:
        yield opened


def label_all(broker: Broker, settings: Settings, expected: int) -> dict[str, LabelledRecord]:
    """Run a real simulator worker until the samples stream is empty; the labelled records by sample id."""
    worker = SimulatorWorker(broker, settings)
    for _ in range(expected + 2):
        if worker.step(block_ms=0) == 0:
            break
    assert worker.labelled == expected and worker.failed == 0 and worker.dead_lettered == 0
    assert broker.samples.backlog() == 0 and broker.samples.dead_letters() == []
    out = {}
    for delivery in broker.labelled.read("test-learner", count=expected + 1, block_ms=0):
        labelled = LabelledRecord.from_bytes(delivery.payload)
        out[labelled.sample_id] = labelled
    return out


def test_mesh_samples_are_labelled_by_the_real_oracle_through_the_broker(broker, tmp_path):
    settings = Settings(broker=broker.settings, sim=SimSettings(**SIM))
    stands, falls = record(box_mesh(), seed=1), record(overhang_mesh(), seed=2)
    judged_mesh = record(overhang_mesh(), box_grid(), seed=3)  # the grid would stand: the mesh is what is judged
    flat = record(trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False), seed=4)
    for sample in (stands, falls, judged_mesh, flat):
        broker.samples.put(sample.sample_id, sample.to_bytes())
    labelled = label_all(broker, settings, expected=4)
    assert labelled[stands.sample_id].verdict.outcome == Outcome.stable
    assert labelled[falls.sample_id].verdict.outcome == Outcome.unstable
    assert labelled[falls.sample_id].verdict.tilt_deg > settings.sim.tilt_threshold_deg
    assert labelled[judged_mesh.sample_id].verdict.outcome == Outcome.unstable
    assert "solid by voxel flood fill" in labelled[stands.sample_id].verdict.message, "the oracle's mesh path"
    invalid = labelled[flat.sample_id].verdict
    assert invalid.status == SimStatus.invalid_input and "flat" in invalid.message, "a failure verdict, labelled, not retried"
    for sample in (stands, falls):
        back = labelled[sample.sample_id].sample
        assert back.occupancy is None and back.mesh.vertices.tobytes() == sample.mesh.vertices.tobytes()

    # the console draws mesh-only samples from their mesh, upright and at rest
    for sample in (stands, falls):
        broker.replay.add(labelled[sample.sample_id])
    app = create_app(settings, broker, metrics=LoopMetrics(CollectorRegistry()), environ={"DSO_API_TOKEN": TOKEN})
    with TestClient(app) as client:
        info = client.get(f"/v1/samples/{falls.sample_id}").json()
        assert info["stable"] is False and info["resting_mesh_url"]
        upright = client.get(f"/v1/samples/{falls.sample_id}/mesh.glb")
        assert upright.status_code == 200, upright.text
        glb = trimesh.load(io.BytesIO(upright.content), file_type="glb", force="mesh")
        assert len(glb.vertices) == len(falls.mesh.vertices) and glb.bounds[0, 1] == pytest.approx(0.0, abs=1e-6)
        resting = trimesh.load(io.BytesIO(client.get(f"{info['resting_mesh_url']}").content), file_type="glb", force="mesh")
        assert resting.bounds[1, 1] < glb.bounds[1, 1] - 0.1, "it fell: lower than when it stood"
        assert resting.bounds[0, 1] == pytest.approx(0.0, abs=0.05), "resting on the ground"
        for pose in ("upright", "resting"):
            png = client.get(f"/v1/samples/{stands.sample_id}/preview.png", params={"pose": pose})
            assert png.status_code == 200 and png.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(png.content)).getchannel("A").getextrema()[1] > 0, "something drawn"


class MeshEmittingGenerator(Generator):
    """The tiny generator with a mesh decoder on top: what a stage-2 decoder or another model's meshes look like."""

    def decode_meshes(self, latents: torch.Tensor) -> list[trimesh.Trimesh]:
        return [box_mesh() if i % 2 == 0 else overhang_mesh() for i in range(len(latents))]


def test_a_mesh_emitting_generator_runs_through_the_loop(tmp_path, valkey_server):
    folder = export_random_tiny_model(tmp_path / "model")
    settings = loop_test_settings(folder, make_settings(tmp_path, redis_url=valkey_server.url, max_backlog=32).model_dump())
    settings = settings.model_copy(update={"sim": settings.sim.model_copy(update=SIM)})
    with Broker.open(settings.broker) as broker:
        seed_default_prompts(broker.prompts, settings)
        generator = MeshEmittingGenerator.from_settings(settings)
        batch = GeneratorWorker(broker, settings, generator=generator).step()
        assert batch is not None and batch.samples == settings.loop.prompts_per_batch * settings.loop.samples_per_prompt
        labelled = label_all(broker, settings, expected=batch.samples)
        assert set(labelled) == set(batch.sample_ids)
        for sample_id in batch.sample_ids:
            sample = labelled[sample_id].sample
            assert sample.occupancy is None and sample.mesh is not None, "the generator's mesh, no grid"
            is_box = len(sample.mesh.faces) == len(box_mesh().faces)
            assert labelled[sample_id].verdict.outcome == (Outcome.stable if is_box else Outcome.unstable)
