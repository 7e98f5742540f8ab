"""Sign and gradient direction of each objective on toy cases."""

import math

import torch

from dso.learner import flow_matching as fm
import pytest

from dso.config import ObjectiveSettings
from dso.learner.objectives import OBJECTIVES, BatchKind, ReferenceRows, Terms, build_objective


def _core(name: str, **settings):
    return OBJECTIVES[name](ObjectiveSettings(name=name, **settings)).core


def dro_loss(err, stable, unstable_cap):
    return _core("dro_eq5", dro_unstable_cap=unstable_cap)(Terms(err, stable))


def anchored_dro_loss(err, stable, ref_err, margin):
    return _core("dro", dro_margin=margin)(Terms(err, stable, ref_err=ref_err))


def dro_paired_loss(err_w, err_l):
    stable = torch.cat([torch.ones_like(err_w), torch.zeros_like(err_l)]).bool()
    return _core("dro_paired")(Terms(torch.cat([err_w, err_l]), stable))


def dpo_loss(err_w, err_l, ref_w, ref_l, beta):
    stable = torch.cat([torch.ones_like(err_w), torch.zeros_like(err_l)]).bool()
    return _core("dpo", dpo_beta=beta)(Terms(torch.cat([err_w, err_l]), stable, ref_err=torch.cat([ref_w, ref_l])))


def sft_loss(err, stable):
    return _core("sft")(Terms(err, stable))


def trust_loss(err, stable, ref_err, beta=100.0):
    return _core("dro_trust", trust_beta=beta)(Terms(err, stable, ref_err=ref_err))


def test_dro_lowers_stable_error_and_raises_unstable():
    err = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    stable = torch.tensor([True, True, False, False])
    dro_loss(err, stable, unstable_cap=2.0).backward()
    # gradient descent moves err against the gradient
    assert (err.grad[:2] > 0).all(), "stable errors must decrease under descent"
    assert (err.grad[2:] < 0).all(), "unstable errors must increase under descent"


def test_dro_halves_weighted_equally():
    # one stable sample among many unstable ones gets the same total weight as all unstable ones
    err = torch.ones(5, requires_grad=True)
    stable = torch.tensor([True, False, False, False, False])
    dro_loss(err, stable, unstable_cap=2.0).backward()
    assert torch.isclose(err.grad[0], -err.grad[1:].sum())


def test_balanced_dro_bounded_for_all_unstable_batch():
    err = torch.tensor([10.0, 50.0, 1e6], requires_grad=True)
    stable = torch.zeros(3, dtype=torch.bool)
    loss = dro_loss(err, stable, unstable_cap=2.0)
    assert loss.item() >= -1.0 - 1e-6
    loss.backward()
    assert torch.all(err.grad == 0), "errors past the cap must not be pushed further"


def test_anchored_dro_pushes_only_within_the_margin_of_the_reference():
    ref = torch.tensor([0.5, 0.5, 0.5, 0.5])
    # unstable row 2 sits at the reference, row 3 already 20 % above it (margin 10 %)
    err = torch.tensor([0.5, 0.5, 0.5, 0.6], requires_grad=True)
    stable = torch.tensor([True, True, False, False])
    anchored_dro_loss(err, stable, ref, margin=0.1).backward()
    assert (err.grad[:2] > 0).all(), "stable errors must decrease under descent"
    assert err.grad[2] < 0, "an unstable error near the reference must increase under descent"
    assert err.grad[3] == 0, "an unstable error past the margin must not be pushed further"


def test_anchored_dro_bounded_for_all_unstable_batch():
    ref = torch.tensor([0.4, 0.6, 0.5])
    err = torch.tensor([10.0, 50.0, 1e6], requires_grad=True)
    loss = anchored_dro_loss(err, torch.zeros(3, dtype=torch.bool), ref, margin=0.05)
    assert math.isclose(loss.item(), -0.5 * 0.05 * ref.mean().item(), rel_tol=1e-6)
    loss.backward()
    assert torch.all(err.grad == 0)


def test_anchored_dro_equals_plain_pull_when_policy_is_reference():
    err = torch.tensor([0.2, 0.3, 0.7], requires_grad=True)
    stable = torch.tensor([True, True, False])
    loss = anchored_dro_loss(err, stable, err.detach().clone(), margin=0.05)
    assert math.isclose(loss.item(), 0.5 * 0.25, rel_tol=1e-6)  # push term is 0 at the reference


def test_guided_velocity_matches_the_sampler_formula():
    def model(x, timestep, cond):  # conditional branch: x + cond mean; unconditional (cond = 0): x
        return x + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)

    guidance = fm.Guidance(strength=3.0, interval=(0.5, 1.0))
    x = torch.randn(2, 1, 2, 2, 2)
    cond = torch.ones(2, 4, 3)
    timestep = torch.tensor([0.9, 0.2]) * fm.TIMESTEP_SCALE
    v = guidance.wrap(model)(x, timestep, cond)
    assert torch.allclose(v[0], x[0] + 4.0)  # inside the interval: (1 + w) v_cond - w v_uncond
    assert torch.allclose(v[1], x[1] + 1.0)  # outside: the conditional branch alone


def test_dro_paired_sign():
    ew = torch.tensor([0.3, 0.4], requires_grad=True)
    el = torch.tensor([0.3, 0.4], requires_grad=True)
    dro_paired_loss(ew, el).backward()
    assert (ew.grad > 0).all() and (el.grad < 0).all()


def test_dpo_equals_log2_when_policy_is_reference():
    e = torch.rand(8)
    loss = dpo_loss(e, e.flip(0), e, e.flip(0), beta=500.0)
    assert math.isclose(loss.item(), math.log(2.0), rel_tol=1e-6)


def test_dpo_gradient_prefers_winner():
    ew = torch.tensor([0.5], requires_grad=True)
    el = torch.tensor([0.5], requires_grad=True)
    dpo_loss(ew, el, torch.tensor([0.5]), torch.tensor([0.5]), beta=500.0).backward()
    assert ew.grad.item() > 0 and el.grad.item() < 0


def test_sft_ignores_unstable():
    err = torch.tensor([0.2, 5.0], requires_grad=True)
    loss = sft_loss(err, torch.tensor([True, False]))
    assert math.isclose(loss.item(), 0.2, rel_tol=1e-6)
    loss.backward()
    assert err.grad[1] == 0


def test_flow_path_endpoints_and_target():
    x0 = torch.randn(2, 8, 4, 4, 4)
    noise = torch.randn_like(x0)
    assert torch.allclose(fm.noisy_latent(x0, noise, torch.zeros(2), 0.0), x0)
    assert torch.allclose(fm.noisy_latent(x0, noise, torch.ones(2), 0.0), noise)
    # the exact velocity makes the error zero
    target = fm.velocity_target(x0, noise, 1e-5)
    err = fm.per_sample_error(lambda x, t, c: target, x0, None, torch.rand(2), noise, 1e-5)
    assert torch.allclose(err, torch.zeros(2))


def test_logit_normal_t_mass_at_noisy_end():
    g = torch.Generator().manual_seed(0)
    t = fm.sample_t(20000, mean=1.0, std=1.0, generator=g)
    assert (t > 0).all() and (t < 1).all()
    assert 0.68 < t.median().item() < 0.78  # sigmoid(1) = 0.731


# --- the contract: needs declared per objective, the stabilisers folded in ---------------


def test_each_objective_declares_its_needs():
    needs = {name: cls.base_needs for name, cls in OBJECTIVES.items()}
    assert needs["dpo"].batch == BatchKind.pairs and needs["dpo"].reference == ReferenceRows.all
    assert needs["dro"].batch == BatchKind.balanced and needs["dro"].reference == ReferenceRows.unstable
    assert needs["dro_eq5"].reference == ReferenceRows.none and needs["sft"].batch == BatchKind.stable_only
    tethered = build_objective(ObjectiveSettings(name="dro_eq5", tether=0.5, ema_decay=0.9)).needs
    assert tethered.reference == ReferenceRows.all and tethered.velocities and tethered.ema


def test_unknown_objective_is_a_clear_error():
    settings = ObjectiveSettings.model_construct(name="nope")
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_objective(settings)


# --- two-sided trust region (dro_trust) ------------------------------------------------


def test_trust_region_gradient_signs():
    ref = torch.full((4,), 0.5)
    err = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    stable = torch.tensor([True, True, False, False])
    trust_loss(err, stable, ref).backward()
    assert (err.grad[:2] > 0).all(), "stable errors must decrease under descent"
    assert (err.grad[2:] < 0).all(), "unstable errors must increase under descent"


def test_trust_region_both_halves_saturate():
    ref = torch.full((4,), 0.5)
    stable = torch.tensor([True, True, False, False])
    # stable rows far better than the reference, unstable rows far worse: both sides are done
    err = torch.tensor([0.1, 0.1, 2.0, 2.0], requires_grad=True)
    loss = trust_loss(err, stable, ref, beta=100.0)
    loss.backward()
    assert err.grad.abs().max() < 1e-6
    assert loss.item() < 1e-6
    # and the loss is bounded for any errors: each half lies in [0, 1]
    wild = torch.tensor([1e6, -1e6, 1e6, -1e6])
    assert 0.0 <= trust_loss(wild, stable, ref).item() <= 1.0


# --- velocity tether ----------------------------------------------------------------------


def test_tether_is_zero_at_the_reference_and_pulls_toward_it():
    settings = ObjectiveSettings(name="dro", tether=2.0)
    objective = build_objective(settings)
    pred = torch.randn(3, 2, 4, requires_grad=True)
    stable = torch.tensor([True, False, True])
    terms = Terms(err=torch.zeros(3), stable=stable, ref_err=torch.zeros(3), pred=pred, ref_pred=pred.detach().clone())
    loss, parts = objective.loss(terms)
    assert parts["tether"] == 0.0
    ref_pred = torch.zeros(3, 2, 4)
    pred2 = torch.ones(3, 2, 4, requires_grad=True)
    loss, parts = objective.loss(Terms(err=torch.zeros(3), stable=stable, ref_err=torch.zeros(3), pred=pred2, ref_pred=ref_pred))
    assert parts["tether"] == pytest.approx(1.0)
    loss.backward()
    assert (pred2.grad > 0).all(), "descent must move the velocity back toward the reference"


def test_tether_without_velocities_is_refused():
    objective = build_objective(ObjectiveSettings(name="dro", tether=1.0))
    with pytest.raises(ValueError, match="no velocities"):
        objective.loss(Terms(err=torch.zeros(2), stable=torch.tensor([True, False]), ref_err=torch.zeros(2)))


# --- group-relative DRO (dro_group) ------------------------------------------------------


def test_group_relative_dro_stops_pulling_on_solved_prompts():
    objective = build_objective(ObjectiveSettings(name="dro_group"))
    err = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    stable = torch.tensor([True, True, False, False])
    rate = torch.tensor([1.0, 0.5, 0.5, 0.0])  # row 0: a solved prompt; row 3: a prompt that always falls
    ref = torch.full((4,), 0.5)
    loss, _ = objective.loss(Terms(err, stable, ref_err=ref, group_rate=rate))
    loss.backward()
    assert err.grad[0] == 0, "a solved prompt's stable sample must not pull"
    assert err.grad[1] > 0, "an unsolved prompt's stable sample pulls (its error decreases under descent)"
    assert err.grad[2] < 0, "an unstable sample of a sometimes-stable prompt is pushed"
    assert err.grad[3] == 0, "a prompt that always falls carries no signal"


def test_group_relative_dro_needs_the_rates():
    objective = build_objective(ObjectiveSettings(name="dro_group"))
    assert objective.needs.group_rate
    with pytest.raises(ValueError, match="group_rate"):
        objective.loss(Terms(torch.zeros(2), torch.tensor([True, False]), ref_err=torch.zeros(2)))
