"""FineTuner: objectives train the LoRA adapter in the right direction and resume bit-exactly."""

import math

import pytest
import torch

from dso.config import LoraSettings, ObjectiveSettings, TrainSettings, load_settings
from dso.learner import flow_matching as fm
from dso.learner.trainer import FineTuner, TrainBatch
from dso.models.transformer import SparseStructureFlowModel


def _flow():
    torch.manual_seed(0)
    s = load_settings("tiny", environ={}).model.transformer
    return SparseStructureFlowModel.from_settings(s)


def _live_flow():
    """A flow whose zero-initialised output layers are perturbed, so the adapter's gradients are not zero."""
    flow = _flow()
    torch.manual_seed(4)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return flow


def _batch(n=8, paired=False):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, 8, 8, 8, 8, generator=g)
    cond = torch.randn(n, 64, 128, generator=g)
    stable = torch.tensor([True] * (n // 2) + [False] * (n // 2))
    return TrainBatch(x0, cond, stable)


def _tuner(name="dro", **train):
    return FineTuner(_flow(), LoraSettings(r=4, alpha=8), ObjectiveSettings(name=name), TrainSettings(lr=1e-3, warmup_steps=1, **train))


def test_dro_separates_stable_from_unstable():
    tuner = _tuner("dro")
    batch = _batch()
    first = [tuner.train_step(batch) for _ in range(12)]
    gap0 = first[0]["err_unstable"] - first[0]["err_stable"]
    gap1 = first[-1]["err_unstable"] - first[-1]["err_stable"]
    assert gap1 > gap0, (gap0, gap1)


def test_plain_dro_without_anchor_or_guidance_still_trains():
    tuner = FineTuner(_flow(), LoraSettings(r=4, alpha=8), ObjectiveSettings(name="dro_eq5"), TrainSettings(lr=1e-3, warmup_steps=1))
    m = tuner.train_step(_batch())
    assert math.isfinite(m["loss"])


def test_guided_tuner_scores_the_guided_velocity():
    """With guidance the error is that of (1 + w) v_cond - w v_uncond, so it differs from the plain one."""
    batch = _batch()
    plain, guided = _tuner("sft"), _tuner("sft")
    guided.guidance = fm.Guidance(3.0)
    for tuner in (plain, guided):  # a fresh model zero-inits its output layers: give it a real cond dependence
        torch.manual_seed(4)
        with torch.no_grad():
            for p in tuner.model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    t, noise = torch.full((8,), 0.7), torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(2))
    e_plain, e_guided = plain._errors(batch, t, noise), guided._errors(batch, t, noise)
    with torch.no_grad():
        v_c = plain.model(fm.noisy_latent(batch.x0, noise, t, 1e-5), t * 1000, batch.cond)
        v_u = plain.model(fm.noisy_latent(batch.x0, noise, t, 1e-5), t * 1000, torch.zeros_like(batch.cond))
        expected = ((4 * v_c - 3 * v_u - fm.velocity_target(batch.x0, noise, 1e-5)) ** 2).flatten(1).mean(1)
    assert not torch.allclose(e_plain, e_guided)
    assert torch.allclose(e_guided, expected, rtol=1e-4, atol=1e-6)


def test_anchored_dro_reference_equals_policy_for_a_fresh_adapter():
    tuner = _tuner("dro")
    batch = _batch()
    t, noise = torch.full((8,), 0.6), torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(3))
    ref = tuner._reference_errors(batch, t, noise, rows=~batch.stable)
    err = tuner._errors(batch, t, noise).detach()
    assert torch.all(ref[batch.stable] == 0)
    assert torch.allclose(ref[~batch.stable], err[~batch.stable], rtol=1e-5)


def test_dpo_starts_at_log2_with_a_fresh_adapter():
    tuner = _tuner("dpo")
    loss, _ = tuner.loss(_batch())
    assert math.isclose(loss.item(), math.log(2.0), rel_tol=1e-4)


def test_paired_objective_rejects_unpaired_batch():
    tuner = _tuner("dpo")
    b = _batch()
    b.stable[0] = False
    with pytest.raises(ValueError, match="pairs"):
        tuner.train_step(b)


@pytest.mark.parametrize("name", ["dro", "dro_group", "dro_trust", "dro_eq5", "dpo", "sft", "dro_paired"])
def test_every_objective_steps(name):
    batch = _batch()
    batch.group_rate = torch.full((8,), 0.5)
    m = _tuner(name).train_step(batch)
    assert math.isfinite(m["loss"]) and m["step"] == 1


def test_resume_is_bit_exact(tmp_path):
    batch = _batch()
    straight = _tuner("dro")
    for _ in range(4):
        straight.train_step(batch)

    first = _tuner("dro")
    for _ in range(2):
        first.train_step(batch)
    first.save(tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    resumed = _tuner("dro")
    assert resumed.load(tmp_path) == 2
    for _ in range(2):
        resumed.train_step(batch)
    a, b = straight.adapter_state(), resumed.adapter_state()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tethered_dro_starts_with_zero_tether_and_reports_it():
    tuner = FineTuner(_live_flow(), LoraSettings(r=4, alpha=8), ObjectiveSettings(name="dro", tether=1.0), TrainSettings(lr=1e-3, warmup_steps=1))
    first = tuner.train_step(_batch())
    assert first["tether"] == 0.0  # a fresh adapter (B = 0) is the reference
    second = tuner.train_step(_batch())
    assert second["tether"] > 0.0


def test_ema_is_published_and_resumes(tmp_path):
    from dso.models.lora import live_lora_parameters, load_adapter_weights

    settings = ObjectiveSettings(name="dro", ema_decay=0.5)
    tuner = FineTuner(_live_flow(), LoraSettings(r=4, alpha=8), settings, TrainSettings(lr=1e-2, warmup_steps=1))
    for _ in range(3):
        tuner.train_step(_batch())
    tuner.save(tmp_path / "a")
    published = load_adapter_weights(tmp_path / "a" / "adapter")
    live = live_lora_parameters(tuner.model)
    key = next(k for k in live if "lora_B" in k)
    assert torch.equal(published[key], tuner.ema.shadow[key])
    assert not torch.equal(published[key], live[key].detach())  # the average lags the live weights
    again = FineTuner(_live_flow(), LoraSettings(r=4, alpha=8), settings, TrainSettings(lr=1e-2, warmup_steps=1))
    again.load(tmp_path / "a")
    assert torch.equal(again.ema.shadow[key], tuner.ema.shadow[key])
    again.restore(None)  # a rollback to the base resets the average too
    assert float(again.ema.shadow[key].abs().sum()) == 0.0
