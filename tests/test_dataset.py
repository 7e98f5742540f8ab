"""Offline dataset: builder + oracle labels + shards + index, resume, and the in-memory reader."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dso.config import DatasetSettings, load_settings
from dso.learner.dataset import INDEX_FILE, DatasetMismatchError, OfflineDataset, build_dataset, plan_prompts
from dso.models.factory import build_tiny_modules, export_tiny_folder
from dso.models.generator import Generator

GRID = 32


def stable_block() -> np.ndarray:
    occ = np.zeros((GRID,) * 3, bool)
    occ[8:24, 8:24, 0:16] = True
    return occ


def toppling_shape() -> np.ndarray:
    """A thin post with a heavy slab hanging far off to one side: falls over."""
    occ = np.zeros((GRID,) * 3, bool)
    occ[4:7, 14:17, 0:22] = True
    occ[4:30, 10:22, 22:28] = True
    return occ


class KnownShapesSource:
    """A sample source with known outcomes: even seeds decode to a block (stable), odd to a toppling shape.

    Condition tokens are a fixed function of the image pixels, latents are seeded noise,
    so the builder's bookkeeping (seeds, rows, cond per prompt, labels) can be checked exactly.
    """

    def __init__(self):
        self.encoded_images = 0
        self._seeds: list[int] = []

    def encode(self, images):
        self.encoded_images += len(images)
        px = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)[::16, ::16, :3].copy()).flatten() for im in images])
        return px.reshape(len(images), -1, 8) / 255.0  # [P, L, 8]

    def sample_latents(self, cond, seeds):
        self._seeds = list(seeds)
        return torch.stack([torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def decode(self, latents):
        return np.stack([stable_block() if s % 2 == 0 else toppling_shape() for s in self._seeds])


def small_settings(**kw) -> DatasetSettings:
    base = dict(objects=3, views_per_object=2, samples_per_prompt=2, chunk_prompts=4, sim_workers=1)
    base.update(kw)
    return DatasetSettings(**base)


@pytest.fixture(scope="module")
def settings():
    return load_settings("tiny", environ={})


def test_prompt_plan_uses_training_seeds_only(settings):
    refs = plan_prompts(small_settings())
    assert len(refs) == 6 and [r.index for r in refs] == list(range(6))
    assert all(r.object_seed < settings.shapes.training_seed_limit for r in refs)
    assert len({r.view_seed for r in refs}) == 6, "every prompt has its own view"
    assert {r.object_seed for r in refs} == {100_000, 100_001, 100_002}


def test_build_labels_with_the_oracle_and_caches_cond_per_prompt(tmp_path, settings):
    ds_settings = small_settings()
    source = KnownShapesSource()
    index = build_dataset(source, tmp_path, ds_settings, settings.shapes, settings.sim, adapter_version=3, model_id="known")
    assert index["complete"] and len(index["chunks"]) == 2  # 6 prompts, 4 per chunk
    assert source.encoded_images == 6
    ds = OfflineDataset.load(tmp_path)
    assert len(ds) == 12 and ds.cond.shape[0] == 6, "condition tokens stored once per prompt"
    assert list(ds.seed) == list(range(12))
    # the oracle's labels follow the known shapes
    assert list(ds.stable) == [s % 2 == 0 for s in ds.seed]
    assert np.all(ds.tilt_deg[ds.stable] < 20) and np.all(ds.tilt_deg[~ds.stable] >= 20)
    assert set(ds.adapter_version) == {3}
    # sample rows point at their own prompt's tokens
    assert list(ds.prompt_row) == [p for p in range(6) for _ in range(2)]
    assert np.array_equal(ds.occupancy(0), stable_block()) and np.array_equal(ds.occupancy(1), toppling_shape())
    assert ds.summary()["pair_prompts"] == 6
    assert json.loads((tmp_path / INDEX_FILE).read_text())["spec"]["adapter_version"] == 3


def test_interrupted_build_resumes_to_the_same_dataset(tmp_path, settings):
    ds_settings = small_settings()
    straight = tmp_path / "straight"
    build_dataset(KnownShapesSource(), straight, ds_settings, settings.shapes, settings.sim)

    resumed = tmp_path / "resumed"

    class Interrupt(Exception):
        pass

    def stop_after_first(done, total, entry):
        raise Interrupt

    with pytest.raises(Interrupt):
        build_dataset(KnownShapesSource(), resumed, ds_settings, settings.shapes, settings.sim, on_chunk=stop_after_first)
    assert len(json.loads((resumed / INDEX_FILE).read_text())["chunks"]) == 1
    source = KnownShapesSource()
    build_dataset(source, resumed, ds_settings, settings.shapes, settings.sim)
    assert source.encoded_images == 2, "only the missing chunk's prompts are generated again"
    a, b = OfflineDataset.load(straight), OfflineDataset.load(resumed)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.cond, b.cond)
    assert np.array_equal(a.stable, b.stable) and a.prompt_ids == b.prompt_ids


def test_resume_refuses_another_spec(tmp_path, settings):
    build_dataset(KnownShapesSource(), tmp_path, small_settings(), settings.shapes, settings.sim)
    with pytest.raises(DatasetMismatchError, match="samples_per_prompt"):
        build_dataset(KnownShapesSource(), tmp_path, small_settings(samples_per_prompt=3), settings.shapes, settings.sim)


def test_loading_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dso dataset build"):
        OfflineDataset.load(tmp_path)


def test_build_with_the_real_generator(tmp_path, settings):
    """End to end on a random tiny model: real conditioner, sampler, decoder and oracle."""
    torch.manual_seed(0)
    modules = build_tiny_modules(settings.model, settings.sampler)
    folder = export_tiny_folder(modules, settings, tmp_path / "model")
    gen_settings = load_settings("tiny", environ={"DSO__MODEL__WEIGHTS_PATH": str(folder), "DSO__SAMPLER__STEPS": "2"})
    gen = Generator.from_settings(gen_settings)
    ds_settings = small_settings(objects=1, views_per_object=2, samples_per_prompt=2)
    build_dataset(gen, tmp_path / "ds", ds_settings, settings.shapes, settings.sim)
    ds = OfflineDataset.load(tmp_path / "ds")
    assert ds.x0.shape == (4, 8, 8, 8, 8) and ds.cond.shape == (2, 64, 128)
    assert ds.resolution == 32 and ds.occupancy(0).shape == (32, 32, 32)
    assert set(ds.status) <= {"ok", "invalid_input"}
    # latent of sample k reproduces from its seed with the same generator
    cond = gen.encode([Image.fromarray(_prompt_image(settings, ds_settings, 1), "RGBA")])
    again = gen.sample_latents(cond, [int(ds.seed[3])])
    assert torch.allclose(again[0], ds.x0[3], atol=1e-5)


def _prompt_image(settings, ds_settings, index):
    from dso.shapes.prompts import training_prompt

    ref = plan_prompts(ds_settings)[index]
    return training_prompt(ref.object_seed, ref.view_seed, settings.shapes).image


def test_dso_dataset_build_cli(tmp_path, settings):
    from typer.testing import CliRunner

    from dso.cli import app

    torch.manual_seed(0)
    folder = export_tiny_folder(build_tiny_modules(settings.model, settings.sampler), settings, tmp_path / "model")
    env = {"DSO__MODEL__WEIGHTS_PATH": str(folder), "DSO__SAMPLER__STEPS": "2", "DSO__DATASET__CHUNK_PROMPTS": "1"}
    args = ["dataset", "build", "--out", str(tmp_path / "ds"), "--objects", "1", "--views", "2", "-k", "2", "--workers", "1", "--adapter-version", "5"]
    result = CliRunner(env=env).invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "'samples': 4" in result.output
    index = json.loads((tmp_path / "ds" / INDEX_FILE).read_text())
    assert index["complete"] and len(index["chunks"]) == 2 and index["spec"]["adapter_version"] == 5
    again = CliRunner(env=env).invoke(app, args)  # a finished dataset: nothing is generated again
    assert again.exit_code == 0 and json.loads((tmp_path / "ds" / INDEX_FILE).read_text())["chunks"] == index["chunks"]
