"""DRO with a two-sided trust region (the form of Diffusion-KTO), on per-sample binary labels."""

from __future__ import annotations

import torch

from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms, masked_mean


class DROTrust(Objective):
    """With g = reference error - policy error (how much better the policy fits a sample than the
    reference) and z0 the batch mean of g (no gradient, at least 0), stable samples minimise
    1 - sigmoid(beta (g - z0)) and unstable ones 1 - sigmoid(-beta (g - z0)). Both halves saturate:
    once the policy fits a stable sample well beyond the batch's typical gain it stops pulling, and
    once an unstable one is well below it stops pushing, so neither side can run away."""

    name = "dro_trust"
    base_needs = Needs(BatchKind.balanced, ReferenceRows.all)

    def core(self, terms: Terms) -> torch.Tensor:
        stable = terms.stable.bool()
        gain = terms.ref_err - terms.err
        z0 = gain.detach().mean().clamp(min=0.0)
        margin = self.settings.trust_beta * (gain - z0)
        pull = masked_mean(1.0 - torch.sigmoid(margin), stable)
        push = masked_mean(1.0 - torch.sigmoid(-margin), ~stable)
        return 0.5 * (pull + push)
