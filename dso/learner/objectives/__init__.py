"""The DSO objectives, one module each, chosen by name (``objective.name``).

| name | loss | needs |
|---|---|---|
| ``dro`` (default) | pull stable, push unstable until ``dro_margin`` above the reference | balanced batch, reference on unstable rows |
| ``dro_group`` | ``dro`` weighted by label minus the prompt's stable rate (solved prompts stop pulling) | as ``dro`` + each row's prompt rate |
| ``dro_trust`` | two-sided trust region (Diffusion-KTO form) | balanced batch, reference on all rows |
| ``dro_eq5`` | the paper's Eq. 5 | balanced batch |
| ``dro_paired`` | the paper code's paired DRO | pairs |
| ``dpo`` | Diffusion-DPO | pairs, reference on all rows |
| ``sft`` | flow matching on stable samples | stable rows |

Any of them takes the tether (``objective.tether``) and the EMA (``objective.ema_decay``), see ``base``.
Adding one: a module with an :class:`Objective` subclass, its name in ``OBJECTIVES`` and in the
``ObjectiveSettings.name`` literal.
"""

from __future__ import annotations

from dso.config import ObjectiveSettings
from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms, masked_mean, velocity_tether
from dso.learner.objectives.dpo import DPO
from dso.learner.objectives.dro import DRO
from dso.learner.objectives.dro_eq5 import DROEq5
from dso.learner.objectives.dro_group import DROGroup
from dso.learner.objectives.dro_paired import DROPaired
from dso.learner.objectives.dro_trust import DROTrust
from dso.learner.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {cls.name: cls for cls in (DRO, DROGroup, DROTrust, DROEq5, DROPaired, DPO, SFT)}


def build_objective(settings: ObjectiveSettings) -> Objective:
    """The objective ``settings.name`` names."""
    try:
        return OBJECTIVES[settings.name](settings)
    except KeyError:
        raise ValueError(f"unknown objective {settings.name!r}; one of {', '.join(OBJECTIVES)}") from None


def paired(name: str) -> bool:
    """Whether the objective called ``name`` trains on (stable, unstable) pairs."""
    return OBJECTIVES[name].base_needs.paired


__all__ = [
    "OBJECTIVES", "BatchKind", "Needs", "Objective", "ReferenceRows", "Terms",
    "build_objective", "masked_mean", "paired", "velocity_tether",
]
