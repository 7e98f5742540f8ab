"""Euler flow sampler: time grid, integration, CFG semantics, determinism."""

from __future__ import annotations

import pytest
import torch

from dso.config import SamplerSettings
from dso.models.sampler import (
    FlowEulerSampler,
    draw_noise,
    noisy_latent,
    rescaled_timesteps,
    velocity_target,
)
from dso.models.transformer import SparseStructureFlowModel

torch.set_num_threads(1)

SHAPE = (3, 8, 4, 4, 4)


class RecordingModel(torch.nn.Module):
    """Analytic velocity field ``v = a * x + mean(cond)``; records every call's t and cond."""

    def __init__(self, a: float = 0.3) -> None:
        super().__init__()
        self.a = a
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, cond):
        self.calls.append((t.clone(), cond.clone()))
        return self.a * x + cond.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)


class PointMassVelocity(torch.nn.Module):
    """Exact flow velocity when all data sit at one latent ``target``: Euler must land on it."""

    def __init__(self, target: torch.Tensor, sigma_min: float) -> None:
        super().__init__()
        self.target, self.sigma_min = target, sigma_min

    def forward(self, x, t, cond):
        t = (t / 1000).reshape(-1, 1, 1, 1, 1)
        eps = (x - (1 - t) * self.target) / (self.sigma_min + (1 - self.sigma_min) * t)
        return velocity_target(self.target.expand_as(x), eps, self.sigma_min)


def tiny_flow(seed: int = 0) -> SparseStructureFlowModel:
    model = SparseStructureFlowModel(resolution=4, in_channels=8, out_channels=8, model_channels=32,
                                     cond_channels=16, num_blocks=1, num_heads=2, patch_size=1, qk_rms_norm=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def test_time_grid_follows_rescale_formula():
    r, steps = 3.0, 12
    times = rescaled_timesteps(steps, r)
    assert len(times) == steps + 1 and times[0] == pytest.approx(1.0) and times[-1] == 0.0
    for i, t in enumerate(times):
        u = 1 - i / steps
        assert t == pytest.approx(r * u / (1 + (r - 1) * u))
    assert all(a > b for a, b in zip(times, times[1:]))
    # r > 1 spends more of the grid near t = 1: the first step is shorter than uniform
    assert times[0] - times[1] < 1 / steps
    assert rescaled_timesteps(4, 1.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError):
        rescaled_timesteps(0, 3.0)


def test_model_sees_grid_times_1000_and_constant_velocity_integrates_exactly():
    settings = SamplerSettings(steps=5, rescale_t=2.0, cfg_strength=0.0)
    model = RecordingModel(a=0.0)
    noise = draw_noise(SHAPE, torch.Generator().manual_seed(0))
    cond = torch.full((3, 2, 16), 0.25)
    x0 = FlowEulerSampler(settings).sample(model, noise, cond)
    seen = [float(t[0]) for t, _ in model.calls]
    assert seen == pytest.approx([1000 * t for t in rescaled_timesteps(5, 2.0)[:-1]])
    assert all(t.shape == (3,) and t.dtype == torch.float32 for t, _ in model.calls)
    torch.testing.assert_close(x0, noise - 0.25)  # sum of the steps is exactly 1


def test_point_mass_flow_lands_on_the_data():
    target = torch.randn(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    settings = SamplerSettings(steps=7, rescale_t=3.0, cfg_strength=0.0)
    noise = draw_noise((2, 8, 4, 4, 4), torch.Generator().manual_seed(6))
    x0 = FlowEulerSampler(settings).sample(PointMassVelocity(target, settings.sigma_min), noise, torch.zeros(2, 1, 4))
    torch.testing.assert_close(x0, target.expand_as(x0), atol=1e-3, rtol=0)


def test_flow_path_and_target_are_consistent():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    sigma_min, t, dt = 1e-5, torch.full((3,), 0.4, dtype=torch.float64), 1e-6
    x0, eps = x0.double(), eps.double()
    torch.testing.assert_close(noisy_latent(x0, eps, torch.zeros(3), sigma_min), x0 + sigma_min * eps)
    torch.testing.assert_close(noisy_latent(x0, eps, torch.ones(3), sigma_min), eps)
    slope = (noisy_latent(x0, eps, t + dt, sigma_min) - noisy_latent(x0, eps, t - dt, sigma_min)) / (2 * dt)
    torch.testing.assert_close(slope, velocity_target(x0, eps, sigma_min))


def test_cfg_only_inside_the_interval_with_zero_uncond():
    settings = SamplerSettings(steps=6, rescale_t=1.0, cfg_strength=2.0, cfg_interval=(0.5, 0.8), cfg_batched=False)
    sampler = FlowEulerSampler(settings)
    model = RecordingModel()
    noise = draw_noise(SHAPE, torch.Generator().manual_seed(2))
    cond = torch.rand(3, 2, 16) + 0.5
    sampler.sample(model, noise, cond)
    times = sampler.timesteps()[:-1]  # 1, 5/6, 4/6, 3/6, 2/6, 1/6
    inside = [0.5 <= t <= 0.8 for t in times]
    assert inside == [False, False, True, True, False, False]
    assert len(model.calls) == len(times) + sum(inside)
    uncond = [c for _, c in model.calls if torch.count_nonzero(c) == 0]
    assert len(uncond) == sum(inside)


def test_guided_velocity_formula():
    settings = SamplerSettings(cfg_strength=3.0, cfg_interval=(0.0, 1.0))
    model = RecordingModel(a=0.5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    cond, neg = torch.full((3, 2, 16), 0.2), torch.full((3, 2, 16), -0.1)
    v = FlowEulerSampler(settings).velocity(model, x, 0.7, cond, neg)
    v_c, v_u = 0.5 * x + 0.2, 0.5 * x - 0.1
    torch.testing.assert_close(v, 4.0 * v_c - 3.0 * v_u)


def test_cfg_strength_zero_equals_the_conditional_path():
    model = tiny_flow()
    noise = draw_noise((2, 8, 4, 4, 4), torch.Generator().manual_seed(4))
    cond = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(5))
    base = dict(steps=4, rescale_t=3.0, cfg_interval=(0.0, 1.0))
    no_cfg = FlowEulerSampler(SamplerSettings(cfg_strength=0.0, **base)).sample(model, noise, cond)
    # the conditional-only path, integrated by hand
    x, times = noise, rescaled_timesteps(4, 3.0)
    with torch.no_grad():
        for t, t_prev in zip(times[:-1], times[1:]):
            x = x - (t - t_prev) * model(x, torch.full((2,), 1000 * t), cond)
    torch.testing.assert_close(no_cfg, x)
    with_cfg = FlowEulerSampler(SamplerSettings(cfg_strength=3.0, **base)).sample(model, noise, cond)
    assert not torch.allclose(no_cfg, with_cfg, atol=1e-4)


def test_batched_and_sequential_cfg_agree():
    model = tiny_flow(1)
    noise = draw_noise((2, 8, 4, 4, 4), torch.Generator().manual_seed(6))
    cond = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(7))
    outs = [FlowEulerSampler(SamplerSettings(steps=3, cfg_batched=b)).sample(model, noise, cond) for b in (True, False)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_deterministic_and_batch_independent():
    model = tiny_flow(2)
    sampler = FlowEulerSampler(SamplerSettings(steps=3))
    cond = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(8))  # one prompt, repeated
    runs = [sampler.sample(model, draw_noise((3, 8, 4, 4, 4), torch.Generator().manual_seed(s)), cond) for s in (42, 42, 43)]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    assert not torch.allclose(runs[0], runs[2])
    noise = draw_noise((3, 8, 4, 4, 4), torch.Generator().manual_seed(42))
    single = sampler.sample(model, noise[1:2], cond)
    torch.testing.assert_close(single, runs[0][1:2], atol=1e-5, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cfg_interval"):
        FlowEulerSampler(SamplerSettings(cfg_interval=(0.9, 0.2)))
    sampler = FlowEulerSampler(SamplerSettings(steps=2))
    with pytest.raises(ValueError, match="cond batch"):
        sampler.sample(RecordingModel(), torch.zeros(3, 8, 4, 4, 4), torch.zeros(2, 1, 16))
    with pytest.raises(ValueError, match="neg_cond shape"):
        sampler.sample(RecordingModel(), torch.zeros(3, 8, 4, 4, 4), torch.zeros(3, 1, 16), torch.zeros(3, 2, 16))
    with pytest.raises(ValueError):
        SamplerSettings(steps=0)
