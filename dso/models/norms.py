"""Normalisation layers that always compute in fp32 (TRELLIS ``LayerNorm32`` family).

Half-precision statistics over 1024 channels lose too much; these layers upcast the
input, normalise, and hand back the caller's dtype. Parameter names are nn.LayerNorm's /
nn.GroupNorm's (``weight``, ``bias``), which is what TRELLIS checkpoints contain.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP_NORM_GROUPS = 32  # TRELLIS GroupNorm32 uses 32 groups


class LayerNorm32(nn.LayerNorm):
    """LayerNorm over the last dimension, computed in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = nn.functional.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over dim 1 of a channels-first tensor ``[B, C, *spatial]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ndim = x.dim()
        h = x.permute(0, *range(2, ndim), 1)
        h = super().forward(h)
        return h.permute(0, ndim - 1, *range(1, ndim - 1)).contiguous()


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        out = nn.functional.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype)


def channel_norm(norm_type: str, channels: int) -> nn.Module:
    """Norm for conv feature maps: ``"layer"`` (TRELLIS default) or ``"group"`` (32 groups)."""
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    if norm_type == "group":
        if channels % GROUP_NORM_GROUPS:
            raise ValueError(f"group norm needs channels divisible by {GROUP_NORM_GROUPS}, got {channels}")
        return GroupNorm32(GROUP_NORM_GROUPS, channels)
    raise ValueError(f"unknown norm_type {norm_type!r}; use 'layer' or 'group'")
