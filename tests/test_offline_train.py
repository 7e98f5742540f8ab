"""Offline training over a dataset: batches per objective, checkpoints, and bit-exact resume of `dso train`."""

import json

import numpy as np
import pytest
import torch

from dso.config import DatasetSettings, FlowTransformerSettings, LoraSettings, ObjectiveSettings, TrainSettings, load_settings
from dso.learner.dataset import OfflineDataset, build_dataset
from dso.learner.offline import (
    METRICS_FILE,
    BatchPlanner,
    DatasetTooSmallError,
    OfflineTrainingLoop,
    latest_checkpoint,
    make_batch,
)
from dso.learner.trainer import FineTuner
from dso.models.transformer import SparseStructureFlowModel

GRID = 32
FLOW = FlowTransformerSettings(resolution=4, in_channels=2, out_channels=2, model_channels=32, cond_channels=8, num_blocks=2, num_heads=2)


class BlockOrPostSource:
    """Even seeds decode to a wide block (stable), odd seeds to a toppling post, except that the first
    ``all_stable_prompts`` prompts get blocks only (so they cannot form DPO pairs)."""

    def __init__(self, all_stable_prompts: int = 0):
        self.all_stable_prompts = all_stable_prompts  # the first n prompts get only stable samples

    def encode(self, images):
        px = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)[::16, ::16, :3].copy()).flatten() for im in images])
        return px.reshape(len(images), -1, 8) / 255.0

    def sample_latents(self, cond, seeds):
        self._seeds = list(seeds)
        return torch.stack([torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(s)) for s in seeds])

    def decode(self, latents):
        out = []
        for s in self._seeds:
            occ = np.zeros((GRID,) * 3, bool)
            if s % 2 == 0 or s // 2 < self.all_stable_prompts:  # K = 2: prompt p owns seeds 2p, 2p + 1
                occ[8:24, 8:24, 0:16] = True
            else:
                occ[4:7, 14:17, 0:22] = True
                occ[4:30, 10:22, 22:28] = True
            out.append(occ)
        return np.stack(out)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    settings = load_settings("tiny", environ={})
    root = tmp_path_factory.mktemp("ds")
    ds_settings = DatasetSettings(objects=3, views_per_object=2, samples_per_prompt=2, chunk_prompts=6, sim_workers=1)
    build_dataset(BlockOrPostSource(all_stable_prompts=2), root, ds_settings, settings.shapes, settings.sim)
    return OfflineDataset.load(root)


def flow_model(seed=0):
    torch.manual_seed(seed)
    model = SparseStructureFlowModel.from_settings(FLOW)
    with torch.no_grad():
        for p in model.parameters():  # the DiT init zeroes the output layer, which would block every gradient
            p.normal_(0.0, 0.1)
    return model


def tuner(name, **train):
    settings = dict(lr=1e-3, warmup_steps=2, batch_size=4, checkpoint_every=2, seed=5)
    settings.update(train)
    return FineTuner(flow_model(), LoraSettings(r=4, alpha=8), ObjectiveSettings(name=name), TrainSettings(**settings))


def test_dataset_fixture_has_both_outcomes(dataset):
    s = dataset.summary()
    assert s["samples"] == 12 and s["stable"] == 8 and s["pair_prompts"] == 4


def test_dro_batches_are_balanced(dataset):
    plan = BatchPlanner(dataset, "dro", 8, seed=0).next()
    assert len(plan.stable) == len(plan.unstable) == 4
    assert dataset.stable[plan.stable].all() and not dataset.stable[plan.unstable].any()


@pytest.mark.parametrize("name", ["dpo", "dro_paired"])
def test_paired_batches_pair_samples_of_one_prompt(dataset, name):
    planner = BatchPlanner(dataset, name, 8, seed=0)
    for _ in range(5):
        plan = planner.next()
        assert len(plan.stable) == len(plan.unstable) == 4
        assert np.array_equal(dataset.prompt_row[plan.stable], dataset.prompt_row[plan.unstable])
        assert dataset.stable[plan.stable].all() and not dataset.stable[plan.unstable].any()
        assert set(dataset.prompt_row[plan.stable]) <= {2, 3, 4, 5}, "prompts with only stable samples cannot pair"


def test_sft_batches_are_stable_only(dataset):
    plan = BatchPlanner(dataset, "sft", 6, seed=0).next()
    assert len(plan.stable) == 6 and len(plan.unstable) == 0 and dataset.stable[plan.stable].all()


def test_batch_uses_each_samples_own_prompt_tokens(dataset):
    plan = BatchPlanner(dataset, "dpo", 4, seed=1).next()
    batch = make_batch(dataset, plan)
    for i, row in enumerate(plan.rows):
        assert torch.equal(batch.cond[i], dataset.cond[dataset.prompt_row[row]])
        assert torch.equal(batch.x0[i], dataset.x0[row])
    assert batch.stable.tolist() == [True, True, False, False]


def test_shards_split_pairs_without_breaking_them(dataset):
    plan = BatchPlanner(dataset, "dpo", 8, seed=0).next()
    a, b = plan.shard(0, 2), plan.shard(1, 2)
    assert sorted(np.concatenate([a.rows, b.rows])) == sorted(plan.rows)
    for part in (a, b):
        assert np.array_equal(dataset.prompt_row[part.stable], dataset.prompt_row[part.unstable])


def test_objective_without_its_data_is_a_clear_error(dataset):
    only_stable = OfflineDataset(**{**dataset.__dict__, "stable": np.ones(len(dataset), bool)})
    with pytest.raises(DatasetTooSmallError, match="unstable"):
        BatchPlanner(only_stable, "dro", 4, seed=0)
    with pytest.raises(DatasetTooSmallError, match="both"):
        BatchPlanner(only_stable, "dpo", 4, seed=0)


@pytest.mark.parametrize("name", ["dro", "dpo", "sft"])
def test_training_writes_checkpoints_and_metrics(dataset, tmp_path, name):
    loop = OfflineTrainingLoop(tuner(name), dataset, tmp_path)
    last = loop.run(5)
    assert last["step"] == 5
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_000002", "step_000004", "step_000005"]
    assert latest_checkpoint(tmp_path).name == "step_000005"
    assert (tmp_path / "checkpoints/step_000004/adapter/adapter_config.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(m["loss"]) for m in lines)


@pytest.mark.parametrize("name", ["dro", "dpo"])
def test_stopped_and_resumed_run_is_bit_exact(dataset, tmp_path, name):
    straight = OfflineTrainingLoop(tuner(name), dataset, tmp_path / "straight")
    straight.run(6)

    OfflineTrainingLoop(tuner(name), dataset, tmp_path / "resumed").run(3)  # stops after step 3 (checkpoint at 3)
    resumed = OfflineTrainingLoop(tuner(name), dataset, tmp_path / "resumed")
    resumed.run(6)
    a, b = straight.tuner.adapter_state(), resumed.tuner.adapter_state()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    m_a = (tmp_path / "straight" / METRICS_FILE).read_text()
    m_b = (tmp_path / "resumed" / METRICS_FILE).read_text()
    assert m_a == m_b, "the metrics log continues exactly where it stopped"


def test_resume_after_a_crash_past_the_last_checkpoint_drops_unsaved_metrics(dataset, tmp_path):
    loop = OfflineTrainingLoop(tuner("dro", checkpoint_every=4), dataset, tmp_path)
    loop.run(5)  # checkpoints at 4 and 5
    (tmp_path / "checkpoints" / "latest").write_text("step_000004")  # as if it crashed before saving step 5
    again = OfflineTrainingLoop(tuner("dro", checkpoint_every=4), dataset, tmp_path)
    assert again.resume() == 4
    assert [json.loads(x)["step"] for x in (tmp_path / METRICS_FILE).read_text().splitlines()] == [1, 2, 3, 4]


class TinyShapedSource(BlockOrPostSource):
    """Latents and condition tokens shaped for the tiny config's model (8 x 8^3 latent, 64 x 128 tokens)."""

    def encode(self, images):
        px = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)[::8, ::8, :].copy()).flatten() for im in images])
        proj = torch.randn(px.shape[1], 64 * 128, generator=torch.Generator().manual_seed(0)) / 255.0
        return (px @ proj).reshape(len(images), 64, 128) / 32.0

    def sample_latents(self, cond, seeds):
        self._seeds = list(seeds)
        return torch.stack([torch.randn(8, 8, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """A random tiny model folder (trainable: random output layer) and a tiny-shaped dataset with both outcomes."""
    from test_loop_support import export_trainable_tiny_model

    root = tmp_path_factory.mktemp("cli")
    folder, settings = export_trainable_tiny_model(root / "model")
    ds_settings = DatasetSettings(objects=2, views_per_object=2, samples_per_prompt=2, chunk_prompts=4, sim_workers=1)
    build_dataset(TinyShapedSource(), root / "ds", ds_settings, settings.shapes, settings.sim)
    env = {"DSO__MODEL__WEIGHTS_PATH": str(folder), "DSO__TRAIN__BATCH_SIZE": "4", "DSO__TRAIN__CHECKPOINT_EVERY": "2", "DSO__TRAIN__LR": "1e-3"}
    return root, env


def test_dso_train_cli_resumes_bit_exactly(cli_env):
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from dso.cli import app

    root, env = cli_env
    runner = CliRunner(env=env)

    def train(out, steps):
        result = runner.invoke(app, ["train", "--dataset", str(root / "ds"), "--objective", "dro", "--steps", str(steps), "--out", str(out)])
        assert result.exit_code == 0, result.output
        return load_file(str(latest_checkpoint(out) / "adapter" / "adapter_model.safetensors"))

    straight = train(root / "straight", 4)
    train(root / "resumed", 3)
    resumed = train(root / "resumed", 4)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert any(bool(v.abs().sum() > 0) for k, v in straight.items() if "lora_B" in k)


def test_dso_train_cli_rejects_unknown_objective(cli_env):
    from typer.testing import CliRunner

    from dso.cli import app

    root, env = cli_env
    result = CliRunner(env=env).invoke(app, ["train", "--dataset", str(root / "ds"), "--objective", "ppo"])
    assert result.exit_code != 0 and "objective" in result.output
