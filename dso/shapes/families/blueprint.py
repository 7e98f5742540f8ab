"""What a family builder returns: the solids, where the lean starts, and the drawn parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dso.shapes.primitives import Solid

GROUND = -0.5  # z of the ground plane in unit-cube coordinates


@dataclass
class Blueprint:
    """A family member before posing: solids in its own frame resting on z = GROUND.

    ``onset`` is the height where a lean (shear) begins, i.e. the top of the part that
    touches the ground, so leaning never changes the contact footprint.
    """

    kind: str
    solids: list[Solid]
    onset: float
    params: dict[str, float | int | str] = field(default_factory=dict)


def draw(rng: np.random.Generator, params: dict, name: str, low: float, high: float) -> float:
    """Draw a uniform parameter and record it under ``name`` (so objects are self-describing)."""
    value = float(rng.uniform(low, high))
    params[name] = value
    return value


def pick(rng: np.random.Generator, params: dict, name: str, options: tuple[str, ...]) -> str:
    """Choose one of ``options`` uniformly and record the choice."""
    value = str(options[int(rng.integers(len(options)))])
    params[name] = value
    return value
