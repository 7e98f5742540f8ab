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

A generator that emits meshes (a stage-2 decoder, another image-to-3D model) adds one method,
``decode_meshes(latents) -> list[trimesh.Trimesh]`` (``MeshDecoder``; z up, the unit cube's scale):
``generate_shapes`` then calls it instead of ``decode``, each ``GeneratedShape`` carries its
``emitted_mesh`` (no grid), and the loop's records and the oracle judge that mesh.

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


@runtime_checkable
class MeshDecoder(Protocol):
    """A generator whose output is a mesh, not a grid: what ``generate_shapes`` calls instead of ``decode``."""

    def decode_meshes(self, latents: torch.Tensor) -> list[trimesh.Trimesh]:
        """One triangle mesh per latent, z up, in the unit cube's scale (what the oracle judges)."""
        ...


@dataclass
class GeneratedShape:
    """One sample: everything the oracle, the replay buffer and the learner need (a grid, a mesh, or both)."""

    latent: torch.Tensor  # x0 (latent_shape), on the CPU
    occupancy: np.ndarray | None  # bool (N, N, N), z-up; None when the generator emits meshes
    seed: int
    image_index: int
    emitted_mesh: trimesh.Trimesh | None = None  # the generator's own mesh (MeshDecoder); the oracle judges it
    _mesh: trimesh.Trimesh | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.occupancy is None and self.emitted_mesh is None:
            raise ValueError("a generated shape needs an occupancy grid or an emitted mesh")

    @property
    def mesh(self) -> trimesh.Trimesh:
        """The generator's mesh when it made one, else marching cubes of the grid."""
        if self.emitted_mesh is not None:
            return self.emitted_mesh
        if self._mesh is None:
            self._mesh = occupancy_to_mesh(self.occupancy)
        return self._mesh


@torch.no_grad()
def generate_shapes(
    sampler: ShapeSampler, images: Sequence[Image.Image], samples_per_image: int = 1, seed: int = 0, progress: bool = False
) -> list[GeneratedShape]:
    """``samples_per_image`` shapes for each image; sample j of image i uses seed ``seed + i * K + j``.

    A ``MeshDecoder`` gives meshes (``emitted_mesh``, no grid); any other sampler gives occupancy grids.
    """
    k = samples_per_image
    cond = sampler.encode(images).repeat_interleave(k, dim=0)
    seeds = [seed + i for i in range(len(images) * k)]
    latents = sampler.sample_latents(cond, seeds, progress=True) if progress else sampler.sample_latents(cond, seeds)
    if isinstance(sampler, MeshDecoder):
        meshes = list(sampler.decode_meshes(latents))
        if len(meshes) != len(seeds):
            raise ValueError(f"decode_meshes returned {len(meshes)} meshes for {len(seeds)} latents")
        latents = latents.float().cpu()
        return [GeneratedShape(latents[n], None, seeds[n], n // k, emitted_mesh=meshes[n]) for n in range(len(seeds))]
    occupancy = sampler.decode(latents)
    latents = latents.float().cpu()
    return [GeneratedShape(latents[n], occupancy[n], seeds[n], n // k) for n in range(len(seeds))]
