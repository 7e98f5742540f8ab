"""The canary in-process on the real tiny model, a real embedded Valkey and the MuJoCo oracle.

Covers: the probe's scores (a model against itself: no drift, Chamfer ratio 1, promoted), a wrecked
adapter refused with reasons, supersession under the interval, restart safety of the promoted pointer
(new broker, new generator, new canary), generators following the promoted version only, the learner's
rollback to the promoted weights, and the learner promoting its own publishes when the canary is off.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest_broker import make_settings
from dso.actors import GeneratorWorker, Learner, seed_default_prompts
from dso.actors.canary import CanaryWorker
from dso.broker.broker import Broker
from dso.broker.promotion import CanaryRecord
from dso.config import Settings, load_settings
from dso.evaluate.canary import ProbeSamples, ProbeSet, generate_probe, heldout_probe, score_probe
from dso.evaluate.gate import Decision
from dso.models.generator import Generator
from dso.models.lora import attach_lora, live_lora_parameters, save_adapter
from dso.telemetry import CANARY_SCORES

# a small probe and few flow steps: the gate's logic, not the probe's statistics, is under test
CANARY = {"prompts": 4, "seeds": 2, "min_interval_s": 0.0, "surface_points": 256, "icp_iterations": 5}


def canary_settings(tmp_path: Path, redis_url: str, **canary) -> Settings:
    settings = load_settings("tiny", environ={})
    data = settings.model_dump()
    data["broker"] = make_settings(tmp_path, redis_url=redis_url).model_dump()
    data["canary"].update({**CANARY, **canary})
    data["sampler"]["steps"] = 4
    data["loop"].update(prompts_per_batch=1, samples_per_prompt=2, default_prompts=2)
    return Settings.model_validate(data)


@pytest.fixture()
def env(tmp_path, valkey_server):
    settings = canary_settings(tmp_path, valkey_server.url)
    broker = Broker.open(settings.broker)
    yield settings, broker
    broker.close()


def lora_dir(settings: Settings, folder: Path, scale: float, seed: int = 0) -> Path:
    """A PEFT adapter directory for the tiny flow: B ~ N(0, scale) (0: the base model), A as initialised."""
    flow = Generator.from_settings(settings).modules.flow
    model = attach_lora(flow, settings.lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in live_lora_parameters(model).items():
            if "lora_B" in key:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return save_adapter(model, folder)


def publish(broker: Broker, settings: Settings, tmp_path: Path, scale: float, seed: int = 0, parent: int | None = None) -> int:
    folder = lora_dir(settings, tmp_path / f"adapter-{scale}-{seed}", scale, seed)
    return broker.adapters.publish(folder, step=1, objective="dro", parent_version=parent).version


def test_probe_scores_of_a_model_against_itself(env):
    settings, _broker = env
    probe = heldout_probe(settings)
    assert len(probe) == CANARY["prompts"] * CANARY["seeds"] and all(t is not None for t in probe.truths)
    generator = Generator.from_settings(settings)
    samples = generate_probe(generator, probe, settings.canary)
    again = generate_probe(generator, probe, settings.canary)
    np.testing.assert_array_equal(samples.occupancy, again.occupancy)  # fixed seeds: the same noise every time
    scores = score_probe(samples, again, probe, settings.sim, settings.canary)
    assert set(CANARY_SCORES) <= set(scores)
    assert scores["paired_drift"] == 0.0 and scores["stable_n"] == len(probe)
    assert 0 <= scores["stable_ratio"] <= 1 and scores["diversity"] > 0
    assert 0 < scores["chamfer"] < 0.5 and 0 <= scores["fscore"] <= 1 and scores["footprint_ratio"] > 0


def test_prompts_without_truth_and_empty_samples():
    settings = load_settings("tiny", environ={})
    canary = settings.canary.model_copy(update={"prompts": 2, "seeds": 2, "surface_points": 128})
    user = [type("UserPrompt", (), {"prompt_id": f"u{i}", "image": np.zeros((8, 8, 4), np.uint8)})() for i in range(2)]
    probe = ProbeSet.build(user, canary)
    assert probe.truths == [None, None]
    cube = np.zeros((32, 32, 32), bool)
    cube[12:20, 12:20, 0:8] = True
    base = ProbeSamples(np.stack([cube] * 4))
    empty = ProbeSamples(np.stack([cube, np.zeros_like(cube), cube, np.zeros_like(cube)]))
    scores = score_probe(empty, base, probe, settings.sim, canary)
    assert math.isnan(scores["chamfer"]) and math.isnan(scores["fscore"]) and math.isnan(scores["footprint_ratio"])
    assert scores["paired_drift"] == pytest.approx(canary.empty_distance / 2)  # two of four samples empty
    assert scores["empty_ratio"] == 0.5 and scores["stable_ratio"] <= 0.5  # empty samples are not stable
    assert scores["diversity"] == pytest.approx(canary.empty_distance)  # each prompt: one shape, one empty


def test_canary_promotes_the_base_refuses_a_wrecked_adapter_and_supersedes(env, tmp_path):
    settings, broker = env
    canary = CanaryWorker(broker, settings)
    assert canary.step() is False  # scores the base first; nothing published yet
    baseline = broker.promotion.get(0)
    assert baseline.decision == Decision.baseline and set(CANARY_SCORES) <= set(baseline.scores)

    same = publish(broker, settings, tmp_path, scale=0.0)  # B = 0: the base model itself
    assert canary.step() is True
    record = broker.promotion.get(same)
    assert record.decision == Decision.promoted, record.reasons
    assert record.scores["paired_drift"] == 0.0 and record.scores["chamfer"] == baseline.scores["chamfer"]
    assert broker.promotion.promoted() == same

    wrecked = publish(broker, settings, tmp_path, scale=5.0, seed=1)
    assert canary.step() is True
    record = broker.promotion.get(wrecked)
    assert record.decision == Decision.refused and record.reasons, record
    assert all(any(ch.isdigit() for ch in line) for line in record.reasons)
    assert broker.promotion.promoted() == same, "a refused candidate never moves the pointer"

    # two publishes inside the interval: the older is superseded, only the newer is scored
    canary.canary = settings.canary.model_copy(update={"min_interval_s": 3600.0})
    older, newer = publish(broker, settings, tmp_path, 0.0, seed=2), publish(broker, settings, tmp_path, 0.0, seed=3)
    assert canary.step() is False
    canary.canary = settings.canary.model_copy(update={"min_interval_s": 0.0})
    assert canary.step() is True
    assert broker.promotion.get(older).decision == Decision.superseded
    assert broker.promotion.get(newer).decision == Decision.promoted
    assert broker.promotion.counts() == {"promoted": 2, "refused": 1, "superseded": 1, "baseline": 1}


def test_restart_sees_the_same_promoted_version(env, tmp_path):
    settings, broker = env
    seed_default_prompts(broker.prompts, settings)
    canary = CanaryWorker(broker, settings)
    canary.start()
    good = publish(broker, settings, tmp_path, scale=1e-3, seed=4)  # changes the model's output, barely its shapes
    generator = GeneratorWorker(broker, settings)
    assert generator.maybe_adopt() is None, "published but not promoted: not adopted"
    canary.step()
    assert broker.promotion.get(good).decision == Decision.promoted, broker.promotion.get(good).reasons
    bad = publish(broker, settings, tmp_path, scale=5.0, seed=5)
    canary.step()
    assert broker.promotion.get(bad).decision == Decision.refused
    assert generator.maybe_adopt() == good and generator.step().adapter_version == good

    # everything restarts: a new broker connection, a new generator, a new canary
    again = Broker.open(settings.broker)
    try:
        assert again.promotion.promoted() == good
        assert GeneratorWorker(again, settings).maybe_adopt() == good, "a restarted generator starts on the promoted version"
        restarted = CanaryWorker(again, settings)
        assert restarted.last_decided == bad
        restarted.start()
        assert restarted.step() is False and again.promotion.counts()["baseline"] == 1, "the baseline is recorded once"
    finally:
        again.close()


def lora_values(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in live_lora_parameters(model).items()}


def set_lora(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in live_lora_parameters(model).values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.01)


def test_learner_rolls_back_to_the_promoted_weights(env, tmp_path):
    settings, broker = env
    run_dir = tmp_path / "run"
    learner = Learner(broker, settings, run_dir)
    model = learner.tuner.model
    set_lora(model, seed=1)
    good = learner.publish({"loss": 0.1}).version
    good_weights = lora_values(model)
    broker.promotion.record(CanaryRecord(version=good, decision=Decision.promoted, reasons=["test"]))
    set_lora(model, seed=2)
    bad = learner.publish({"loss": 0.2}).version
    set_lora(model, seed=3)  # training went on past the refused publish
    assert learner.maybe_rollback() is False, "no decision yet"

    assert settings.gate.rollback_after == 2
    broker.promotion.record(CanaryRecord(version=bad, decision=Decision.refused, reasons=["test: out of bounds"]))
    assert learner.maybe_rollback() is False and learner.refusal_streak == 1, "one refusal may be the probe's noise"
    worse = learner.publish({"loss": 0.25}).version
    set_lora(model, seed=4)
    broker.promotion.record(CanaryRecord(version=worse, decision=Decision.refused, reasons=["test: out of bounds"]))
    assert learner.maybe_rollback() is True and learner.rollbacks == 1, "two in a row: back to the promoted weights"
    for key, value in lora_values(model).items():
        torch.testing.assert_close(value, good_weights[key], msg=key)
    assert learner.maybe_rollback() is False, "one refusal, one rollback"
    assert learner.publish({"loss": 0.3}).parent_version == good

    # a refused version outside the learner's line (someone else's publish) is no reason to roll back
    foreign = publish(broker, settings, tmp_path, scale=1.0, seed=6, parent=None)
    broker.promotion.record(CanaryRecord(version=foreign, decision=Decision.refused, reasons=["test"]))
    assert learner.maybe_rollback() is False and learner.rollbacks == 1

    # a restarted learner remembers its rollbacks and does not roll back again for handled refusals
    restarted = Learner(broker, settings, run_dir)
    assert restarted.rollbacks == 1 and restarted.maybe_rollback() is False

    # a promotion ends a streak: refused, promoted, refused is no rollback
    one = learner.publish({"loss": 0.4}).version
    broker.promotion.record(CanaryRecord(version=one, decision=Decision.refused, reasons=["test"]))
    two = learner.publish({"loss": 0.4}).version
    broker.promotion.record(CanaryRecord(version=two, decision=Decision.promoted, reasons=["test"]))
    three = learner.publish({"loss": 0.4}).version
    broker.promotion.record(CanaryRecord(version=three, decision=Decision.refused, reasons=["test"]))
    assert learner.maybe_rollback() is False and learner.rollbacks == 1


def test_rollback_to_the_base_model(env, tmp_path):
    settings, broker = env
    settings.gate.rollback_after = 1
    learner = Learner(broker, settings, tmp_path / "run")
    set_lora(learner.tuner.model, seed=7)
    bad = learner.publish({"loss": 0.1}).version
    broker.promotion.record(CanaryRecord(version=bad, decision=Decision.refused, reasons=["test"]))
    assert learner.maybe_rollback() is True
    b = [v for k, v in lora_values(learner.tuner.model).items() if "lora_B" in k]
    assert b and all(not v.any() for v in b), "version 0 is the base: every B is zero"
    assert learner.parent_version == 0


def test_without_a_canary_every_publish_is_promoted(tmp_path, valkey_server):
    settings = canary_settings(tmp_path, valkey_server.url, enabled=False)
    broker = Broker.open(settings.broker)
    try:
        learner = Learner(broker, settings, tmp_path / "run")
        set_lora(learner.tuner.model, seed=8)
        version = learner.publish({"loss": 0.1}).version
        record = broker.promotion.get(version)
        assert broker.promotion.promoted() == version and record.decision == Decision.promoted
        assert record.reasons == ["no canary: promoted on publish"]
    finally:
        broker.close()
