"""Sparse-structure flow transformer: our implementation of TRELLIS stage 1.

Parameter and buffer names match TRELLIS's ``SparseStructureFlowModel`` exactly, so the
official ``ss_flow_img_dit_L_16l8_fp16.safetensors`` loads with ``strict=True``.
The model predicts the flow velocity of a ``[B, 8, 16, 16, 16]`` latent given the
timestep (already multiplied by 1000) and image tokens ``[B, L, cond_channels]``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dso.config import FlowTransformerSettings
from dso.models.blocks import ADALN_CHUNKS, ModulatedTransformerCrossBlock
from dso.models.embeddings import TimestepEmbedder, sincos_position_embedding
from dso.models.precision import DTypeName, cast_torso_, resolve_dtype

SPATIAL_DIMS = 3


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``[B, C, D, H, W]`` -> ``[B, C * p^3, D/p, H/p, W/p]`` (channel order: C, then the p^3 offsets)."""
    if patch_size == 1:
        return x
    batch, channels, *spatial = x.shape
    for size in spatial:
        if size % patch_size:
            raise ValueError(f"spatial size {size} is not divisible by patch_size {patch_size}")
    d, h, w = (s // patch_size for s in spatial)
    p = patch_size
    x = x.reshape(batch, channels, d, p, h, p, w, p)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(batch, channels * p**SPATIAL_DIMS, d, h, w)


def unpatchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    if patch_size == 1:
        return x
    batch, channels, d, h, w = x.shape
    p = patch_size
    if channels % p**SPATIAL_DIMS:
        raise ValueError(f"{channels} channels cannot be unpatchified with patch_size {p}")
    x = x.reshape(batch, channels // p**SPATIAL_DIMS, p, p, p, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(batch, channels // p**SPATIAL_DIMS, d * p, h * p, w * p)


class SparseStructureFlowModel(nn.Module):
    """TRELLIS stage-1 flow transformer (DiT with cross-attention to image tokens).

    The constructor takes the keyword arguments of TRELLIS's checkpoint json ``args``.
    ``dtype`` (``"fp32" | "bf16" | "fp16"`` or a torch dtype) chooses the precision of the
    transformer blocks' Linear layers; ``None`` follows ``use_fp16`` like TRELLIS. Embeddings,
    norms, RMS-norm gammas and the input/output layers always stay fp32. All three dtypes
    run on CPU with torch >= 2.1 (slower than fp32 there; use them on GPUs).
    """

    def __init__(
        self,
        resolution: int,
        in_channels: int,
        model_channels: int,
        cond_channels: int,
        out_channels: int,
        num_blocks: int,
        num_heads: int | None = None,
        num_head_channels: int | None = 64,
        mlp_ratio: float = 4,
        patch_size: int = 2,
        pe_mode: Literal["ape", "rope"] = "ape",
        use_fp16: bool = False,
        use_checkpoint: bool = False,
        share_mod: bool = False,
        qk_rms_norm: bool = False,
        qk_rms_norm_cross: bool = False,
        *,
        dtype: DTypeName | torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if pe_mode != "ape":
            raise ValueError(f"pe_mode {pe_mode!r} is not supported (TRELLIS stage 1 uses 'ape')")
        if num_heads is None:
            if not num_head_channels:
                raise ValueError("give num_heads or num_head_channels")
            num_heads = model_channels // num_head_channels
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch_size}")
        self.resolution = resolution
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.cond_channels = cond_channels
        self.out_channels = out_channels
        self.num_blocks = num_blocks
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.patch_size = patch_size
        self.pe_mode = pe_mode
        self.use_checkpoint = use_checkpoint
        self.share_mod = share_mod
        self.qk_rms_norm = qk_rms_norm
        self.qk_rms_norm_cross = qk_rms_norm_cross

        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(
                nn.SiLU(), nn.Linear(model_channels, ADALN_CHUNKS * model_channels, bias=True)
            )
        self.register_buffer("pos_emb", sincos_position_embedding(resolution // patch_size, model_channels))
        self.input_layer = nn.Linear(in_channels * patch_size**SPATIAL_DIMS, model_channels)
        self.blocks = nn.ModuleList(
            ModulatedTransformerCrossBlock(
                model_channels,
                cond_channels,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                use_checkpoint=use_checkpoint,
                qk_rms_norm=qk_rms_norm,
                qk_rms_norm_cross=qk_rms_norm_cross,
                share_mod=share_mod,
            )
            for _ in range(num_blocks)
        )
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size**SPATIAL_DIMS)
        self.initialize_weights()
        self._compute_dtype = torch.float32
        self.set_compute_dtype(resolve_dtype(dtype, use_fp16=use_fp16))

    @classmethod
    def from_settings(
        cls, settings: FlowTransformerSettings, dtype: DTypeName | torch.dtype | None = None
    ) -> SparseStructureFlowModel:
        """Build from the typed settings section."""
        return cls(**settings.model_dump(), dtype=dtype)

    # --- precision -----------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the transformer blocks (TRELLIS exposes the same attribute)."""
        return self._compute_dtype

    @property
    def device(self) -> torch.device:
        return self.pos_emb.device

    def set_compute_dtype(self, dtype: DTypeName | torch.dtype) -> None:
        """Cast the blocks' Linear weights to ``dtype``; everything else stays fp32."""
        self._compute_dtype = resolve_dtype(dtype)
        cast_torso_(self.blocks, self._compute_dtype)

    @property
    def config(self) -> dict[str, Any]:
        """The TRELLIS json ``args`` that rebuild this model."""
        return {
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "model_channels": self.model_channels,
            "cond_channels": self.cond_channels,
            "out_channels": self.out_channels,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "patch_size": self.patch_size,
            "pe_mode": self.pe_mode,
            "use_fp16": self._compute_dtype == torch.float16,
            "share_mod": self.share_mod,
            "qk_rms_norm": self.qk_rms_norm,
            "qk_rms_norm_cross": self.qk_rms_norm_cross,
        }

    # --- init ----------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """DiT init: xavier Linear, small timestep MLP, zero adaLN and output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        modulations = [self.adaLN_modulation] if self.share_mod else [b.adaLN_modulation for b in self.blocks]
        for modulation in modulations:
            nn.init.zeros_(modulation[-1].weight)
            nn.init.zeros_(modulation[-1].bias)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    # --- forward -------------------------------------------------------------------

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        expected = [x.shape[0], self.in_channels, *[self.resolution] * SPATIAL_DIMS]
        if list(x.shape) != expected:
            raise ValueError(f"x has shape {list(x.shape)}, expected {expected}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t has shape {list(t.shape)}, expected [{x.shape[0]}] (timesteps * 1000)")
        if cond.dim() != 3 or cond.shape[0] != x.shape[0] or cond.shape[2] != self.cond_channels:
            raise ValueError(
                f"cond has shape {list(cond.shape)}, expected [{x.shape[0]}, L, {self.cond_channels}]"
            )
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Velocity ``[B, out_channels, R, R, R]`` for latent ``x``, timestep ``t * 1000`` ``[B]``, tokens ``cond``."""
        t = self._check_inputs(x, t, cond)
        h = patchify(x, self.patch_size)
        h = h.flatten(2).transpose(1, 2)  # [B, tokens, C * p^3]
        h = self.input_layer(h.to(self.input_layer.weight.dtype))
        h = h + self.pos_emb[None]
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        h = h.to(self._compute_dtype)
        t_emb = t_emb.to(self._compute_dtype)
        cond = cond.to(self._compute_dtype)
        for block in self.blocks:
            h = block(h, t_emb, cond)
        h = F.layer_norm(h.float(), h.shape[-1:])
        h = self.out_layer(h.to(self.out_layer.weight.dtype))
        grid = self.resolution // self.patch_size
        h = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], grid, grid, grid)
        return unpatchify(h, self.patch_size).to(x.dtype)
