"""Prompt images for the loop: the default training prompt set, and decoding stored prompts.

When the prompt store is empty at start, ``dso run`` seeds it with renders of
procedural *training* objects (seeds from ``loop.default_prompt_seed``, below
``shapes.training_seed_limit``, so never a held-out object), so the loop works
out of the box; users push their own images over the API later.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dso.broker.prompts import PromptStore
from dso.config import Settings
from dso.models.image_io import load_image
from dso.shapes.prompts import training_prompt


def png_bytes(rgba: np.ndarray) -> bytes:
    """Encode an RGBA uint8 array as PNG (lossless, keeps the alpha mask the conditioner crops by)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def seed_default_prompts(prompts: PromptStore, settings: Settings) -> int:
    """Fill an empty prompt store with ``loop.default_prompts`` training renders; returns how many were added."""
    if prompts.active():
        return 0
    loop, shapes = settings.loop, settings.shapes
    last = loop.default_prompt_seed + loop.default_prompts
    if last > shapes.training_seed_limit:
        raise ValueError(
            f"default prompt seeds [{loop.default_prompt_seed}, {last}) must stay below "
            f"shapes.training_seed_limit={shapes.training_seed_limit} (held-out objects live above it)"
        )
    added = 0
    for seed in range(loop.default_prompt_seed, last):
        prompt = training_prompt(seed, view_seed=seed, settings=shapes)
        meta = {"source": "default", "name": prompt.prompt_id, "family": prompt.object.family, "object_seed": seed}
        added += int(prompts.add(png_bytes(prompt.image), meta).created)
    return added


class PromptImages:
    """Decoded prompt images by prompt id, cached (prompts are immutable: the id is their hash)."""

    def __init__(self, prompts: PromptStore, settings: Settings, max_cached: int = 4096) -> None:
        self.prompts = prompts
        self.conditioner_settings = settings.model.conditioner
        self.max_cached = max_cached
        self._cache: dict[str, Image.Image] = {}

    def get(self, prompt_id: str) -> Image.Image:
        image = self._cache.get(prompt_id)
        if image is None:
            raw = self.prompts.get(prompt_id).image
            image = load_image(
                raw,
                max_pixels=self.conditioner_settings.max_image_pixels,
                max_bytes=self.conditioner_settings.max_image_bytes,
            )
            if len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
            self._cache[prompt_id] = image
        return image
