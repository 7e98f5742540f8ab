"""One builder per family: ``build(rng) -> Blueprint`` (solids in the object's own frame, front = +y)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dso.shapes.families import biped, furniture, quadruped, slender, top_heavy
from dso.shapes.families.blueprint import Blueprint

BUILDERS: dict[str, Callable[[np.random.Generator], Blueprint]] = {
    "biped": biped.build,
    "quadruped": quadruped.build,
    "slender": slender.build,
    "furniture": furniture.build,
    "top_heavy": top_heavy.build,
}

__all__ = ["BUILDERS", "Blueprint"]
