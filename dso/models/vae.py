"""Stage-1 sparse-structure VAE: dense 3-D conv encoder and decoder (TRELLIS names).

Decoder: latent ``[B, 8, R, R, R]`` -> occupancy logits ``[B, 1, 4R, 4R, 4R]`` (occupied
where logit > 0). Encoder: occupancy ``[B, 1, 4R, 4R, 4R]`` -> latent mean / logvar.
Names and shapes match ``ss_dec_conv3d_16l8_fp16`` / ``ss_enc_conv3d_16l8_fp16``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dso.config import DecoderSettings, EncoderSettings
from dso.models.norms import channel_norm
from dso.models.precision import DTypeName, cast_torso_, resolve_dtype

NormType = Literal["layer", "group"]
SCALE = 2  # each up / down sampling stage changes the resolution by 2
SPATIAL_DIMS = 3


def pixel_shuffle_3d(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """``[B, C * s^3, D, H, W]`` -> ``[B, C, D*s, H*s, W*s]`` (TRELLIS channel layout)."""
    batch, channels, d, h, w = x.shape
    s = scale_factor
    if channels % s**SPATIAL_DIMS:
        raise ValueError(f"{channels} channels cannot be pixel-shuffled by {s}")
    out_channels = channels // s**SPATIAL_DIMS
    x = x.reshape(batch, out_channels, s, s, s, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(batch, out_channels, d * s, h * s, w * s)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> conv (zero-initialised), plus a skip path."""

    def __init__(self, channels: int, out_channels: int | None = None, norm_type: NormType = "layer") -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.norm1 = channel_norm(norm_type, channels)
        self.norm2 = channel_norm(norm_type, self.out_channels)
        self.conv1 = nn.Conv3d(channels, self.out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(self.out_channels, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip_connection: nn.Module = (
            nn.Conv3d(channels, self.out_channels, 1) if channels != self.out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    """Halve the resolution with a stride-2 conv (key ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, SCALE, stride=SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpsampleBlock3d(nn.Module):
    """Double the resolution: conv to ``out * 8`` channels, then 3-D pixel shuffle (key ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * SCALE**SPATIAL_DIMS, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.conv(x), SCALE)


class _ConvTorso(nn.Module):
    """Shared precision handling: ``blocks`` and ``middle_block`` run in the compute dtype."""

    blocks: nn.ModuleList
    middle_block: nn.Sequential
    _compute_dtype: torch.dtype

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the residual torso (TRELLIS exposes the same attribute)."""
        return self._compute_dtype

    @property
    def device(self) -> torch.device:
        return self.input_layer.weight.device

    def set_compute_dtype(self, dtype: DTypeName | torch.dtype) -> None:
        """Cast the conv weights of ``blocks`` and ``middle_block``; input/output layers stay fp32."""
        self._compute_dtype = resolve_dtype(dtype)
        cast_torso_(self.blocks, self._compute_dtype)
        cast_torso_(self.middle_block, self._compute_dtype)


def _check_channels(channels: list[int]) -> list[int]:
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
    return list(channels)


class SparseStructureDecoder(_ConvTorso):
    """Latent ``[B, latent_channels, R, R, R]`` -> logits ``[B, out_channels, R * 2^(n-1), ...]``.

    With TRELLIS's three stages (``channels=[512, 128, 32]``) a 16^3 latent gives 64^3 logits.
    """

    def __init__(
        self,
        out_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: NormType = "layer",
        use_fp16: bool = False,
        *,
        dtype: DTypeName | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        self.out_channels = out_channels
        self.latent_channels = latent_channels
        self.num_res_blocks = num_res_blocks
        self.channels = channels
        self.num_res_blocks_middle = num_res_blocks_middle
        self.norm_type = norm_type

        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(
            *[ResBlock3d(channels[0], channels[0], norm_type) for _ in range(num_res_blocks_middle)]
        )
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch, norm_type) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.out_layer = nn.Sequential(
            channel_norm(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], out_channels, 3, padding=1),
        )
        self._compute_dtype = torch.float32
        self.set_compute_dtype(resolve_dtype(dtype, use_fp16=use_fp16))

    @classmethod
    def from_settings(cls, settings: DecoderSettings, dtype: DTypeName | torch.dtype | None = None) -> SparseStructureDecoder:
        return cls(**settings.model_dump(), dtype=dtype)

    @property
    def upsampling(self) -> int:
        """Output resolution / latent resolution."""
        return SCALE ** (len(self.channels) - 1)

    @property
    def config(self) -> dict[str, Any]:
        """The TRELLIS json ``args`` that rebuild this model."""
        return {
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "num_res_blocks": self.num_res_blocks,
            "num_res_blocks_middle": self.num_res_blocks_middle,
            "channels": list(self.channels),
            "norm_type": self.norm_type,
            "use_fp16": self._compute_dtype == torch.float16,
        }

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"z has shape {list(z.shape)}, expected [B, {self.latent_channels}, R, R, R]")
        h = self.input_layer(z.to(self.input_layer.weight.dtype)).to(self._compute_dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        h = h.to(self.out_layer[-1].weight.dtype)
        return self.out_layer(h).to(z.dtype)


class SparseStructureEncoder(_ConvTorso):
    """Occupancy ``[B, in_channels, V, V, V]`` -> latent ``[B, latent_channels, V / 2^(n-1), ...]``.

    ``forward`` returns the posterior mean (or a sample with ``sample_posterior``); with
    ``return_raw`` it returns ``(z, mean, logvar)`` like TRELLIS.
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        num_res_blocks: int,
        channels: list[int],
        num_res_blocks_middle: int = 2,
        norm_type: NormType = "layer",
        use_fp16: bool = False,
        *,
        dtype: DTypeName | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.num_res_blocks = num_res_blocks
        self.channels = channels
        self.num_res_blocks_middle = num_res_blocks_middle
        self.norm_type = norm_type

        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(channels):
            self.blocks.extend(ResBlock3d(ch, ch, norm_type) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                self.blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.middle_block = nn.Sequential(
            *[ResBlock3d(channels[-1], channels[-1], norm_type) for _ in range(num_res_blocks_middle)]
        )
        self.out_layer = nn.Sequential(
            channel_norm(norm_type, channels[-1]),
            nn.SiLU(),
            nn.Conv3d(channels[-1], 2 * latent_channels, 3, padding=1),
        )
        self._compute_dtype = torch.float32
        self.set_compute_dtype(resolve_dtype(dtype, use_fp16=use_fp16))

    @classmethod
    def from_settings(cls, settings: EncoderSettings, dtype: DTypeName | torch.dtype | None = None) -> SparseStructureEncoder:
        return cls(**settings.model_dump(), dtype=dtype)

    @property
    def downsampling(self) -> int:
        """Input resolution / latent resolution."""
        return SCALE ** (len(self.channels) - 1)

    @property
    def config(self) -> dict[str, Any]:
        """The TRELLIS json ``args`` that rebuild this model."""
        return {
            "in_channels": self.in_channels,
            "latent_channels": self.latent_channels,
            "num_res_blocks": self.num_res_blocks,
            "num_res_blocks_middle": self.num_res_blocks_middle,
            "channels": list(self.channels),
            "norm_type": self.norm_type,
            "use_fp16": self._compute_dtype == torch.float16,
        }

    def forward(
        self,
        x: torch.Tensor,
        sample_posterior: bool = False,
        return_raw: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"x has shape {list(x.shape)}, expected [B, {self.in_channels}, V, V, V]")
        if any(s % self.downsampling for s in x.shape[2:]):
            raise ValueError(f"spatial size {list(x.shape[2:])} is not divisible by {self.downsampling}")
        h = self.input_layer(x.to(self.input_layer.weight.dtype)).to(self._compute_dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        h = self.out_layer(h.to(self.out_layer[-1].weight.dtype))
        mean, logvar = h.float().chunk(2, dim=1)
        if sample_posterior:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        else:
            z = mean
        if return_raw:
            return z, mean, logvar
        return z
