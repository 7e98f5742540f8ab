"""FineTuner: objectives train the LoRA adapter in the right direction and resume bit-exactly."""

import math

import pytest
import torch

from dso.config import LoraSettings, ObjectiveSettings, TrainSettings, load_settings
from dso.learner.trainer import FineTuner, TrainBatch
from dso.models.transformer import SparseStructureFlowModel


def _flow():
    torch.manual_seed(0)
    s = load_settings("tiny", environ={}).model.transformer
    return SparseStructureFlowModel.from_settings(s)


def _batch(n=8, paired=False):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, 8, 8, 8, 8, generator=g)
    cond = torch.randn(n, 64, 128, generator=g)
    stable = torch.tensor([True] * (n // 2) + [False] * (n // 2))
    return TrainBatch(x0, cond, stable)


def _tuner(name="dro", **train):
    return FineTuner(_flow(), LoraSettings(r=4, alpha=8), ObjectiveSettings(name=name), TrainSettings(lr=1e-3, warmup_steps=1, **train))


def test_dro_separates_stable_from_unstable():
    tuner = _tuner("dro")
    batch = _batch()
    first = [tuner.train_step(batch) for _ in range(12)]
    gap0 = first[0]["err_unstable"] - first[0]["err_stable"]
    gap1 = first[-1]["err_unstable"] - first[-1]["err_stable"]
    assert gap1 > gap0, (gap0, gap1)


def test_dpo_starts_at_log2_with_a_fresh_adapter():
    tuner = _tuner("dpo")
    loss, _ = tuner.loss(_batch())
    assert math.isclose(loss.item(), math.log(2.0), rel_tol=1e-4)


def test_paired_objective_rejects_unpaired_batch():
    tuner = _tuner("dpo")
    b = _batch()
    b.stable[0] = False
    with pytest.raises(ValueError, match="pairs"):
        tuner.train_step(b)


@pytest.mark.parametrize("name", ["dro", "dpo", "sft", "dro_paired"])
def test_every_objective_steps(name):
    m = _tuner(name).train_step(_batch())
    assert math.isfinite(m["loss"]) and m["step"] == 1


def test_resume_is_bit_exact(tmp_path):
    batch = _batch()
    straight = _tuner("dro")
    for _ in range(4):
        straight.train_step(batch)

    first = _tuner("dro")
    for _ in range(2):
        first.train_step(batch)
    first.save(tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    resumed = _tuner("dro")
    assert resumed.load(tmp_path) == 2
    for _ in range(2):
        resumed.train_step(batch)
    a, b = straight.adapter_state(), resumed.adapter_state()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
