"""Rectified-flow pieces shared by pretraining and every fine-tuning objective.

TRELLIS's path: x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps, velocity
target v = (1 - sigma_min) eps - x0, the network sees the timestep as t * 1000,
and t is drawn logit-normal (mean 1, std 1 in the paper's code: most mass at
noisy t, where coarse geometry — and so stability — is decided).

Classifier-free guidance (``Guidance``) and the path itself (``noisy_latent``,
``velocity_target``) are the sampler's (``dso.models.sampler``), re-exported here: the
trainer scores exactly the velocity the sampler follows.
"""

from __future__ import annotations

from typing import Callable

import torch

# one flow path, one timestep scale and one CFG implementation, shared with the sampler
from dso.models.sampler import TIMESTEP_SCALE, Guidance, noisy_latent, velocity_target

VelocityModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["TIMESTEP_SCALE", "Guidance", "VelocityModel", "noisy_latent", "per_sample_error", "sample_t", "velocity_target"]


def sample_t(batch: int, mean: float, std: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Logit-normal timesteps in (0, 1)."""
    z = torch.randn(batch, generator=generator, device=device) * std + mean
    return torch.sigmoid(z)


def per_sample_error(
    model: VelocityModel,
    x0: torch.Tensor,
    cond: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    sigma_min: float,
) -> torch.Tensor:
    """Velocity MSE per sample, [B]: the quantity every objective compares."""
    x_t = noisy_latent(x0, noise, t, sigma_min)
    pred = model(x_t, t * TIMESTEP_SCALE, cond)
    err = (pred.float() - velocity_target(x0, noise, sigma_min).float()) ** 2
    return err.flatten(1).mean(dim=1)
