"""Timestep and 3-D position embeddings of the sparse-structure flow transformer."""

from __future__ import annotations

import math

import torch
from torch import nn

TIMESTEP_FREQUENCY_CHANNELS = 256  # TRELLIS TimestepEmbedder frequency_embedding_size
MAX_PERIOD = 10_000.0  # base of the sinusoid frequencies (timesteps and positions)
SPATIAL_DIMS = 3


def timestep_frequencies(t: torch.Tensor, dim: int, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Sinusoidal features of (fractional) timesteps: ``[cos(t f), sin(t f)]`` -> ``[N, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Scalar timestep (already scaled by 1000) -> ``[B, hidden]`` via sinusoid + 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = TIMESTEP_FREQUENCY_CHANNELS) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = timestep_frequencies(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


def sincos_position_embedding(grid_size: int, channels: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Absolute sin-cos embedding of every cell of a ``grid_size^3`` grid -> ``[grid_size^3, channels]``.

    Cells are ordered like ``x.flatten(2)`` of a ``[B, C, D, H, W]`` tensor. Each axis gets
    ``channels // 6`` frequencies laid out ``[sin(x f), cos(x f)]`` per axis; leftover
    channels are zero (TRELLIS ``AbsolutePositionEmbedder``).
    """
    freq_dim = channels // SPATIAL_DIMS // 2
    freqs = 1.0 / (MAX_PERIOD ** (torch.arange(freq_dim, dtype=torch.float32, device=device) / freq_dim))
    axes = [torch.arange(grid_size, device=device)] * SPATIAL_DIMS
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, SPATIAL_DIMS)
    angles = torch.outer(coords.reshape(-1).float(), freqs)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(coords.shape[0], -1)
    if emb.shape[1] < channels:
        pad = torch.zeros(coords.shape[0], channels - emb.shape[1], device=emb.device)
        emb = torch.cat([emb, pad], dim=-1)
    return emb
