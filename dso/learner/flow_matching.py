"""Rectified-flow pieces shared by pretraining and every fine-tuning objective.

TRELLIS's path: x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps, velocity
target v = (1 - sigma_min) eps - x0, the network sees the timestep as t * 1000,
and t is drawn logit-normal (mean 1, std 1 in the paper's code: most mass at
noisy t, where coarse geometry — and so stability — is decided).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dso.models.sampler import noisy_latent, velocity_target

VelocityModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TIMESTEP_SCALE = 1000.0


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


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance as the sampler applies it, for scoring the velocity samples actually follow.

    Samples are drawn with ``(1 + w) v_cond - w v_uncond`` (inside ``interval`` of t). Fine-tuning the
    conditional branch alone on such samples pulls it toward the already-guided outputs, and sampling
    then extrapolates a second time; scoring the guided velocity trains what is sampled.
    """

    strength: float
    interval: tuple[float, float] = (0.0, 1.0)

    def wrap(self, model: VelocityModel) -> VelocityModel:
        """A velocity model returning the guided velocity: one batched call for both branches."""

        def guided(x_t: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            both = model(torch.cat([x_t, x_t]), torch.cat([timestep, timestep]), torch.cat([cond, torch.zeros_like(cond)]))
            v_cond, v_uncond = both.chunk(2)
            t = timestep.float() / TIMESTEP_SCALE
            lo, hi = self.interval
            w = self.strength * ((t >= lo) & (t <= hi)).to(v_cond.dtype)
            return v_cond + w.view(-1, *([1] * (v_cond.dim() - 1))) * (v_cond - v_uncond)

        return guided
