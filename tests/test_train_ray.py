"""`dso train --workers 2`: two Ray Train CPU workers (gloo, DDP over the LoRA adapter) complete a short run."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dso.config import DatasetSettings, load_settings
from dso.learner.dataset import OfflineDataset, build_dataset
from dso.learner.offline import latest_checkpoint
from test_loop_support import export_trainable_tiny_model

GRID = 32


class TinyShapedSource:
    """Latents and condition tokens of the tiny model's shapes; even seeds decode to a block, odd to a toppling post."""

    def encode(self, images):
        px = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)[::8, ::8, :].copy()).flatten() for im in images])
        proj = torch.randn(px.shape[1], 64 * 128, generator=torch.Generator().manual_seed(0)) / 255.0
        return (px @ proj).reshape(len(images), 64, 128) / 32.0

    def sample_latents(self, cond, seeds):
        self._seeds = list(seeds)
        return torch.stack([torch.randn(8, 8, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def decode(self, latents):
        out = []
        for s in self._seeds:
            occ = np.zeros((GRID,) * 3, bool)
            if s % 2 == 0:
                occ[8:24, 8:24, 0:16] = True
            else:
                occ[4:7, 14:17, 0:22] = True
                occ[4:30, 10:22, 22:28] = True
            out.append(occ)
        return np.stack(out)


@pytest.mark.slow
def test_two_worker_ray_train_run_completes(tmp_path):
    ray = pytest.importorskip("ray")
    from dso.jobs.train_ray import train_with_ray

    folder, _ = export_trainable_tiny_model(tmp_path / "model")
    settings = load_settings(
        "tiny",
        environ={
            "DSO__MODEL__WEIGHTS_PATH": str(folder),
            "DSO__TRAIN__BATCH_SIZE": "4",
            "DSO__TRAIN__CHECKPOINT_EVERY": "2",
            "DSO__TRAIN__WARMUP_STEPS": "1",
            "DSO__TRAIN__LR": "1e-3",
            "DSO__OBJECTIVE__NAME": "dpo",
        },
    )
    ds_settings = DatasetSettings(objects=2, views_per_object=2, samples_per_prompt=2, chunk_prompts=4, sim_workers=1)
    build_dataset(TinyShapedSource(), tmp_path / "ds", ds_settings, settings.shapes, settings.sim)
    assert OfflineDataset.load(tmp_path / "ds").summary()["pair_prompts"] == 4

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never join another run's cluster
    try:
        result = train_with_ray(settings, tmp_path / "ds", tmp_path / "out", workers=2, steps=4)
    finally:
        ray.shutdown()
    assert result.steps == 4 and np.isfinite(result.metrics["loss"])
    latest = latest_checkpoint(tmp_path / "out")
    assert latest is not None and latest.name == "step_000004"
    assert (latest / "rng_rank0.pt").is_file() and (latest / "rng_rank1.pt").is_file()
    assert result.checkpoint is not None and (result.checkpoint / "adapter" / "adapter_config.json").is_file()
    weights = load_file(str(latest / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b), "the adapter trained (lora_B left zero)"
