"""DRO as the paper's code runs it: balanced (stable, unstable) pairs of one prompt."""

from __future__ import annotations

import torch

from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms


class DROPaired(Objective):
    """Mean over pairs of (stable error - unstable error)."""

    name = "dro_paired"
    base_needs = Needs(BatchKind.pairs, ReferenceRows.none)

    def core(self, terms: Terms) -> torch.Tensor:
        half = terms.err.shape[0] // 2
        return (terms.err[:half] - terms.err[half:]).mean()
