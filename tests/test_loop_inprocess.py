"""The loop's roles in-process on a real embedded Valkey, real generator (tiny, random) and real oracle."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from conftest_broker import make_settings, verdict_of
from dso.actors import GeneratorWorker, Learner, SimulatorWorker, seed_default_prompts
from dso.actors.prompt_images import png_bytes
from dso.api.app import create_app
from dso.broker.prompt_stats import PromptStats
from dso.api.server import ApiServer
from dso.broker.broker import Broker
from dso.broker.records import LabelledRecord
from dso.broker.streams import DATA_FIELD
from dso.shapes.prompts import training_prompt
from test_loop_support import export_random_tiny_model, loop_test_settings


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return export_random_tiny_model(tmp_path_factory.mktemp("loop-model"))


@pytest.fixture()
def loop_env(tmp_path, model_folder, valkey_server):
    broker_values = make_settings(tmp_path, redis_url=valkey_server.url, max_backlog=32, replay_capacity=64).model_dump()
    settings = loop_test_settings(model_folder, broker_values, canary={"enabled": False})  # every publish promoted
    broker = Broker.open(settings.broker)
    seed_default_prompts(broker.prompts, settings)
    yield settings, broker
    broker.close()


def drain(simulator: SimulatorWorker, learner: Learner | None = None, rounds: int = 50) -> None:
    for _ in range(rounds):
        if simulator.step(block_ms=0) == 0 and (learner is None or learner.ingest() == 0):
            return


def test_default_prompts_are_training_renders_and_idempotent(loop_env):
    settings, broker = loop_env
    ids = broker.prompts.active()
    assert len(ids) == settings.loop.default_prompts
    meta = broker.prompts.get(ids[0]).metadata
    assert meta["source"] == "default" and meta["object_seed"] < settings.shapes.training_seed_limit
    assert seed_default_prompts(broker.prompts, settings) == 0  # not seeded twice


def test_generate_label_train_publish_adopt(loop_env, tmp_path):
    settings, broker = loop_env
    generator = GeneratorWorker(broker, settings)
    simulator = SimulatorWorker(broker, settings)
    learner = Learner(broker, settings, tmp_path / "run")
    first = generator.step()
    assert first is not None and first.samples == 4 and first.adapter_version == 0
    drain(simulator)
    assert simulator.labelled == 4 and broker.samples.backlog() == 0
    published = []
    for _ in range(12):
        result = learner.step()
        if result.published:
            published.append(result.published.version)
        if len(published) == 2:
            break
    assert published == [1, 2], "the learner publishes a version every publish_every steps"
    manifest = broker.adapters.manifest(2)
    assert manifest.step == 2 * settings.loop.publish_every and manifest.parent_version == 1
    assert manifest.objective == "dro" and "loss" in manifest.metrics
    # the generator hot-swaps to the newest version between batches; its samples carry it
    probe_before = generator.swapper.probe(generator.policy)
    batch = generator.step()
    assert batch is not None and batch.adapter_version == 2 and generator.version == 2
    assert not torch.equal(probe_before, generator.swapper.probe(generator.policy)), "the swap changed the policy"
    adoption = broker.adoptions.events()
    assert [a.version for a in adoption] == [2] and 0 <= adoption[0].latency_s < 60
    drain(simulator, learner)
    # reconciliation: every generated sample labelled exactly once, each counted once
    snapshot = broker.stats.snapshot()
    assert snapshot["totals"]["generated"] == 8 == snapshot["totals"]["labelled"]
    assert snapshot["by_version"][2]["generated"] == 4
    assert snapshot["learner"]["step"] >= 4 and snapshot["learner"]["version"] == 2
    assert broker.labelled.backlog() == 0 and broker.samples.backlog() == 0


def test_learner_resumes_from_checkpoint_and_continues_versions(loop_env, tmp_path):
    settings, broker = loop_env
    generator, simulator = GeneratorWorker(broker, settings), SimulatorWorker(broker, settings)
    generator.step()
    drain(simulator)
    first = Learner(broker, settings, tmp_path / "run")
    while first.version < 1:
        first.step()
    at_checkpoint = first.tuner.adapter_state()
    first.step()  # one step past the checkpoint, then the learner "dies" without saving
    assert first.tuner.step == settings.loop.publish_every + 1
    del first
    second = Learner(broker, settings, tmp_path / "run")
    assert second.resumed_from_step == settings.loop.publish_every and second.version == 1
    restored = second.tuner.adapter_state()
    assert restored.keys() == at_checkpoint.keys()
    assert all(torch.equal(restored[k], at_checkpoint[k]) for k in restored), "adapter restored from the checkpoint"
    while second.version < 2:
        second.step()
    manifest = broker.adapters.manifest(2)
    assert manifest.parent_version == 1 and manifest.step == 2 * settings.loop.publish_every


def test_paired_objective_pairs_by_prompt(loop_env, tmp_path):
    settings, broker = loop_env
    settings.objective.name = "dpo"
    generator, simulator = GeneratorWorker(broker, settings), SimulatorWorker(broker, settings)
    generator.step()
    drain(simulator)
    learner = Learner(broker, settings, tmp_path / "run")
    learner.ingest()
    assert not learner.ready(), "DPO needs both classes; the random model's blobs all stand"
    # add unstable twins of the stored samples (same prompt, relabelled) so pairs exist
    for record in list(broker.replay.sample(8, 0, rng=np.random.default_rng(0)).stable):
        twin = LabelledRecord.from_verdict(
            type(record.sample)(**{**record.sample.header(), "latent": record.sample.latent, "occupancy": record.sample.occupancy, "sample_id": record.sample_id + "u"}),
            verdict_of("unstable"),
        )
        broker.replay.add(twin)
    assert learner.ready()
    batch, _ = learner.train_batch(np.random.default_rng(1))
    half = batch.x0.shape[0] // 2
    assert half >= 1 and batch.stable[:half].all() and not batch.stable[half:].any()
    assert learner.step().trained


def metric(name: str, **labels: str) -> float:
    """Current value of a sample in the process-wide registry (0 before the first observation)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_workers_record_prometheus_metrics_and_prompt_stats_once(loop_env, tmp_path):
    settings, broker = loop_env
    before = {
        "generated": metric("dso_samples_generated_total"),
        "batches": metric("dso_generation_batch_duration_seconds_count"),
        "labelled": sum(metric("dso_samples_labelled_total", result=r) for r in ("stable", "unstable", "invalid", "error")),
        "simulations": metric("dso_simulation_duration_seconds_count"),
        "steps": metric("dso_learner_steps_total"),
        "step_times": metric("dso_learner_step_duration_seconds_count"),
        "staleness": metric("dso_sample_staleness_versions_count"),
        "published": metric("dso_adapters_published_total"),
        "adoptions": metric("dso_adapter_publish_to_adopt_seconds_count"),
    }
    generator, simulator = GeneratorWorker(broker, settings), SimulatorWorker(broker, settings)
    learner = Learner(broker, settings, tmp_path / "run")
    batch = generator.step()
    drain(simulator)
    # a redelivered labelled record (a simulator died between put and ack) must not be counted twice
    _entry, fields = broker.labelled.client.xrange(broker.labelled.stream_key, count=1)[0]
    payload = fields[DATA_FIELD]
    broker.labelled.put(LabelledRecord.from_bytes(payload).sample_id, payload)
    steps = 0
    while learner.version < 1:
        steps += int(learner.step().trained)
    assert metric("dso_samples_generated_total") - before["generated"] == batch.samples
    assert metric("dso_generation_batch_duration_seconds_count") - before["batches"] == 1
    labelled = sum(metric("dso_samples_labelled_total", result=r) for r in ("stable", "unstable", "invalid", "error"))
    assert labelled - before["labelled"] == batch.samples == simulator.labelled
    assert metric("dso_simulation_duration_seconds_count") - before["simulations"] == batch.samples
    assert metric("dso_learner_steps_total") - before["steps"] == steps == learner.tuner.step
    assert metric("dso_learner_step_duration_seconds_count") - before["step_times"] == steps
    assert metric("dso_sample_staleness_versions_count") - before["staleness"] >= steps * 2  # one per row
    assert metric("dso_adapters_published_total") - before["published"] == 1
    assert metric("dso_adapter_version", component="learner") == 1
    assert metric("dso_learner_loss") == pytest.approx(broker.stats.snapshot()["learner"]["loss"])
    generator.step()  # adopts version 1
    assert metric("dso_adapter_version", component="generator") == 1
    assert metric("dso_adapter_publish_to_adopt_seconds_count") - before["adoptions"] == 1
    # per-prompt counts: each sample exactly once, the duplicate delivery ignored
    prompt_id = broker.replay.get(batch.sample_ids[0]).sample.prompt_id
    counts = PromptStats.for_broker(broker).get(prompt_id)
    assert counts["labelled"] == batch.samples == counts["stable"] + counts["unstable"] + counts["invalid"]
    assert broker.stats.snapshot()["totals"]["labelled"] == batch.samples


def test_new_prompts_go_first_and_are_sampled_in_the_next_batch(loop_env):
    settings, broker = loop_env
    generator = GeneratorWorker(broker, settings)
    defaults = broker.prompts.active()
    chosen = []
    for _ in defaults:
        batch = generator.choose_prompts()
        generator.sampled_prompts.update(batch)  # what step() does once the batch is generated
        chosen += batch
    assert sorted(chosen) == sorted(defaults), "every prompt is sampled once before any repeats"
    broker.prompts.retire(defaults[0])
    assert defaults[0] not in generator.choose_prompts() and defaults[0] not in generator.sampled_prompts


def test_prompt_uploaded_over_the_api_is_sampled_by_the_next_batch(loop_env):
    settings, broker = loop_env
    token = "loop-test-token"
    app = create_app(settings, broker, environ={settings.api.token_env: token})
    generator, simulator = GeneratorWorker(broker, settings), SimulatorWorker(broker, settings)
    learner = Learner(broker, settings, broker.settings.run_dir / "run")
    with ApiServer(app, port=0) as server:
        assert generator.step() is not None  # the loop is running on the default prompts
        image = png_bytes(training_prompt(seed=12345, view_seed=7, settings=settings.shapes).image)
        reply = httpx.post(
            f"{server.url}/v1/prompts",
            files={"images": ("mug.png", image, "image/png")},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert reply.status_code == 201, reply.text
        uploaded = reply.json()["prompts"][0]["id"]
        batch = generator.step()
        drain(simulator, learner)
        prompts_of_batch = {broker.replay.get(i).sample.prompt_id for i in batch.sample_ids}
        assert uploaded in prompts_of_batch, "the uploaded prompt is sampled by the very next batch"
        info = httpx.get(f"{server.url}/v1/prompts/{uploaded}", timeout=30).json()
        assert info["stability"]["labelled"] == settings.loop.samples_per_prompt
        metrics_text = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert 'dso_samples_labelled_total{result="stable"}' in metrics_text


def test_ground_truth_anchors_join_the_stable_half(loop_env, tmp_path):
    settings, broker = loop_env
    settings.objective.anchor_share = 0.5
    generator, simulator = GeneratorWorker(broker, settings), SimulatorWorker(broker, settings)
    generator.step()
    drain(simulator)
    learner = Learner(broker, settings, tmp_path / "run")
    assert learner.anchors is not None, "the test model's folder ships a VAE encoder"
    learner.ingest()
    batch, _ = learner.train_batch(np.random.default_rng(3))
    truths = {pid: learner.anchors.latent(pid) for pid in broker.prompts.active()}
    anchored = [i for i in range(batch.x0.shape[0]) if any(torch.equal(batch.x0[i], z) for z in truths.values())]
    n_stable = int(batch.stable.sum())
    assert len(anchored) == round(0.5 * n_stable) and all(batch.stable[i] for i in anchored)
    assert learner.step().trained



def test_learner_counts_staleness_from_the_promoted_version(loop_env, tmp_path):
    """The canary lags the newest publish: samples of the promoted version must stay fresh for the learner."""
    settings, broker = loop_env
    settings.canary.enabled = True  # publishes wait for the canary: nothing is promoted here
    generator, simulator = GeneratorWorker(broker, settings), SimulatorWorker(broker, settings)
    generator.step()
    drain(simulator)
    learner = Learner(broker, settings, tmp_path / "run")
    learner.ingest()
    for _ in range(broker.settings.max_staleness_versions + 2):
        learner.publish({"loss": 0.0})
    assert broker.promotion.promoted() == 0 and learner.version > broker.settings.max_staleness_versions
    assert learner.ready() and learner.train_batch(np.random.default_rng(0)) is not None
