"""Multi-head self- and cross-attention with TRELLIS's parameter names.

Projections are plain ``nn.Linear`` modules named ``to_qkv`` (self), ``to_q`` / ``to_kv``
(cross) and ``to_out``, so LoRA can target them by name. Attention itself is
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the device has them).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS norm on queries or keys: ``normalize(x) * gamma * sqrt(head_dim)``.

    ``gamma`` has shape ``[heads, head_dim]`` (TRELLIS layout) and stays fp32.
    """

    def __init__(self, head_dim: int, heads: int) -> None:
        super().__init__()
        self.scale = head_dim**0.5
        self.gamma = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, L, heads, head_dim]``."""
        out = F.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale
        return out.to(x.dtype)


class MultiHeadAttention(nn.Module):
    """Full (non-windowed) attention over token sequences ``[B, L, C]``.

    ``kind="self"`` attends over ``x`` itself; ``kind="cross"`` attends from ``x`` to a
    context ``[B, Lc, ctx_channels]`` (the image tokens).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: int | None = None,
        kind: Literal["self", "cross"] = "self",
        qkv_bias: bool = True,
        qk_rms_norm: bool = False,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        if kind not in ("self", "cross"):
            raise ValueError(f"attention kind must be 'self' or 'cross', got {kind!r}")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self.ctx_channels = channels if ctx_channels is None else ctx_channels
        self.kind = kind
        self.qk_rms_norm = qk_rms_norm

        if kind == "self":
            self.to_qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, 2 * channels, bias=qkv_bias)
        if qk_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def _project(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Queries, keys, values as ``[B, L, heads, head_dim]``."""
        batch, length, _ = x.shape
        if self.kind == "self":
            qkv = self.to_qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
            return qkv.unbind(dim=2)
        if context is None:
            raise ValueError("cross-attention needs a context tensor [B, Lc, ctx_channels]")
        if context.shape[-1] != self.ctx_channels:
            raise ValueError(f"context has {context.shape[-1]} channels, expected {self.ctx_channels}")
        q = self.to_q(x).reshape(batch, length, self.num_heads, self.head_dim)
        kv = self.to_kv(context).reshape(batch, context.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.unbind(dim=2)
        return q, k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self._project(x, context)
        if self.qk_rms_norm:
            q = self.q_rms_norm(q)
            k = self.k_rms_norm(k)
        # SDPA wants [B, heads, L, head_dim].
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h.transpose(1, 2).reshape(batch, length, self.channels)
        return self.to_out(h)
