"""Pretraining the embedded default: the loss falls, checkpoints resume exactly, the export loads."""

import numpy as np
import pytest
import torch

from dso.config import load_settings
from dso.learner.pretrain import Pretrainer, build_dataset


def _settings(tmp_path, **pretrain):
    s = load_settings("tiny", environ={})
    p = s.pretrain
    p.output_dir = tmp_path / "run"
    p.export_dir = tmp_path / "export"
    p.num_objects = 6
    p.views_per_object = 2
    p.workers = 1
    p.drop_unstable = True
    p.vae_batch = 2
    p.flow_batch = 4
    p.warmup_steps = 1000  # keep the lr schedule independent of the total step count
    p.vae_lr = 3e-3
    p.flow_lr = 3e-3
    p.checkpoint_every = 2
    for k, v in pretrain.items():
        setattr(p, k, v)
    return s


@pytest.fixture(scope="module")
def dataset_settings(tmp_path_factory):
    s = _settings(tmp_path_factory.mktemp("pt"))
    data = build_dataset(s, progress=False)
    return s, data


def test_dataset_is_built_once_and_cached(dataset_settings):
    s, data = dataset_settings
    assert data.occupancy.shape[1:] == (32, 32, 32)
    assert data.images.shape[1:] == (4, 64, 64)
    assert len(data.images) == 2 * len(data.occupancy)
    assert set(data.image_object.tolist()) == set(range(len(data.occupancy)))
    again = build_dataset(s, progress=False)
    assert np.array_equal(again.occupancy, data.occupancy)


def test_vae_and_flow_losses_fall(dataset_settings):
    s, data = dataset_settings
    s = s.model_copy(deep=True)
    s.pretrain.vae_steps = 24
    s.pretrain.flow_steps = 24
    s.pretrain.output_dir = s.pretrain.output_dir / "fall"
    s.pretrain.output_dir.mkdir(parents=True)
    (s.pretrain.output_dir / "dataset.npz").symlink_to(dataset_settings[0].pretrain.output_dir / "dataset.npz")
    pt = Pretrainer(s, progress=False)
    vae = pt.train_vae(data)
    flow = pt.train_flow(data, pt.encode_latents(data))
    assert np.mean(vae[-4:]) < np.mean(vae[:4])
    assert np.mean(flow[-6:]) < np.mean(flow[:6])


def test_vae_resumes_bit_exactly(dataset_settings, tmp_path):
    base, data = dataset_settings

    def run(steps, out):
        s = base.model_copy(deep=True)
        s.pretrain.vae_steps = steps
        s.pretrain.output_dir = out
        pt = Pretrainer(s, progress=False)
        pt.train_vae(data)
        return pt

    straight = run(6, tmp_path / "a")
    run(3, tmp_path / "b")
    resumed = run(6, tmp_path / "b")
    a, b = straight.modules.encoder.state_dict(), resumed.modules.encoder.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_exports_a_loadable_model(dataset_settings, tmp_path):
    from dso.models.generator import Generator
    from dso.shapes.prompts import training_prompt
    from dso.shapes.render import to_pil

    s = dataset_settings[0].model_copy(deep=True)
    s.pretrain.vae_steps = 2
    s.pretrain.flow_steps = 2
    s.pretrain.output_dir = tmp_path / "run"
    s.pretrain.output_dir.mkdir()
    (s.pretrain.output_dir / "dataset.npz").symlink_to(dataset_settings[0].pretrain.output_dir / "dataset.npz")
    s.pretrain.export_dir = tmp_path / "export"
    folder = Pretrainer(s, progress=False).run()
    assert (folder / "training.json").is_file()
    s.model.weights_path = folder
    gen = Generator.from_settings(s)
    prompt = training_prompt(0, 0, s.shapes)
    out = gen.generate([to_pil(prompt.image)], samples_per_image=1)
    assert out[0].occupancy.shape == (32, 32, 32)


def test_warm_started_flow_with_ema_resumes_bit_exactly_and_exports_the_ema(dataset_settings, tmp_path):
    """The second pretraining chunk: start from an exported folder, keep its VAE, train the flow with an EMA."""
    from dso.models.factory import load_tiny_modules_for_training

    base, data = dataset_settings
    first = base.model_copy(deep=True)
    first.pretrain.vae_steps = 2
    first.pretrain.flow_steps = 2
    first.pretrain.output_dir = tmp_path / "first"
    first.pretrain.output_dir.mkdir()
    (first.pretrain.output_dir / "dataset.npz").symlink_to(base.pretrain.output_dir / "dataset.npz")
    first.pretrain.export_dir = tmp_path / "stage1"
    stage1 = Pretrainer(first, progress=False).run()

    def run(steps, out):
        s = base.model_copy(deep=True)
        s.pretrain.init_from = stage1
        s.pretrain.vae_steps = 0
        s.pretrain.flow_steps = steps
        s.pretrain.flow_ema = 0.9
        s.pretrain.output_dir = out
        pt = Pretrainer(s, progress=False)
        pt.train_vae(data)
        pt.train_flow(data, pt.encode_latents(data))
        return pt

    straight = run(6, tmp_path / "a")
    run(3, tmp_path / "b")
    resumed = run(6, tmp_path / "b")
    for name in ("flow", "image_encoder"):
        a = getattr(straight.exported_modules(), name).state_dict()
        b = getattr(resumed.exported_modules(), name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # the VAE is the warm start's, untouched (vae_steps=0); the exported flow is the EMA, not the live weights
    start = load_tiny_modules_for_training(stage1, base.model)
    for k, v in start.encoder.state_dict().items():
        assert torch.equal(v, straight.modules.encoder.state_dict()[k]), k
    live, ema = straight.modules.flow.state_dict(), straight.exported_modules().flow.state_dict()
    assert any(not torch.equal(live[k], ema[k]) for k in live if live[k].dtype.is_floating_point)
