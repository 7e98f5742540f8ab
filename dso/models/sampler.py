"""Euler sampler for TRELLIS's rectified flow, with classifier-free guidance in an interval.

Flow path (TRELLIS): ``x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps``; the model
predicts the velocity ``v = (1 - sigma_min) eps - x0`` and is called as
``model(x_t, t * 1000, cond)``. Sampling integrates from t = 1 (noise) to t = 0 on a grid
warped by ``t' = r t / (1 + (r - 1) t)`` (``rescale_t`` = r > 1 spends more steps near
t = 1). Inside ``cfg_interval`` the velocity is ``(1 + w) v_cond - w v_uncond`` with the
unconditional branch fed ``neg_cond`` (zeros like ``cond`` unless given).

Classifier-free guidance has one implementation, here: :class:`Guidance` (strength and
interval, from ``SamplerSettings``) and :func:`guided_velocity`. The sampler calls it per
Euler step; the fine-tuner scores the same guided velocity through ``Guidance.wrap``
(``dso.learner.flow_matching`` re-exports it), so what is trained is what is sampled.
The flow path's ``sigma_min`` is one setting too, ``sampler.sigma_min`` (read from and
written to a model's pipeline.json); the trainer gets it through ``objective.sigma_min``,
which ``dso.config.Settings`` fills from it.

Randomness lives only in the initial noise: draw it with :func:`draw_noise` and a seeded
``torch.Generator``; the sampler itself is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm import tqdm

from dso.config import SamplerSettings

TIMESTEP_SCALE = 1000.0  # the model sees t * 1000


class VelocityModel(Protocol):
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor: ...


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """Point on the flow path at time ``t`` (``[B]`` in [0, 1]) between data ``x0`` and ``noise``."""
    t = t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + (sigma_min + (1 - sigma_min) * t) * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """Velocity the model is trained to predict: ``d x_t / d t = (1 - sigma_min) eps - x0``."""
    return (1 - sigma_min) * noise - x0


def guided_velocity(
    model: VelocityModel,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    cond: torch.Tensor,
    neg_cond: torch.Tensor,
    weight: float | torch.Tensor,
    batched: bool = True,
) -> torch.Tensor:
    """CFG: ``v_cond + w (v_cond - v_uncond)`` (= ``(1 + w) v_cond - w v_uncond``), the unconditional branch fed ``neg_cond``.

    ``timestep`` is what the model sees (``t * TIMESTEP_SCALE``, ``[B]``); ``weight`` is ``w``:
    one number, or one per sample (``[B]``, 0 where guidance is off). ``batched``: one forward
    for both branches (faster, twice the activations) instead of two.
    """
    if batched:
        both = model(torch.cat([x_t, x_t]), torch.cat([timestep, timestep]), torch.cat([cond, neg_cond]))
        v_cond, v_uncond = both.chunk(2)
    else:
        v_cond = model(x_t, timestep, cond)
        v_uncond = model(x_t, timestep, neg_cond)
    if isinstance(weight, torch.Tensor):
        weight = weight.to(v_cond.dtype).view(-1, *([1] * (v_cond.dim() - 1)))
    return v_cond + weight * (v_cond - v_uncond)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance of strength ``w`` inside ``interval`` of t (both ends included, as in TRELLIS).

    The sampler applies it at every Euler step; the fine-tuner scores the velocity samples actually
    follow with :meth:`wrap`. Fine-tuning the conditional branch alone on guided samples pulls it toward
    the already-guided outputs, and sampling then extrapolates a second time; scoring the guided
    velocity trains what is sampled.
    """

    strength: float
    interval: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_settings(cls, settings: SamplerSettings) -> Guidance:
        return cls(float(settings.cfg_strength), (float(settings.cfg_interval[0]), float(settings.cfg_interval[1])))

    def active(self, t: float) -> bool:
        """Whether guidance applies at time ``t`` in [0, 1]."""
        lo, hi = self.interval
        return self.strength > 0 and lo <= t <= hi

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w`` per sample of ``t`` (``[B]`` in [0, 1]): the strength inside the interval, 0 outside."""
        lo, hi = self.interval
        return self.strength * ((t >= lo) & (t <= hi)).float()

    def wrap(self, model: VelocityModel) -> VelocityModel:
        """A velocity model returning the guided velocity (one batched call for both branches, zeros as neg_cond)."""

        def guided(x_t: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            weight = self.weight(timestep.float() / TIMESTEP_SCALE)
            return guided_velocity(model, x_t, timestep, cond, torch.zeros_like(cond), weight)

        return guided


def rescaled_timesteps(steps: int, rescale_t: float) -> list[float]:
    """The ``steps + 1`` times from 1 to 0: uniform grid warped by ``r t / (1 + (r - 1) t)``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rescale_t <= 0:
        raise ValueError(f"rescale_t must be > 0, got {rescale_t}")
    grid = [1.0 - i / steps for i in range(steps + 1)]
    return [rescale_t * t / (1 + (rescale_t - 1) * t) for t in grid]


def draw_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard-normal starting noise; pass a seeded generator for reproducible samples.

    The generator's device decides where the numbers are drawn (so a CPU generator gives the
    same noise whatever ``device`` is); the result is then moved to ``device``.
    """
    gen_device = generator.device if generator is not None else device
    noise = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
    return noise.to(device) if device is not None else noise


class FlowEulerSampler:
    """Euler integration of a flow model from noise to a clean latent (TRELLIS ``FlowEulerGuidanceIntervalSampler``)."""

    def __init__(self, settings: SamplerSettings | None = None) -> None:
        self.settings = settings or SamplerSettings()
        lo, hi = self.settings.cfg_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {self.settings.cfg_interval}")
        self.guidance = Guidance.from_settings(self.settings)

    def timesteps(self) -> list[float]:
        """The time grid, from 1 to 0, ``steps + 1`` entries."""
        return rescaled_timesteps(self.settings.steps, self.settings.rescale_t)

    def guidance_active(self, t: float) -> bool:
        """Whether CFG applies at time ``t`` (both interval ends included, as in TRELLIS)."""
        return self.guidance.active(t)

    @staticmethod
    def _timestep(x_t: torch.Tensor, t: float) -> torch.Tensor:
        return torch.full((x_t.shape[0],), t * TIMESTEP_SCALE, device=x_t.device, dtype=torch.float32)

    def velocity(
        self, model: VelocityModel, x_t: torch.Tensor, t: float, cond: torch.Tensor, neg_cond: torch.Tensor
    ) -> torch.Tensor:
        """Guided velocity at time ``t``: CFG inside the interval, plain conditional outside."""
        timestep = self._timestep(x_t, t)
        if not self.guidance_active(t):
            return model(x_t, timestep, cond)
        return guided_velocity(
            model, x_t, timestep, cond, neg_cond, self.guidance.strength, batched=self.settings.cfg_batched
        )

    @torch.no_grad()
    def sample(
        self,
        model: VelocityModel,
        noise: torch.Tensor,
        cond: torch.Tensor,
        neg_cond: torch.Tensor | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Integrate from ``noise`` (t = 1) to a clean latent x0 (t = 0).

        ``cond`` is ``[B, L, C]`` or ``[1, L, C]`` (repeated over the batch); ``neg_cond``
        defaults to zeros like ``cond``. Returns x0 with the shape and dtype of ``noise``.
        """
        batch = noise.shape[0]
        if cond.shape[0] not in (1, batch):
            raise ValueError(f"cond batch {cond.shape[0]} does not match noise batch {batch}")
        if cond.shape[0] == 1 and batch > 1:
            cond = cond.expand(batch, *cond.shape[1:])
        if neg_cond is None:
            neg_cond = torch.zeros_like(cond)
        elif neg_cond.shape[0] == 1 and batch > 1:
            neg_cond = neg_cond.expand(batch, *neg_cond.shape[1:])
        if neg_cond.shape != cond.shape:
            raise ValueError(f"neg_cond shape {list(neg_cond.shape)} differs from cond shape {list(cond.shape)}")

        times = self.timesteps()
        x = noise
        for t, t_prev in tqdm(list(zip(times[:-1], times[1:])), desc="sampling", disable=not progress):
            v = self.velocity(model, x, t, cond, neg_cond)
            x = x - (t - t_prev) * v.to(x.dtype)
        return x
