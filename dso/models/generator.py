"""The generator facade: prompt images -> latent x0 + occupancy grid + surface mesh.

Keeps model, sampler and conditioner apart (diffusers-style) and only wires
them: encode the images once, draw one noise tensor per sample from its own
seed (so any single sample can be regenerated from its record), integrate the
flow, decode, threshold the logits at 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from dso.config import Settings
from dso.models.conditioning import ImageConditioner, TinyConditioner, build_conditioner
from dso.models.contract import GeneratedShape, generate_shapes
from dso.models.factory import StageOneModules, load_stage_one, resolve_device
from dso.models.sampler import FlowEulerSampler


class Generator:
    """Image-conditioned stage-1 generator; ``flow`` may be a PEFT-wrapped model.

    Satisfies the generator contract (``dso.models.contract.ShapeGenerator``): the roles,
    the learner and evaluation use only its members, never ``modules``.
    """

    def __init__(self, modules: StageOneModules, conditioner: ImageConditioner, sampler: FlowEulerSampler, device: torch.device):
        self.modules = modules
        self.flow = modules.flow
        self.decoder = modules.decoder
        self.conditioner = conditioner
        self.sampler = sampler
        self.device = device

    @classmethod
    def from_settings(cls, settings: Settings) -> "Generator":
        modules = load_stage_one(settings.model)
        device = resolve_device(settings.model.device)
        if settings.model.conditioner.kind == "tiny":
            conditioner: ImageConditioner = TinyConditioner(modules.image_encoder, settings.model.conditioner)
        else:
            conditioner = build_conditioner(settings.model.conditioner, device=device, dtype=torch.float32)
        # sampler settings from the model folder, overridden by explicit config values
        sampler_settings = modules.sampler.model_copy(update=settings.sampler.model_dump(exclude_unset=True))
        return cls(modules, conditioner, FlowEulerSampler(sampler_settings), device)

    def use_adapter(self, directory) -> None:
        """Apply a PEFT adapter directory (our files or anyone's in PEFT's format) to the flow model."""
        from peft import PeftModel

        from dso.models.lora import AdapterFormatError

        if not (Path(directory) / "adapter_config.json").is_file():
            raise AdapterFormatError(f"{directory} is not a PEFT adapter directory (no adapter_config.json)")
        self.flow = PeftModel.from_pretrained(self.modules.flow, str(directory)).eval()

    @property
    def trainable_module(self) -> torch.nn.Module:
        """The base flow model (never adapter-wrapped): LoRA attaches to it, the learner fine-tunes it."""
        return self.modules.flow

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """One x0: (C, R, R, R), the stage-1 sparse-structure latent."""
        r = self.modules.flow.resolution
        return (self.modules.flow.in_channels, r, r, r)

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.conditioner.encode(list(images)).to(self.device)

    def noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """One noise tensor per seed, drawn on the CPU so samples reproduce across devices."""
        out = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(out).to(self.device)

    @torch.no_grad()
    def sample_latents(self, cond: torch.Tensor, seeds: Sequence[int], progress: bool = False) -> torch.Tensor:
        """Integrate the flow for ``len(seeds)`` samples; ``cond`` is [B, L, D] with B = len(seeds) or 1."""
        return self.sampler.sample(self.flow, self.noise(seeds), cond, progress=progress)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        logits = self.decoder(latents)
        return (logits[:, 0] > 0).cpu().numpy()

    def generate(
        self, images: Sequence[Image.Image], samples_per_image: int = 1, seed: int = 0, progress: bool = False
    ) -> list[GeneratedShape]:
        """``samples_per_image`` shapes for each image; sample j of image i uses seed ``seed + i * K + j``."""
        return generate_shapes(self, images, samples_per_image, seed, progress)
