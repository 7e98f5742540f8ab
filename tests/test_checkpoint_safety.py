"""Checkpoints load with weights_only: every RNG still resumes exactly, and a crafted pickle runs nothing."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dso.learner.checkpoint import CheckpointError, checkpoint_extra, load_checkpoint, save_checkpoint


class RunsCode:
    """Unpickling this would create ``marker``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # optimiser state (exp_avg, step) exists
    return module, optimizer


def draws(generator: torch.Generator) -> tuple:
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(), torch.rand(2, generator=generator).tolist())


def test_round_trip_restores_modules_optimizer_every_rng_and_extra(tmp_path: Path) -> None:
    module, optimizer = model_and_optimizer()
    generator = torch.Generator().manual_seed(7)
    np.random.normal()  # numpy's cached gaussian is part of its state
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, 12, {"m": module}, optimizer, generator, extra={"note": "hi", "n": [1, 2]})
    expected = draws(generator)
    fresh, fresh_optimizer = model_and_optimizer()
    fresh_generator = torch.Generator().manual_seed(0)
    assert load_checkpoint(path, {"m": fresh}, fresh_optimizer, fresh_generator) == 12
    assert draws(fresh_generator) == expected
    assert torch.equal(fresh.weight, module.weight)
    assert fresh_optimizer.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])
    assert checkpoint_extra(path) == {"note": "hi", "n": [1, 2]}


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    module, optimizer = model_and_optimizer()
    path = tmp_path / "ckpt.pt"
    state = {"step": 1, "modules": {"m": module.state_dict()}, "optimizer": optimizer.state_dict(), "rng": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))  # torch.load's own protocol: no warning
    with pytest.raises(CheckpointError, match="refusing checkpoint .* other than tensors and plain data"):
        load_checkpoint(path, {"m": module}, optimizer)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a dso training checkpoint"):
        load_checkpoint(path, {"m": torch.nn.Linear(1, 1)})
