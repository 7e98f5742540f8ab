"""Transformer building blocks of the sparse-structure flow model (TRELLIS names)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dso.models.attention import MultiHeadAttention
from dso.models.norms import LayerNorm32

LAYER_NORM_EPS = 1e-6
ADALN_CHUNKS = 6  # shift/scale/gate for attention and for the MLP


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``[B, C]`` modulation."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class FeedForwardNet(nn.Module):
    """Two-layer MLP with tanh-GELU; keys ``mlp.0`` / ``mlp.2``."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ModulatedTransformerCrossBlock(nn.Module):
    """Self-attention + cross-attention to image tokens + MLP, with adaLN on the timestep.

    norm1/norm3 are parameter-free and modulated by the timestep; norm2 (before the
    cross-attention) is an affine LayerNorm and is not modulated. With ``share_mod`` the
    6 modulation vectors come from the model (one shared ``adaLN_modulation``).
    """

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        use_checkpoint: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        qkv_bias: bool = True,
        share_mod: bool = False,
    ) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=LAYER_NORM_EPS)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=LAYER_NORM_EPS)
        self.self_attn = MultiHeadAttention(
            channels, num_heads=num_heads, kind="self", qkv_bias=qkv_bias, qk_rms_norm=qk_rms_norm
        )
        self.cross_attn = MultiHeadAttention(
            channels,
            num_heads=num_heads,
            ctx_channels=ctx_channels,
            kind="cross",
            qkv_bias=qkv_bias,
            qk_rms_norm=qk_rms_norm_cross,
        )
        self.mlp = FeedForwardNet(channels, mlp_ratio=mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, ADALN_CHUNKS * channels, bias=True))

    def _forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not self.share_mod:
            mod = self.adaLN_modulation(mod)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(ADALN_CHUNKS, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + self.self_attn(h) * gate_msa.unsqueeze(1)
        x = x + self.cross_attn(self.norm2(x), context)
        h = modulate(self.norm3(x), shift_mlp, scale_mlp)
        return x + self.mlp(h) * gate_mlp.unsqueeze(1)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, mod, context, use_reentrant=False)
        return self._forward(x, mod, context)
