"""The robust-standing oracle (dso.sim.robust): stands flat AND on ground tilted a few degrees in several directions.

Statics: a rigid block of width w and height h (centre of mass at h / 2) on a slope of angle a tips over
its downhill edge iff tan(a) > w / h. A 4-voxel column 60 voxels tall (w / h = 0.067, 3.8 deg) stands flat
and on a 3 deg slope but falls on a 5 deg one; a wide box stands on all of them. The last test selects the
oracle in a config file and runs it through the loop's roles, the broker's stats, Prometheus and the API.
"""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
from prometheus_client import REGISTRY

from conftest_broker import make_settings
from dso.actors import GeneratorWorker, Learner, SimulatorWorker, seed_default_prompts
from dso.api.app import create_app
from dso.api.server import ApiServer
from dso.broker.broker import Broker
from dso.broker.records import SampleRecord
from dso.config import SimSettings, load_settings
from dso.sim.contract import ORACLES, Oracle, make_oracle
from dso.sim.robust import RobustStandingOracle, grounds, slope_gravity
from dso.sim.verdict import Outcome, SimStatus, StopReason
from test_loop_support import export_random_tiny_model, loop_test_settings

N = 64


def wide_box() -> np.ndarray:
    occ = np.zeros((N, N, N), dtype=bool)
    occ[20:44, 20:44, 0:24] = True
    return occ


def thin_column() -> np.ndarray:
    """4 x 4 voxels, 60 tall: tips on slopes steeper than atan(4 / 60) = 3.8 deg."""
    occ = np.zeros((N, N, N), dtype=bool)
    occ[30:34, 30:34, 0:60] = True
    return occ


def robust(**overrides) -> Oracle:
    return make_oracle(SimSettings(oracle="robust_standing", **overrides))


def test_registered_by_name_and_satisfies_the_oracle_protocol():
    assert "robust_standing" in ORACLES
    oracle = robust()
    assert isinstance(oracle, RobustStandingOracle) and isinstance(oracle, Oracle)
    assert oracle.name == "robust_standing" and oracle.settings.robust_tilt_deg == 5.0


def test_slope_gravity_has_the_slope_angle_and_points_downhill():
    for azimuth in (0.0, 90.0, 225.0):
        g = slope_gravity(5.0, azimuth)
        assert np.linalg.norm(g) == pytest.approx(9.81)
        assert math.degrees(math.acos(-g[2] / 9.81)) == pytest.approx(5.0)
        assert math.degrees(math.atan2(g[1], g[0])) % 360 == pytest.approx(azimuth)
    assert np.allclose(slope_gravity(0.0, 0.0), [0.0, 0.0, -9.81])
    assert grounds(SimSettings(robust_directions=4, robust_tilt_deg=5.0)) == [
        (0.0, 0.0), (5.0, 0.0), (5.0, 90.0), (5.0, 180.0), (5.0, 270.0)
    ]


def test_a_wide_box_stands_under_both_oracles():
    flat = make_oracle(SimSettings()).simulate(wide_box())
    tilted = robust().simulate(wide_box())
    assert flat.outcome == tilted.outcome == Outcome.stable
    assert tilted.tilt_deg < 1.0 and tilted.stop_reason == StopReason.rest
    assert tilted.steps > flat.steps, "five runs (flat + 4 slopes), their steps summed"
    assert "4 slopes of 5 deg" in tilted.message


def test_a_thin_column_stands_flat_but_falls_on_a_slope_steeper_than_its_tipping_angle():
    flat = make_oracle(SimSettings()).simulate(thin_column())
    assert flat.outcome == Outcome.stable and flat.tilt_deg < 1.0, "it stands on flat ground"
    gentle = robust(robust_tilt_deg=3.0).simulate(thin_column())
    assert gentle.outcome == Outcome.stable, gentle.message
    steep = robust(robust_tilt_deg=5.0).simulate(thin_column())
    assert steep.outcome == Outcome.unstable and steep.tilt_deg > 20.0
    assert steep.message.startswith("unstable on a 5 deg slope toward azimuth 0 deg"), "stops at the first fall"


def test_failures_are_failure_verdicts():
    verdict = robust().simulate(np.zeros((N, N, N), dtype=bool))
    assert verdict.status == SimStatus.invalid_input and verdict.outcome == Outcome.invalid and verdict.tilt_deg is None
    timed_out = robust(item_timeout_s=1e-6).simulate(wide_box())
    assert timed_out.status == SimStatus.timeout and "flat ground" in timed_out.message


def test_batch_runs_the_robust_oracle_in_the_pool_workers():
    verdicts = robust().simulate_batch([wide_box(), thin_column()], workers=1)
    assert [v.outcome for v in verdicts] == [Outcome.stable, Outcome.unstable]
    assert "slope" in verdicts[1].message


# --- selected in config, through the loop's roles, stats, metrics and the API ------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return export_random_tiny_model(tmp_path_factory.mktemp("robust-model"))


def test_robust_standing_selected_in_config_labels_the_loops_samples(tmp_path, model_folder, valkey_server):
    config = tmp_path / "robust.yaml"
    config.write_text("base: tiny\nsim:\n  oracle: robust_standing\n  robust_tilt_deg: 5\n  robust_directions: 4\n")
    chosen = load_settings(config, environ={}).sim
    assert chosen.oracle == "robust_standing"
    broker_values = make_settings(tmp_path, redis_url=valkey_server.url, max_backlog=32, replay_capacity=64).model_dump()
    settings = loop_test_settings(model_folder, broker_values, canary={"enabled": False})
    settings.sim = chosen.model_copy(update={"max_time": settings.sim.max_time})
    broker = Broker.open(settings.broker)
    try:
        seed_default_prompts(broker.prompts, settings)
        prompt_id = broker.prompts.active()[0]
        known = {}
        for seed, occupancy in enumerate((wide_box(), thin_column())):
            record = SampleRecord(
                prompt_id=prompt_id, view=0, adapter_version=0, seed=seed,
                latent=np.zeros((8, 4, 4, 4), np.float32), occupancy=occupancy,
            )
            broker.samples.put(record.sample_id, record.to_bytes())
            known[record.sample_id] = Outcome.stable if seed == 0 else Outcome.unstable
        batch = GeneratorWorker(broker, settings).step()  # the generator's own samples, too
        assert batch is not None and batch.samples == settings.loop.samples_per_prompt
        simulator = SimulatorWorker(broker, settings)
        assert simulator.oracle.name == "robust_standing", "the worker builds the oracle the config names"
        labelled_before = {r: REGISTRY.get_sample_value("dso_samples_labelled_total", {"result": r}) or 0.0 for r in ("stable", "unstable")}
        for _ in range(20):
            if simulator.step(block_ms=0) == 0:
                break
        assert simulator.labelled == 2 + batch.samples and broker.samples.backlog() == 0
        learner = Learner(broker, settings, tmp_path / "run")
        assert learner.ingest() == 2 + batch.samples
        for sample_id, outcome in known.items():
            verdict = broker.replay.get(sample_id).verdict
            assert verdict.outcome == outcome and "slope" in verdict.message
        for sample_id in batch.sample_ids:
            record = broker.replay.get(sample_id)
            assert record is None or "slope" in record.verdict.message  # judged ones are in the replay buffer
        totals = broker.stats.snapshot()["totals"]
        assert totals["labelled"] == 2 + batch.samples and totals["stable"] >= 1 and totals["unstable"] >= 1
        for result in ("stable", "unstable"):
            assert REGISTRY.get_sample_value("dso_samples_labelled_total", {"result": result}) >= labelled_before[result] + 1
        token = "robust-test-token"
        app = create_app(settings, broker, environ={settings.api.token_env: token})
        with ApiServer(app, port=0) as server:
            column_id = next(i for i, o in known.items() if o == Outcome.unstable)
            reply = httpx.get(f"{server.url}/v1/samples/{column_id}", headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert reply.status_code == 200, reply.text
            info = reply.json()
            assert info["outcome"] == "unstable" and info["message"].startswith("unstable on a 5 deg slope")
    finally:
        broker.close()
