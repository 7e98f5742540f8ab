"""Prompt images of procedural objects: the held-out evaluation set and single training prompts.

Seeds split the object space in two: training objects use seeds in
[0, settings.training_seed_limit), held-out object i uses settings.heldout_seed + i,
which must lie beyond that range. Held-out views come from their own RNG stream
(settings.heldout_view_seed + i), apart from any view seed used in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dso.config import ShapesSettings
from dso.shapes.camera import Camera, default_views
from dso.shapes.procedural import FAMILIES, ProceduralObject, sample_object
from dso.shapes.render import render_occupancy


PROMPT_FAMILY_STREAM = 7_919  # second RNG key: the prompt family draw is independent of the object's own stream


@dataclass
class Prompt:
    """One prompt image with the object and camera that made it."""

    prompt_id: str
    image: np.ndarray  # RGBA uint8 (size, size, 4)
    object: ProceduralObject
    camera: Camera


def training_seeds(settings: ShapesSettings, count: int, start: int = 0) -> range:
    """Object seeds for pretraining: ``count`` consecutive seeds from ``start``, all below the training limit."""
    if count < 0 or start < 0:
        raise ValueError("count and start must be >= 0")
    if start + count > settings.training_seed_limit:
        raise ValueError(
            f"training seeds must stay below training_seed_limit={settings.training_seed_limit}; "
            f"asked for [{start}, {start + count})"
        )
    return range(start, start + count)


def heldout_seeds(settings: ShapesSettings) -> range:
    """Object seeds of the held-out set (disjoint from every training seed)."""
    if settings.heldout_seed < settings.training_seed_limit:
        raise ValueError(
            f"heldout_seed={settings.heldout_seed} overlaps the training seeds [0, {settings.training_seed_limit})"
        )
    return range(settings.heldout_seed, settings.heldout_seed + settings.heldout_objects)


def prompt_family(seed: int, settings: ShapesSettings) -> str | None:
    """The family of prompt object ``seed`` under ``settings.prompt_family_weights`` (None: let the seed choose)."""
    weights = settings.prompt_family_weights
    if not weights:
        return None
    unknown = set(weights) - set(FAMILIES)
    if unknown:
        raise ValueError(f"prompt_family_weights names unknown families {sorted(unknown)}; expected {FAMILIES}")
    names = [f for f in FAMILIES if weights.get(f, 0.0) > 0]
    p = np.array([weights[f] for f in names], dtype=float)
    rng = np.random.default_rng([seed, PROMPT_FAMILY_STREAM])
    return str(rng.choice(names, p=p / p.sum()))


def training_prompt(seed: int, view_seed: int, settings: ShapesSettings) -> Prompt:
    """The prompt for training object ``seed`` seen from the first camera of ``default_views(1, view_seed)``."""
    if not 0 <= seed < settings.training_seed_limit:
        raise ValueError(f"training seed {seed} outside [0, {settings.training_seed_limit})")
    obj = sample_object(seed, resolution=settings.resolution, family=prompt_family(seed, settings), settings=settings)
    camera = default_views(1, view_seed, settings)[0]
    image = render_occupancy(obj.occupancy, camera, size=settings.render_size, parts=obj.parts, settings=settings)
    return Prompt(f"train-{obj.family}-{seed}-s{view_seed}", image, obj, camera)


def heldout_prompts(settings: ShapesSettings) -> list[Prompt]:
    """The fixed held-out set: settings.heldout_objects objects x settings.heldout_views views each."""
    if settings.heldout_view_seed < settings.training_seed_limit:
        raise ValueError(f"heldout_view_seed={settings.heldout_view_seed} overlaps the training view seeds")
    prompts = []
    for index, seed in enumerate(heldout_seeds(settings)):
        if settings.prompt_family_weights:
            family = prompt_family(seed, settings)
        else:
            family = FAMILIES[index % len(FAMILIES)] if settings.heldout_balanced else None
        obj = sample_object(seed, resolution=settings.resolution, family=family, settings=settings)
        cameras = default_views(settings.heldout_views, settings.heldout_view_seed + index, settings)
        for view, camera in enumerate(cameras):
            image = render_occupancy(
                obj.occupancy, camera, size=settings.render_size, parts=obj.parts, settings=settings
            )
            prompts.append(Prompt(f"heldout-{obj.family}-{seed}-v{view}", image, obj, camera))
    return prompts
