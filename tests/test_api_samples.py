"""Sample endpoints of the console: listing with filters, GLB meshes (y up, resting pose), previews, history.

Verdicts come from the real oracle on hand-built grids (a block that stands, a post
with a long arm that falls), so the resting-pose frame math is checked against the
simulator's own final pose.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest_broker import make_settings, verdict_of
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from dso.api import sample_media
from dso.api.app import create_app
from dso.api.stability_history import VerdictEvent, bucket_events
from dso.broker import Broker
from dso.broker.records import FORMAT_VERSION, LabelledRecord, SampleRecord, _encode
from dso.config import ApiSettings, ConsoleSettings, Settings, SimSettings
from dso.sim.oracle import simulate
from dso.sim.verdict import Verdict
from dso.telemetry import LoopMetrics

N = 32
TOKEN = "console-token"
PROMPT_A, PROMPT_B = "a" * 64, "b" * 64


def block() -> np.ndarray:
    occ = np.zeros((N, N, N), dtype=bool)
    occ[10:22, 12:20, 0:10] = True  # 12 x 8 x 10 voxels: stands
    return occ


def overhang() -> np.ndarray:
    occ = np.zeros((N, N, N), dtype=bool)
    occ[4:8, 14:18, 0:20] = True  # a thin post ...
    occ[4:30, 12:20, 20:24] = True  # ... carrying a long arm: tips over
    return occ


def labelled(occupancy: np.ndarray, prompt_id: str, version: int = 0, seed: int = 0) -> LabelledRecord:
    sample = SampleRecord(
        prompt_id=prompt_id, view=0, adapter_version=version, seed=seed,
        latent=np.zeros((2, 4, 4, 4), dtype=np.float32), occupancy=occupancy,
    )
    return LabelledRecord.from_verdict(sample, simulate(occupancy, SimSettings()))


@pytest.fixture(scope="module")
def verdict_records() -> dict[str, LabelledRecord]:
    records = {"stable": labelled(block(), PROMPT_A, 0, 1), "unstable": labelled(overhang(), PROMPT_B, 1, 2)}
    assert records["stable"].stable and not records["unstable"].stable, "fixture shapes must stand / fall"
    return records


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url, replay_capacity=64)) as opened:
        yield opened


def make_client(broker: Broker, **api: object) -> TestClient:
    settings = Settings(broker=broker.settings, api=ApiSettings(**api), console=ConsoleSettings(samples_default_limit=5, samples_max_limit=10))
    app = create_app(settings, broker, metrics=LoopMetrics(CollectorRegistry()), environ={"DSO_API_TOKEN": TOKEN})
    return TestClient(app)


@pytest.fixture()
def client(broker: Broker) -> Iterator[TestClient]:
    with make_client(broker) as test_client:
        yield test_client


@pytest.fixture()
def filled(broker: Broker, verdict_records) -> dict[str, LabelledRecord]:
    """Replay holds: stable (prompt A), unstable (prompt B), then a second stable of prompt B, in that order."""
    second = labelled(block(), PROMPT_B, 2, 3)
    for record in (verdict_records["stable"], verdict_records["unstable"], second):
        broker.replay.add(record)
    return {**verdict_records, "newest": second}


def test_listing_is_newest_first_and_filters_by_verdict_and_prompt(client, filled):
    listing = client.get("/v1/samples")
    assert listing.status_code == 200, listing.text
    items = listing.json()["items"]
    assert [i["id"] for i in items] == [filled[k].sample_id for k in ("newest", "unstable", "stable")]
    unstable = client.get("/v1/samples", params={"verdict": "unstable"}).json()["items"]
    assert [i["id"] for i in unstable] == [filled["unstable"].sample_id]
    assert unstable[0]["stable"] is False and unstable[0]["tilt_deg"] > 20
    assert unstable[0]["adapter_version"] == 1 and unstable[0]["prompt_id"] == PROMPT_B
    of_b = client.get("/v1/samples", params={"prompt_id": PROMPT_B}).json()["items"]
    assert {i["id"] for i in of_b} == {filled["unstable"].sample_id, filled["newest"].sample_id}
    both = client.get("/v1/samples", params={"prompt_id": PROMPT_B, "verdict": "stable"}).json()["items"]
    assert [i["id"] for i in both] == [filled["newest"].sample_id]
    assert len(client.get("/v1/samples", params={"limit": 1}).json()["items"]) == 1


def test_listing_rejects_bad_parameters(client, filled):
    too_many = client.get("/v1/samples", params={"limit": 11})
    assert too_many.status_code == 422 and "less than or equal to 10" in too_many.json()["detail"]
    assert client.get("/v1/samples", params={"verdict": "maybe"}).status_code == 422
    assert client.get("/v1/samples", params={"prompt_id": "not-a-sha"}).status_code == 422
    missing = client.get("/v1/samples/" + "0" * 32)
    assert missing.status_code == 404 and "replay buffer" in missing.json()["detail"]


def test_sample_carries_the_simulators_final_pose_and_view_urls(client, filled):
    info = client.get(f"/v1/samples/{filled['unstable'].sample_id}").json()
    verdict = filled["unstable"].verdict
    assert info["pose"]["quaternion"] == pytest.approx(verdict.quaternion)
    assert info["pose"]["position"] == pytest.approx(verdict.position)
    assert info["resting_mesh_url"].endswith("mesh.glb?pose=resting")
    assert info["prompt_image_url"] == f"/v1/prompts/{PROMPT_B}/image"


def glb_mesh(data: bytes) -> trimesh.Trimesh:
    scene = trimesh.load(io.BytesIO(data), file_type="glb", force="scene")
    return trimesh.util.concatenate(list(scene.dump()))


def test_mesh_glb_is_y_up_with_the_ground_at_zero(client, filled):
    response = client.get(f"/v1/samples/{filled['stable'].sample_id}/mesh.glb")
    assert response.status_code == 200 and response.headers["content-type"] == "model/gltf-binary"
    mesh = glb_mesh(response.content)
    # the 12 x 8 x 10 voxel block (x, y, z) becomes 12 wide (x), 10 tall (y), 8 deep (z) in glTF's y-up frame
    assert mesh.extents == pytest.approx(np.array([12, 10, 8]) / N, abs=1e-6)
    assert mesh.bounds[0][1] == pytest.approx(0.0, abs=1e-6), "the ground is y = 0"
    again = client.get(response.request.url, headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_resting_mesh_lies_on_the_ground_where_the_simulator_left_it(client, filled):
    sample_id = filled["unstable"].sample_id
    upright = glb_mesh(client.get(f"/v1/samples/{sample_id}/mesh.glb").content)
    resting = glb_mesh(client.get(f"/v1/samples/{sample_id}/mesh.glb", params={"pose": "resting"}).content)
    assert upright.extents[1] == pytest.approx(24 / N, abs=1e-6)
    # the fallen body rests on the ground: its lowest point is at y = 0 within a voxel (the frames agree)
    assert abs(resting.bounds[0][1]) < 1.0 / N
    assert resting.extents[1] < upright.extents[1] - 2.0 / N, "it fell: lower than when it stood"
    assert resting.volume == pytest.approx(upright.volume, rel=1e-6), "a rotation keeps the volume"


def test_resting_views_need_a_recorded_pose(client, broker):
    record = labelled(block(), PROMPT_A)
    header = record.sample.header()
    # a record written before the broker kept the oracle's whole verdict (and before the pose was kept)
    v = record.verdict
    header["verdict"] = {"stable": v.stable, "tilt_deg": v.tilt_deg, "rotation_deg": v.rotation_deg, "status": "ok",
                         "message": v.message, "sim_seconds": v.elapsed_s}
    old = LabelledRecord.from_bytes(_encode("labelled", header, record.sample.latent, record.sample.occupancy))
    assert old.verdict.position is None and old.verdict.quaternion is None and old.verdict.elapsed_s == v.elapsed_s
    broker.replay.add(old)
    info = client.get(f"/v1/samples/{old.sample_id}").json()
    assert info["pose"] is None and info["resting_mesh_url"] is None
    refused = client.get(f"/v1/samples/{old.sample_id}/mesh.glb", params={"pose": "resting"})
    assert refused.status_code == 404 and "no final pose" in refused.json()["detail"]
    assert client.get(f"/v1/samples/{old.sample_id}/mesh.glb").status_code == 200


def test_preview_png_renders_the_shape_and_its_resting_pose(client, filled):
    sample_id = filled["unstable"].sample_id
    upright = client.get(f"/v1/samples/{sample_id}/preview.png")
    resting = client.get(f"/v1/samples/{sample_id}/preview.png", params={"pose": "resting"})
    assert upright.headers["content-type"] == "image/png"
    images = [np.asarray(Image.open(io.BytesIO(r.content))) for r in (upright, resting)]
    size = ConsoleSettings().preview_size
    for image in images:
        assert image.shape == (size, size, 4)
        covered = (image[..., 3] > 0).mean()
        assert 0.02 < covered < 0.9, "the object is drawn on a transparent background"
    assert not np.array_equal(images[0], images[1]), "the resting pose looks different"


def test_history_buckets_verdicts_and_marks_adapter_publications(client, broker, tmp_path):
    for outcome in ("stable", "stable", "unstable", "invalid"):
        broker.stats.record_labelled(verdict_of(outcome if outcome != "invalid" else "error"), adapter_version=0)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    broker.adapters.publish(adapter, step=7, objective="dro")
    body = client.get("/v1/stats/history", params={"buckets": 5}).json()
    assert body["events"] == 4 and len(body["buckets"]) == 5
    assert sum(b["stable"] for b in body["buckets"]) == 2 and sum(b["unstable"] for b in body["buckets"]) == 1
    assert sum(b["invalid"] for b in body["buckets"]) == 1
    rated = [b for b in body["buckets"] if b["stability_rate"] is not None]
    assert rated and all(0.0 <= b["stability_rate"] <= 1.0 for b in rated)
    [published] = body["adapters"]
    assert published["version"] == 1 and published["step"] == 7
    assert abs(published["created_at"] - time.time()) < 60
    assert client.get("/v1/stats/history", params={"buckets": 10_000}).status_code == 422


def test_bucketing_puts_each_event_in_its_time_slice():
    events = [VerdictEvent(100.0, 0, "stable"), VerdictEvent(101.0, 0, "unstable"), VerdictEvent(109.0, 2, "stable")]
    rows = bucket_events(events, buckets=2, now=110.0)
    assert [(r["stable"], r["unstable"]) for r in rows] == [(1, 1), (1, 0)]
    assert rows[0]["stability_rate"] == 0.5 and rows[1]["stability_rate"] == 1.0
    assert rows[1]["max_version"] == 2 and rows[0]["start"] == 100.0 and rows[1]["end"] == 110.0
    assert bucket_events([], 3, 5.0) == []
    with pytest.raises(ValueError, match="buckets"):
        bucket_events(events, 0, 110.0)


def test_resting_mesh_applies_the_rotation_about_the_body_origin():
    occ = np.zeros((N, N, N), dtype=bool)
    occ[14:18, 14:18, 0:16] = True  # a 4 x 4 x 16 post
    quarter_turn_about_x = [np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0]
    pose = sample_media.RestingPose.from_lists([0.3, -0.2, 2.0 / N], quarter_turn_about_x)
    mesh = sample_media.resting_mesh(occ, pose, object_scale=1.0)
    # lying along -y, its axis lifted by its half width (2 voxels): it rests on the old ground
    assert mesh.extents == pytest.approx(np.array([4, 16, 4]) / N, abs=1e-6)
    assert mesh.bounds[0][2] == pytest.approx(-0.5, abs=1e-6)
    assert mesh.bounds[1][1] == pytest.approx(0.0, abs=1e-6), "rotated about the body origin, drift dropped"
    with pytest.raises(ValueError, match="not a rotation"):
        sample_media.RestingPose.from_lists([0, 0, 0], [0, 0, 0, 0])


def test_sample_reads_follow_the_api_auth_rules(broker, filled):
    with make_client(broker, require_auth_for_reads=True) as locked:
        sample_id = filled["stable"].sample_id
        for path in ("/v1/samples", f"/v1/samples/{sample_id}", f"/v1/samples/{sample_id}/mesh.glb",
                     f"/v1/samples/{sample_id}/preview.png", "/v1/stats/history"):
            assert locked.get(path).status_code == 401, path
            assert locked.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        assert locked.get("/").status_code == 200, "the page itself is open; it asks for the token"


def test_console_page_and_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script type="module" src="/console/js/app.js">' in page.text
    for asset, kind in (("/console/js/app.js", "javascript"), ("/console/console.css", "css"),
                        ("/console/vendor/three-viewer.min.js", "javascript")):
        response = client.get(asset)
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
    assert client.get("/console/../app.py").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"], "the page stays out of the API document"
    assert {"/v1/samples", "/v1/samples/{sample_id}/mesh.glb", "/v1/stats/history"} <= set(
        client.get("/openapi.json").json()["paths"]
    )


def test_record_format_version_is_unchanged():
    # the pose fields ride in the JSON header; old readers ignore them, old records decode with None
    assert FORMAT_VERSION == 1
    assert Verdict(status="ok", stable=True, tilt_deg=0.0, rotation_deg=0.0).quaternion is None


def test_voxel_bounds_match_the_mesh_and_settings_keep_defaults_within_limits():
    for occ in (block(), overhang()):
        mesh_bounds = sample_media.posed_mesh(occ, "upright", None, 1.0).bounds
        assert sample_media.voxel_bounds(occ) == pytest.approx(mesh_bounds, abs=1e-9)
    with pytest.raises(ValueError, match="samples_default_limit"):
        ConsoleSettings(samples_default_limit=50, samples_max_limit=10)


def test_media_cache_keeps_the_newest_entries_within_its_byte_budget():
    cache = sample_media.MediaCache(max_bytes=10)
    made = []

    def make(value: bytes):
        return lambda: made.append(value) or value

    assert cache.get_or_make("a", make(b"aaaa")) == b"aaaa"
    cache.get_or_make("b", make(b"bbbb"))
    cache.get_or_make("a", make(b"xxxx"))  # hit: "a" becomes the newest
    cache.get_or_make("c", make(b"cccc"))  # 12 bytes > 10: the oldest ("b") goes
    assert made == [b"aaaa", b"bbbb", b"cccc"] and cache.size_bytes == 8 and len(cache) == 2
    cache.get_or_make("b", make(b"bbbb"))
    assert made[-1] == b"bbbb", "an evicted entry is made again"
    kept = len(cache)
    assert cache.get_or_make("big", make(b"z" * 11)) == b"z" * 11, "larger than the budget: served, not kept"
    assert len(cache) == kept and cache.size_bytes <= 10
