"""The generator contract (dso.models.contract): the tiny generator satisfies it, and code written against it
(generate_shapes, held-out evaluation, the broker's records) runs any sampler, whatever its latent layout."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from dso.broker.records import SampleRecord
from dso.config import EvalSettings, load_settings
from dso.evaluate.stability import generate_heldout
from dso.models.contract import ShapeGenerator, ShapeSampler, generate_shapes
from dso.models.generator import Generator
from dso.models.lora import attach_lora
from dso.shapes.prompts import heldout_prompts
from test_loop_support import export_random_tiny_model


def _image(size: int = 64) -> Image.Image:
    img = np.zeros((size, size, 4), np.uint8)
    img[10:50, 20:40] = (200, 80, 40, 255)
    return Image.fromarray(img, "RGBA")


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Generator:
    folder = export_random_tiny_model(tmp_path_factory.mktemp("contract-model"))
    settings = load_settings("tiny", environ={"DSO__MODEL__WEIGHTS_PATH": str(folder)})
    settings.sampler.steps = 2
    return Generator.from_settings(settings)


def test_the_generator_satisfies_the_contract(generator):
    assert isinstance(generator, ShapeGenerator) and isinstance(generator, ShapeSampler)
    cond = generator.encode([_image()])
    latents = generator.sample_latents(cond, [3, 4])
    assert tuple(latents.shape) == (2, *generator.latent_shape), "latent_shape is what sample_latents makes"
    grids = generator.decode(latents)
    assert grids.dtype == bool and grids.ndim == 4 and grids.shape[0] == 2


def test_the_trainable_module_stays_the_base_while_the_policy_is_sampled(generator, tmp_path):
    lora = load_settings("tiny", environ={}).lora
    base = generator.trainable_module
    assert base is generator.modules.flow
    before = generator.sample_latents(generator.encode([_image()]), [5])
    policy = attach_lora(generator.trainable_module, lora).eval()  # what the generator worker and the canary do
    generator.flow = policy
    try:
        assert generator.trainable_module is base, "never the adapter-wrapped module"
        after = generator.sample_latents(generator.encode([_image()]), [5])
        assert torch.allclose(before, after, atol=1e-5), "a fresh LoRA (B = 0) leaves the samples unchanged"
    finally:
        policy.unload()  # the module-scoped generator goes back to the plain base
        generator.flow = generator.trainable_module
    shapes = generate_shapes(generator, [_image(), _image(48)], samples_per_image=2, seed=9)
    assert [s.seed for s in shapes] == [9, 10, 11, 12] and [s.image_index for s in shapes] == [0, 0, 1, 1]
    assert torch.allclose(shapes[3].latent, generator.generate([_image(48)], seed=12)[0].latent, atol=1e-4), "one seed, one sample"


class TokenSampler:
    """Not a TRELLIS model: a sequence latent [L, C] decoded into a column whose height is set by the seed."""

    side = 8

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.ones(len(images), 1, 4)

    def sample_latents(self, cond: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.full((5, 3), float(s % 7 + 1)) for s in seeds])

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        grids = np.zeros((len(latents), self.side, self.side, self.side), bool)
        for i, z in enumerate(latents):
            grids[i, 2:6, 2:6, : int(z[0, 0])] = True
        return grids


def test_code_written_against_the_contract_runs_another_generator():
    sampler = TokenSampler()
    assert isinstance(sampler, ShapeSampler) and not isinstance(sampler, ShapeGenerator)
    shapes = generate_shapes(sampler, [_image()], samples_per_image=3, seed=1)
    assert [int(s.occupancy.sum()) for s in shapes] == [16 * 2, 16 * 3, 16 * 4]
    record = SampleRecord(
        prompt_id="p", view=0, adapter_version=0, seed=shapes[0].seed, latent=shapes[0].latent.numpy(), occupancy=shapes[0].occupancy
    )
    assert SampleRecord.from_bytes(record.to_bytes()).latent.shape == (5, 3), "the broker keeps the sampler's latent shape"
    settings = EvalSettings(samples_per_prompt=2, batch_prompts=2)
    prompts = heldout_prompts(load_settings("tiny", environ={}).shapes)[:3]
    held = generate_heldout(sampler, prompts, settings)
    assert held.occupancy.shape == (6, 8, 8, 8) and list(held.prompt_index) == [0, 0, 1, 1, 2, 2]
