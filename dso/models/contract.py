"""The generator contract: what the loop's roles, the learner and evaluation need from an image-to-3D generator.

    generator = Generator.from_settings(settings)           # dso.models.generator.Generator satisfies it
    cond = generator.encode(images)                         # prompt images -> condition tokens [B, L, D]
    x0 = generator.sample_latents(cond, seeds)              # one latent per seed, shape [B, *latent_shape]
    grids = generator.decode(x0)                            # -> bool occupancy grids [B, N, N, N] (z up)
    policy = attach_lora(generator.trainable_module, lora)  # the base velocity model a LoRA wraps and the learner trains
    generator.flow = policy                                 # the module ``sample_latents`` integrates from now on
    generator.use_adapter("adapters/v3")                    # or: load a PEFT adapter directory onto the base
    shapes = generate_shapes(generator, images, samples_per_image=4, seed=0)  # the three steps, one record each

Two levels: ``ShapeSampler`` is all evaluation and the offline dataset builder use
(encode, sample, decode; ``generate_shapes`` chains them); ``ShapeGenerator`` adds what the roles need to train and
hot-swap the policy (the trainable module, the live flow, adapters, the latent shape).
The broker stores latents of any shape (the record header carries it), so a generator
with another latent layout fits without a change outside ``dso/models``; the oracle
reads the occupancy grids.

To add a generator: write a class with these members and a ``from_settings(settings)``
constructor; the roles take one as their ``generator=`` argument and otherwise build
``Generator.from_settings`` (docs/architecture.md, "Adding a generator").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import trimesh
from PIL import Image

from dso.models.mesh import occupancy_to_mesh


@runtime_checkable
class ShapeSampler(Protocol):
    """Prompt images -> condition -> latents -> occupancy grids (evaluation, the canary's probe, offline datasets)."""

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Condition tokens for each image, [B, L, D] on the generator's device (no gradients)."""
        ...

    def sample_latents(self, cond: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """One latent x0 per seed ([len(seeds), *latent_shape]); ``cond`` has len(seeds) rows or 1.

        The same seed and condition give the same latent: a sample can be regenerated from its record.
        """
        ...

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Bool occupancy grids [B, N, N, N], z up: what the oracle judges."""
        ...


@runtime_checkable
class ShapeGenerator(ShapeSampler, Protocol):
    """A generator the loop can run, train and hot-swap (generator worker, learner, canary)."""

    device: torch.device
    flow: torch.nn.Module  # the module sample_latents integrates: the base, or the base wrapped with a LoRA policy

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one latent x0 (TRELLIS stage 1: (C, R, R, R)); records and the learner's batches follow it."""
        ...

    @property
    def trainable_module(self) -> torch.nn.Module:
        """The base velocity model (never adapter-wrapped): LoRA attaches to it, the learner fine-tunes it.

        It is called as ``module(x_t, t * 1000, cond) -> v`` (rectified flow: x_t = (1 - t) x0 + t eps,
        v = eps - x0, ``x_t`` of ``[B, *latent_shape]``), which is all the learner's objectives assume;
        the generator worker's hot-swap probe also reads its ``resolution``, ``in_channels`` and
        ``cond_channels`` (``dso.models.lora.flow_model_probe``).
        """
        ...

    def use_adapter(self, directory: str | Path) -> None:
        """Load a PEFT adapter directory onto the base model and sample from it."""
        ...


@dataclass
class GeneratedShape:
    """One sample: everything the oracle, the replay buffer and the learner need."""

    latent: torch.Tensor  # x0 (latent_shape), on the CPU
    occupancy: np.ndarray  # bool (N, N, N), z-up
    seed: int
    image_index: int
    _mesh: trimesh.Trimesh | None = field(default=None, repr=False)

    @property
    def mesh(self) -> trimesh.Trimesh:
        if self._mesh is None:
            self._mesh = occupancy_to_mesh(self.occupancy)
        return self._mesh


@torch.no_grad()
def generate_shapes(
    sampler: ShapeSampler, images: Sequence[Image.Image], samples_per_image: int = 1, seed: int = 0, progress: bool = False
) -> list[GeneratedShape]:
    """``samples_per_image`` shapes for each image; sample j of image i uses seed ``seed + i * K + j``."""
    k = samples_per_image
    cond = sampler.encode(images).repeat_interleave(k, dim=0)
    seeds = [seed + i for i in range(len(images) * k)]
    latents = sampler.sample_latents(cond, seeds, progress=True) if progress else sampler.sample_latents(cond, seeds)
    occupancy = sampler.decode(latents)
    latents = latents.float().cpu()
    return [GeneratedShape(latents[n], occupancy[n], seeds[n], n // k) for n in range(len(seeds))]
