"""Supervised fine-tuning on stable samples: the baseline."""

from __future__ import annotations

import torch

from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms, masked_mean


class SFT(Objective):
    """Ordinary flow matching on the stable samples only."""

    name = "sft"
    base_needs = Needs(BatchKind.stable_only, ReferenceRows.none)

    def core(self, terms: Terms) -> torch.Tensor:
        return masked_mean(terms.err, terms.stable.bool())
