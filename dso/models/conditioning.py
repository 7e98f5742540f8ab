"""Image conditioners: prompt images -> condition tokens ``[B, L, D]`` for the flow transformer.

Two implementations behind one interface:

* :class:`Dinov2Conditioner` reproduces TRELLIS's image conditioning with a
  DINOv2-with-registers model loaded from a local folder (never downloaded).
  Tokens are the last layer's outputs *before* the model's final layer norm,
  followed by a parameter-free layer norm: ``[B, 1374, 1024]`` for ViT-L/14-reg
  at 518 px (1 CLS + 4 registers + 37 x 37 patches).
* :class:`TinyConditioner` runs :class:`TinyImageEncoder`, a small CNN trained
  jointly with the tiny embedded flow model, so the default configuration
  runs on a CPU.

Both frame the object exactly like TRELLIS (see :mod:`dso.models.image_io`).
Images without transparency are NOT background-removed (no ``rembg``): they
are used whole, as if fully opaque. The unconditional branch is zeros shaped
like the condition, as in TRELLIS.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dso.config import ConditionerSettings
from dso.models.image_io import frame_object

# DINOv2 was trained on ImageNet-normalised inputs; TRELLIS uses the same constants.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def token_layer_norm(tokens: torch.Tensor) -> torch.Tensor:
    """Parameter-free layer norm over the channel dim (TRELLIS applies it to DINOv2 features)."""
    return F.layer_norm(tokens, tokens.shape[-1:])


def prepare_pixels(
    images: Sequence[Image.Image],
    size: int,
    settings: ConditionerSettings,
    with_alpha: bool = False,
) -> torch.Tensor:
    """Frame each image like TRELLIS and stack into a normalised float tensor ``[B, C, size, size]``.

    RGB (premultiplied, black background) is ImageNet-normalised. With
    ``with_alpha`` the alpha mask is appended as a fourth channel in [-1, 1],
    which gives the tiny encoder the silhouette directly.
    """
    if isinstance(images, Image.Image):
        raise TypeError("pass a list of images, not a single PIL image")
    if len(images) == 0:
        raise ValueError("need at least one image to encode")
    framed = np.stack(
        [frame_object(img, size, settings.alpha_threshold, settings.crop_margin) for img in images]
    )
    pixels = torch.from_numpy(framed).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (pixels[:, :3] - mean) / std
    if not with_alpha:
        return rgb
    return torch.cat([rgb, pixels[:, 3:4] * 2 - 1], dim=1)


class ImageConditioner(ABC):
    """Turns prompt images into condition tokens ``[B, token_count, dim]``."""

    @property
    @abstractmethod
    def token_count(self) -> int:
        """Number of condition tokens L per image."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Channel width D of each token (the flow model's ``cond_channels``)."""

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @abstractmethod
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Condition tokens for a batch of images, ``[B, token_count, dim]``."""

    def unconditional(self, batch: int) -> torch.Tensor:
        """The unconditional branch for classifier-free guidance: zeros shaped like the condition."""
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        return torch.zeros(batch, self.token_count, self.dim, device=self.device, dtype=self.dtype)


class Dinov2Conditioner(ImageConditioner):
    """TRELLIS's conditioner: DINOv2 ViT-L/14 with registers, from a local ``transformers`` folder.

    The folder is what ``Dinov2WithRegistersModel.save_pretrained`` writes
    (``config.json`` + weights), e.g. a local copy of
    ``facebook/dinov2-with-registers-large``. Nothing is downloaded. Images
    without transparency are used whole (no background removal; see module doc).
    """

    def __init__(
        self,
        settings: ConditionerSettings,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if settings.path is None:
            raise ValueError(
                "ConditionerSettings.path must name a local DINOv2-with-registers folder for kind='dinov2'"
            )
        path = Path(settings.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a transformers model folder (no config.json)")
        from transformers import Dinov2WithRegistersModel  # heavy import, only when this conditioner is used

        model = Dinov2WithRegistersModel.from_pretrained(path, local_files_only=True)
        patch = model.config.patch_size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        if settings.image_size % patch != 0:
            raise ValueError(f"image_size {settings.image_size} is not a multiple of the patch size {patch}")
        self.settings = settings
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self._grid = settings.image_size // patch
        self._registers = int(model.config.num_register_tokens)
        self._dim = int(model.config.hidden_size)

    @property
    def token_count(self) -> int:
        return 1 + self._registers + self._grid * self._grid

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = prepare_pixels(images, self.settings.image_size, self.settings)
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        # Embeddings + encoder, skipping model.layernorm: TRELLIS's "x_prenorm" features.
        # (Cheaper than output_hidden_states=True, which keeps every layer's tokens.)
        prenorm = self.model.encoder(self.model.embeddings(pixels)).last_hidden_state
        return token_layer_norm(prenorm)


class TinyImageEncoder(nn.Module):
    """A small CNN image encoder for the tiny embedded generator, trained jointly with it.

    Input: framed RGBA (premultiplied RGB, ImageNet-normalised, plus alpha in
    [-1, 1]) at ``image_size``. Each width in ``widths`` is one stride-2 stage,
    so the output is a ``grid x grid`` map with ``grid = image_size / 2**len(widths)``,
    flattened to tokens, plus a learned position embedding, then the same
    parameter-free layer norm as the DINOv2 path.
    """

    in_channels = 4  # premultiplied RGB + alpha
    pos_emb_init_std = 0.02  # ViT-style small init so the position term starts as a hint

    def __init__(self, image_size: int, channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage")
        stride = 2 ** len(widths)
        if image_size % stride != 0:
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(widths) = {stride}")
        self.image_size = image_size
        self.channels = channels
        self.grid = image_size // stride
        layers: list[nn.Module] = []
        previous = self.in_channels
        for width in widths:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(8, width), width),
                nn.SiLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(math.gcd(8, width), width),
                nn.SiLU(),
            ]
            previous = width
        self.stages = nn.Sequential(*layers)
        self.proj = nn.Conv2d(previous, channels, 1)
        self.pos_emb = nn.Parameter(torch.randn(1, self.grid * self.grid, channels) * self.pos_emb_init_std)

    @classmethod
    def from_settings(cls, settings: ConditionerSettings) -> TinyImageEncoder:
        return cls(settings.tiny_image_size, settings.tiny_channels, settings.tiny_widths)

    @property
    def token_count(self) -> int:
        return self.grid * self.grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 4, S, S]`` framed pixels -> ``[B, grid*grid, channels]`` layer-normed tokens."""
        if pixels.ndim != 4 or pixels.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            size = self.image_size
            raise ValueError(f"expected pixels [B, {self.in_channels}, {size}, {size}], got {tuple(pixels.shape)}")
        features = self.proj(self.stages(pixels))  # [B, D, grid, grid]
        tokens = features.flatten(2).transpose(1, 2) + self.pos_emb
        return token_layer_norm(tokens)


class TinyConditioner(ImageConditioner):
    """Conditioner over a :class:`TinyImageEncoder`; gradients flow when the encoder trains."""

    def __init__(self, encoder: TinyImageEncoder, settings: ConditionerSettings) -> None:
        self.encoder = encoder
        self.settings = settings

    @property
    def token_count(self) -> int:
        return self.encoder.token_count

    @property
    def dim(self) -> int:
        return self.encoder.channels

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_emb.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.pos_emb.dtype

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Framed, normalised encoder input ``[B, 4, S, S]`` (cache it when training on fixed renders)."""
        pixels = prepare_pixels(images, self.encoder.image_size, self.settings, with_alpha=True)
        return pixels.to(device=self.device, dtype=self.dtype)

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.encoder(self.prepare(images))


def build_conditioner(
    settings: ConditionerSettings,
    tiny_encoder: TinyImageEncoder | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ImageConditioner:
    """The conditioner ``settings.kind`` names.

    For ``kind="tiny"`` pass the trained encoder (its weights live with the
    embedded generator); without one a freshly initialised encoder is built,
    which is what pretraining starts from.
    """
    if settings.kind == "dinov2":
        if tiny_encoder is not None:
            raise ValueError("a tiny_encoder was given but ConditionerSettings.kind is 'dinov2'")
        return Dinov2Conditioner(settings, device=device, dtype=dtype)
    if settings.kind == "tiny":
        encoder = tiny_encoder if tiny_encoder is not None else TinyImageEncoder.from_settings(settings)
        return TinyConditioner(encoder.to(device=device, dtype=dtype), settings)
    raise ValueError(f"unknown conditioner kind {settings.kind!r}")
