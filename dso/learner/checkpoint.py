"""Training checkpoints that resume bit-exactly: module and optimiser state, step, and every RNG.

Why they load with ``torch.load(weights_only=True)``: a full unpickle runs whatever
the file names, so anyone who can write the run directory (or a shared checkpoint
volume) could run code in the learner. The file holds only tensors and plain data
(numbers, strings, lists, dicts): every RNG state is kept as tensors and numbers,
and ``extra`` as a JSON string. Anything else is refused with ``CheckpointError``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely (not only tensors and plain data) or is not one of ours."""


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
        "rng": _rng_state(generator),
        "extra_json": json.dumps(extra or {}),
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
    state = _read(Path(path))
    missing = set(modules) - set(state["modules"])
    if missing:
        raise KeyError(f"checkpoint {path} has no state for {sorted(missing)}")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"], generator)
    return int(state["step"])


def checkpoint_extra(path: Path) -> dict:
    return json.loads(_read(Path(path)).get("extra_json", "{}"))


def _rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every RNG as tensors and numbers (numpy's and Python's own states are tuples with arrays)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "generator": generator.get_state() if generator is not None else None,
    }


def _set_rng_state(rng: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(rng["torch"])
    numpy_state = rng["numpy"]
    np.random.set_state((
        numpy_state["kind"],
        numpy_state["keys"].numpy().astype(np.uint32),
        numpy_state["pos"],
        numpy_state["has_gauss"],
        numpy_state["cached_gaussian"],
    ))
    python_state = rng["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()), python_state["gauss_next"]))
    if generator is not None and rng["generator"] is not None:
        generator.set_state(rng["generator"])


def _read(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, unpickling nothing but tensors and plain data."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = _UNSUPPORTED_GLOBAL.search(str(exc))
        what = f" ({named.group(1)})" if named else ""
        raise CheckpointError(
            f"refusing checkpoint {path}: it holds an object other than tensors and plain data{what}, which loading "
            "could run as code; only load checkpoints written by this version of dso"
        ) from None
    if not isinstance(state, dict) or not {"step", "modules", "rng"} <= set(state):
        raise CheckpointError(f"{path} is not a dso training checkpoint (no step, modules and rng)")
    return state
