"""Training checkpoints that resume bit-exactly: module and optimiser state, step, and every RNG."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(
    path: Path, step: int, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, generator: torch.Generator | None = None, extra: dict | None = None
) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a torn checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "generator": generator.get_state() if generator is not None else None,
        },
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(path)


def load_checkpoint(
    path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None
) -> int:
    """Restore everything ``save_checkpoint`` wrote; returns the step to continue from."""
    state = torch.load(Path(path), map_location="cpu", weights_only=False)
    missing = set(modules) - set(state["modules"])
    if missing:
        raise KeyError(f"checkpoint {path} has no state for {sorted(missing)}")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if generator is not None and rng["generator"] is not None:
        generator.set_state(rng["generator"])
    return int(state["step"])


def checkpoint_extra(path: Path) -> dict:
    return torch.load(Path(path), map_location="cpu", weights_only=False).get("extra", {})
