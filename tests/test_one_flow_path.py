"""One flow path for sampling and training: one CFG implementation, one sigma_min setting."""

from __future__ import annotations

import pytest
import torch

from dso.config import ObjectiveSettings, SamplerSettings, Settings
from dso.learner import flow_matching as fm
from dso.models import sampler as sampler_module
from dso.models.sampler import FlowEulerSampler, Guidance


def _model(x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + timestep.view(-1, 1, 1, 1, 1) / 1000.0


@pytest.mark.parametrize("t", [0.9, 0.3])
@pytest.mark.parametrize("batched", [True, False])
def test_the_trainer_scores_the_velocity_the_sampler_follows(t: float, batched: bool) -> None:
    settings = SamplerSettings(cfg_strength=3.0, cfg_interval=(0.5, 1.0), cfg_batched=batched)
    x = torch.randn(2, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    cond = torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(1))
    sampled = FlowEulerSampler(settings).velocity(_model, x, t, cond, torch.zeros_like(cond))
    trained = Guidance.from_settings(settings).wrap(_model)(x, torch.full((2,), t * fm.TIMESTEP_SCALE), cond)
    torch.testing.assert_close(sampled, trained)


def test_one_guidance_class_and_timestep_scale() -> None:
    assert fm.Guidance is sampler_module.Guidance
    assert fm.TIMESTEP_SCALE == sampler_module.TIMESTEP_SCALE


def test_sigma_min_is_the_samplers_and_the_trainer_reads_a_copy() -> None:
    settings = Settings.model_validate({"sampler": {"sigma_min": 1e-4}})
    assert settings.objective.sigma_min == 1e-4
    assert "sigma_min" not in settings.model_dump()["objective"]  # not a setting of its own
    assert Settings.model_validate(settings.model_dump()).objective.sigma_min == 1e-4
    assert ObjectiveSettings().sigma_min == SamplerSettings().sigma_min


def test_a_differing_objective_sigma_min_is_refused() -> None:
    with pytest.raises(ValueError, match="sampler.sigma_min"):
        Settings.model_validate({"objective": {"sigma_min": 1e-3}})
