"""The objective contract: what an objective needs from a batch, and the loss it makes of it.

An objective is one small class: its ``needs`` (which batch shape, whether the reference's errors are
needed and on which rows) and ``core(terms)``, a few lines over per-sample velocity errors computed by
the trainer at one shared t and noise per sample. Lower error = the model denoises that sample better
= it is more likely under the policy. The trainer reads ``needs`` and computes exactly that; it never
branches on an objective's name.

Two stabilisers apply to any objective, set in ``ObjectiveSettings`` and folded into ``needs`` here:
- ``tether``: lambda * mean ||v_theta - v_ref||^2 over every row, at the same noisy point: a pull toward
  the reference (adapter off) that does not depend on which samples the policy drew, so repeated rounds
  of training on the policy's own samples settle near the reference instead of compounding (the
  tractable W2 bound of ORW-CFM-W2; the velocity-KL of DiffusionNFT / AWM);
- ``ema_decay``: the trainer keeps an exponential moving average of the adapter and publishes it
  (DiffusionNFT's "old" policy), so each published version moves a bounded step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import ClassVar

import torch

from dso.config import ObjectiveSettings


class BatchKind(StrEnum):
    """How the rows of a batch are drawn."""

    balanced = "balanced"  # stable and unstable rows, each half averaged on its own
    pairs = "pairs"  # first half stable, second half unstable, row i of each from the same prompt
    stable_only = "stable_only"  # stable rows only (SFT)


class ReferenceRows(StrEnum):
    """Rows on which the reference (adapter off, same t and noise) is evaluated."""

    none = "none"
    unstable = "unstable"
    all = "all"


@dataclass(frozen=True)
class Needs:
    batch: BatchKind = BatchKind.balanced
    reference: ReferenceRows = ReferenceRows.none
    velocities: bool = False  # keep the policy's and the reference's velocities (the tether)
    ema: bool = False  # the trainer keeps and publishes an EMA of the adapter
    group_rate: bool = False  # each row's prompt stable rate (the learner's recent labels of that prompt)

    @property
    def paired(self) -> bool:
        return self.batch == BatchKind.pairs


@dataclass
class Terms:
    """What the trainer computed for one batch; fields an objective did not ask for are None."""

    err: torch.Tensor  # [B] policy velocity MSE per sample
    stable: torch.Tensor  # [B] bool
    ref_err: torch.Tensor | None = None  # [B] reference error (0 on rows it was not asked for)
    pred: torch.Tensor | None = None  # [B, ...] policy velocity
    ref_pred: torch.Tensor | None = None  # [B, ...] reference velocity (no gradient)
    group_rate: torch.Tensor | None = None  # [B] stable rate of each row's prompt (group-relative objectives)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; 0 (with a gradient path) when the mask is empty."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def velocity_tether(pred: torch.Tensor, ref_pred: torch.Tensor) -> torch.Tensor:
    """mean ||v_theta - v_ref||^2 per element: zero at the reference, whatever the samples."""
    return ((pred.float() - ref_pred.float()) ** 2).mean()


class Objective(ABC):
    """One objective: declare ``base_needs``, write ``core``; the stabilisers are added here."""

    name: ClassVar[str]
    base_needs: ClassVar[Needs]

    def __init__(self, settings: ObjectiveSettings):
        self.settings = settings

    @property
    def needs(self) -> Needs:
        needs = self.base_needs
        if self.settings.tether > 0:
            needs = replace(needs, reference=ReferenceRows.all, velocities=True)
        if self.settings.ema_decay is not None:
            needs = replace(needs, ema=True)
        return needs

    @abstractmethod
    def core(self, terms: Terms) -> torch.Tensor:
        """The objective's own loss (scalar)."""

    def loss(self, terms: Terms) -> tuple[torch.Tensor, dict[str, float]]:
        """``core`` plus the tether; the second value holds the parts, for logs."""
        core = self.core(terms)
        parts = {"loss_core": float(core.detach())}
        if self.settings.tether > 0:
            if terms.pred is None or terms.ref_pred is None:
                raise ValueError(f"objective {self.name!r} has a tether but the trainer gave no velocities")
            tether = velocity_tether(terms.pred, terms.ref_pred)
            parts["tether"] = float(tether.detach())
            core = core + self.settings.tether * tether
        return core, parts
