"""Shared set-up for the loop tests (no tests here): a tiny random generator folder and loop settings.

The random model gets non-zero output and modulation layers (a fresh flow model's
are zero, so no adapter could move its output and hot swaps could not be verified).
"""

from __future__ import annotations

import time

from pathlib import Path
from typing import Any

import torch

from dso.config import Settings, load_settings
from dso.models.factory import build_tiny_modules, export_tiny_folder

# small, fast loop: 1 prompt x 4 samples per batch, publish every 2 learner steps
LOOP_OVERRIDES: dict[str, Any] = {
    "prompts_per_batch": 1,
    "samples_per_prompt": 4,
    "default_prompts": 3,
    "publish_every": 2,
    "learner_batch": 4,
    "min_replay": 4,
    "ingest_batch": 16,
    "idle_sleep_s": 0.02,
    "max_steps_per_sample": None,  # the loop's mechanics under test, not its replay ratio (tested on its own)
}


def export_random_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random tiny generator whose output depends on its attention (so LoRA swaps are observable)."""
    settings = load_settings("tiny", environ={})
    torch.manual_seed(seed)
    modules = build_tiny_modules(settings.model, settings.sampler)
    with torch.no_grad():
        for name, param in modules.flow.named_parameters():
            if name.startswith("out_layer") or "adaLN" in name or "modulation" in name:
                param.normal_(0.0, 0.05)
    return export_tiny_folder(modules, settings, folder, training_record={"note": "random test model"})


def export_trainable_tiny_model(folder: Path, seed: int = 0) -> tuple[Path, Settings]:
    """A random tiny generator with every flow weight drawn N(0, 0.02): trained-looking, so gradients
    reach the LoRA layers (the DiT init's zero output layer would block them). Returns (folder, settings)."""
    settings = load_settings("tiny", environ={})
    torch.manual_seed(seed)
    modules = build_tiny_modules(settings.model, settings.sampler)
    with torch.no_grad():
        for param in modules.flow.parameters():
            param.normal_(0.0, 0.02)
    return export_tiny_folder(modules, settings, folder), settings


def loop_test_settings(
    model_folder: Path, broker_values: dict[str, Any], canary: dict[str, Any] | None = None, **loop: Any
) -> Settings:
    """Tiny-config settings pointing at a test model folder and a test broker (``canary``: canary section overrides;
    ``{"enabled": False}`` makes the learner promote every publish, so generators adopt it without a canary)."""
    settings = load_settings("tiny", environ={"DSO__MODEL__WEIGHTS_PATH": str(model_folder)})
    data = settings.model_dump()
    data["broker"] = broker_values
    data["loop"] = {**LOOP_OVERRIDES, **loop}
    data["canary"].update(canary or {})
    data["sampler"]["steps"] = 4  # fewer flow steps: the loop, not sample quality, is under test
    data["sim"]["max_time"] = 2.0
    return Settings.model_validate(data)


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.1):
    """Poll ``condition`` until it returns something truthy (returned) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
