"""Diffusion-DPO adapted to flow matching (the paper's Eq. 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms


class DPO(Objective):
    """Winner w = stable, loser l = unstable, of one prompt, sharing t and noise; the reference is the
    same network with the adapter off. Equals log 2 when the policy equals the reference. Needs pairs:
    once every fresh sample stands it has nothing left to learn from."""

    name = "dpo"
    base_needs = Needs(BatchKind.pairs, ReferenceRows.all)

    def core(self, terms: Terms) -> torch.Tensor:
        half = terms.err.shape[0] // 2
        err, ref = terms.err, terms.ref_err
        margin = (err[:half] - ref[:half]) - (err[half:] - ref[half:])
        return -F.logsigmoid(-0.5 * self.settings.dpo_beta * margin).mean()
