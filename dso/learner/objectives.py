"""The DSO objectives, each a few lines over per-sample velocity errors.

Every function takes per-sample flow-matching errors ``err`` ([B], from
``flow_matching.per_sample_error``) computed at the same t and noise, and
returns a scalar loss. Lower error = the model denoises that sample better =
it becomes more likely under the policy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; 0 (with a gradient path) when the mask is empty."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def dro_loss(err: torch.Tensor, stable: torch.Tensor, unstable_cap: float) -> torch.Tensor:
    """DRO, the paper's unpaired form (Eq. 5) with the two halves weighted equally.

    Stable samples are pulled in (their error minimised), unstable ones pushed out
    (their error maximised). Each half is averaged on its own, so the balance of a
    batch does not tilt the update, and the unstable error is capped so the loss is
    bounded below (>= -cap / 2) even for an all-unstable batch.
    """
    stable = stable.bool()
    pull = _masked_mean(err, stable)
    push = _masked_mean(err.clamp(max=unstable_cap), ~stable)
    return 0.5 * (pull - push)


def anchored_dro_loss(err: torch.Tensor, stable: torch.Tensor, ref_err: torch.Tensor, margin: float) -> torch.Tensor:
    """DRO with a trust region: the push on an unstable sample stops once its error is ``margin``
    (relative) above the reference's (adapter off, same t and noise).

    Raising an error is unbounded and easy where lowering one stops at the data's noise
    floor, so plain DRO can win by denoising everything worse and drifts into blocks on
    wide bases. Anchoring the push to the reference keeps the model near it, as DPO's
    sigmoid does, while the pull and the balanced halves are those of :func:`dro_loss`.
    Bounded below by ``-margin * mean(ref_err) / 2``. ``ref_err`` is read on unstable rows only.
    """
    stable = stable.bool()
    pull = _masked_mean(err, stable)
    push = _masked_mean(torch.minimum(err - ref_err, margin * ref_err), ~stable)
    return 0.5 * (pull - push)


def dro_paired_loss(err_stable: torch.Tensor, err_unstable: torch.Tensor) -> torch.Tensor:
    """DRO as the paper's code runs it: balanced (stable, unstable) pairs, mean of the differences."""
    return (err_stable - err_unstable).mean()


def dpo_loss(
    err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor, beta: float
) -> torch.Tensor:
    """Diffusion-DPO adapted to flow matching (Eq. 7): w = stable (winner), l = unstable (loser).

    The reference errors come from the same network with the adapter disabled, at
    the same t and noise. Equals log 2 when the policy equals the reference.
    """
    margin = (err_w - ref_err_w) - (err_l - ref_err_l)
    return -F.logsigmoid(-0.5 * beta * margin).mean()


def sft_loss(err: torch.Tensor, stable: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning baseline: ordinary flow matching on stable samples only."""
    return _masked_mean(err, stable.bool())
