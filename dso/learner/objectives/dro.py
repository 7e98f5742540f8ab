"""DRO with an anchored push: the default objective (with the velocity tether of ``ObjectiveSettings``)."""

from __future__ import annotations

import torch

from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms, masked_mean


class DRO(Objective):
    """Pull stable samples in, push unstable ones out, each half averaged on its own (the paper's
    unpaired form). The push on an unstable sample stops once its error is ``dro_margin`` (relative)
    above the reference's at the same t and noise: raising an error is unbounded and easy where
    lowering one stops at the noise floor, so an unbounded push wins by denoising everything worse.
    Online, the pull on the policy's own samples compounds version after version; the tether
    (``objective.tether``) holds it near the reference. Bounded below by -margin * mean(ref_err) / 2.
    """

    name = "dro"
    base_needs = Needs(BatchKind.balanced, ReferenceRows.unstable)

    def core(self, terms: Terms) -> torch.Tensor:
        stable = terms.stable.bool()
        pull = masked_mean(terms.err, stable)
        push = masked_mean(torch.minimum(terms.err - terms.ref_err, self.settings.dro_margin * terms.ref_err), ~stable)
        return 0.5 * (pull - push)
