"""DRO with a group-relative signal: a prompt that is already solved stops pulling."""

from __future__ import annotations

import torch

from dso.learner.objectives.base import BatchKind, Needs, Objective, ReferenceRows, Terms


def _weighted_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w x) / (number of rows with w defined); 0 (with a gradient path) for no rows."""
    return (x * weight).sum() / (weight > 0).to(x.dtype).sum().clamp(min=1.0)


class DROGroup(Objective):
    """Each sample's label minus its prompt's recent stable rate m (the group mean, as in GRPO) weights it:
    a stable sample pulls with 1 - m, an unstable one pushes with m (the push anchored as in ``dro``).
    A prompt whose fresh samples all stand (m = 1) no longer pulls on the policy's own samples, which is
    what compounds into drift online; one that always falls (m = 0) carries no signal either way."""

    name = "dro_group"
    base_needs = Needs(BatchKind.balanced, ReferenceRows.unstable, group_rate=True)

    def core(self, terms: Terms) -> torch.Tensor:
        if terms.group_rate is None:
            raise ValueError("dro_group needs each row's prompt stable rate (TrainBatch.group_rate)")
        stable = terms.stable.bool()
        m = terms.group_rate.to(terms.err.dtype).clamp(0.0, 1.0)
        pull = _weighted_mean(terms.err, torch.where(stable, 1.0 - m, torch.zeros_like(m)))
        push_term = torch.minimum(terms.err - terms.ref_err, self.settings.dro_margin * terms.ref_err)
        push = _weighted_mean(push_term, torch.where(~stable, m, torch.zeros_like(m)))
        return 0.5 * (pull - push)
