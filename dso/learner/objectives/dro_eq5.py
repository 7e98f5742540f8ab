"""DRO exactly as the paper's Eq. 5 (unpaired, no reference): kept for comparison and reproduction."""

from __future__ import annotations

import torch

from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms, masked_mean


class DROEq5(Objective):
    """Minimise stable samples' error, maximise unstable ones', the halves weighted equally. The
    unstable error is capped at ``dro_unstable_cap`` so the loss is bounded below (>= -cap / 2) even
    for an all-unstable batch. Drifts: nothing holds the model near the reference."""

    name = "dro_eq5"
    base_needs = Needs(BatchKind.balanced, ReferenceRows.none)

    def core(self, terms: Terms) -> torch.Tensor:
        stable = terms.stable.bool()
        pull = masked_mean(terms.err, stable)
        push = masked_mean(terms.err.clamp(max=self.settings.dro_unstable_cap), ~stable)
        return 0.5 * (pull - push)
