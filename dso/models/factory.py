"""Build the generator's modules from settings: the embedded tiny model, a TRELLIS folder, or random weights.

The embedded default ships as a TRELLIS-format folder (``pipeline.json`` +
``ckpts/``) in ``dso/assets/tiny``, so it loads through the same code path as
the official weights; the one addition is the tiny image encoder, stored as
``ckpts/image_enc_tiny`` and named in ``pipeline.json`` under ``image_cond_model``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dso.config import ASSETS_DIR, ConditionerSettings, ModelSettings, SamplerSettings, Settings
from dso.models.conditioning import TinyImageEncoder, prepare_pixels
from dso.models.trellis import (
    InvalidModelSpecError,
    ModelFileMissingError,
    ModelFolderNotFoundError,
    load_trellis_stage1,
    save_trellis_stage1,
)
from dso.models.transformer import SparseStructureFlowModel
from dso.models.vae import SparseStructureDecoder, SparseStructureEncoder

TINY_DIR = ASSETS_DIR / "tiny"
IMAGE_ENCODER_KEY = "image_cond_model"
IMAGE_ENCODER_CKPT = "ckpts/image_enc_tiny"
TRAINING_RECORD = "training.json"


@dataclass
class StageOneModules:
    """The modules of stage 1 plus the image encoder when it is a learned tiny one."""

    flow: SparseStructureFlowModel
    decoder: SparseStructureDecoder
    encoder: SparseStructureEncoder | None
    image_encoder: TinyImageEncoder | None
    sampler: SamplerSettings

    def to(self, device: torch.device) -> "StageOneModules":
        for m in (self.flow, self.decoder, self.encoder, self.image_encoder):
            if m is not None:
                m.to(device)
        return self


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_tiny_modules(settings: ModelSettings, sampler: SamplerSettings | None = None) -> StageOneModules:
    """Fresh, randomly initialised modules of the configured architecture (what pretraining starts from)."""
    return StageOneModules(
        flow=SparseStructureFlowModel.from_settings(settings.transformer, dtype=settings.dtype),
        decoder=SparseStructureDecoder.from_settings(settings.decoder, dtype=settings.dtype),
        encoder=SparseStructureEncoder.from_settings(settings.encoder, dtype=settings.dtype),
        image_encoder=TinyImageEncoder.from_settings(settings.conditioner) if settings.conditioner.kind == "tiny" else None,
        sampler=sampler or SamplerSettings(),
    )


def load_tiny_modules_for_training(folder: Path, settings: ModelSettings) -> StageOneModules:
    """Every module of a TRELLIS-format tiny folder (the VAE encoder included), in fp32 and train mode: a warm start."""
    stage = load_trellis_stage1(folder, dtype="fp32", load_encoder=True)
    if stage.encoder is None:
        raise ModelFileMissingError(f"{folder} ships no sparse-structure encoder; pretraining needs one to warm-start")
    image_encoder = None
    if settings.conditioner.kind == "tiny":
        image_encoder = _load_image_encoder(Path(folder) / IMAGE_ENCODER_CKPT).float()
    modules = StageOneModules(stage.flow, stage.decoder, stage.encoder, image_encoder, stage.sampler)
    for m in (modules.flow, modules.decoder, modules.encoder, modules.image_encoder):
        if m is not None:
            m.float().train()
    return modules


def preprocess_tiny_images(images: Sequence[np.ndarray | Image.Image], settings: ConditionerSettings) -> torch.Tensor:
    """RGBA renders -> the tiny encoder's input ``[B, 4, S, S]`` (TRELLIS-style framing)."""
    pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im), mode="RGBA") for im in images]
    return prepare_pixels(pil, settings.tiny_image_size, settings, with_alpha=True)


def _save_image_encoder(encoder: TinyImageEncoder, settings: ConditionerSettings, base: Path) -> None:
    args = {"image_size": settings.tiny_image_size, "channels": settings.tiny_channels, "widths": list(settings.tiny_widths)}
    Path(str(base) + ".json").write_text(json.dumps({"name": "TinyImageEncoder", "args": args}, indent=4))
    save_file({k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}, str(base) + ".safetensors")


def _load_image_encoder(base: Path) -> TinyImageEncoder:
    spec_path, weights = Path(str(base) + ".json"), Path(str(base) + ".safetensors")
    for p in (spec_path, weights):
        if not p.is_file():
            raise ModelFileMissingError(f"tiny image encoder file not found: {p}")
    spec = json.loads(spec_path.read_text())
    if spec.get("name") != "TinyImageEncoder":
        raise InvalidModelSpecError(f"{spec_path}: expected TinyImageEncoder, got {spec.get('name')!r}")
    encoder = TinyImageEncoder(**spec["args"])
    encoder.load_state_dict(load_file(str(weights)), strict=True)
    return encoder.eval()


def export_tiny_folder(modules: StageOneModules, settings: Settings, folder: Path, training_record: dict | None = None) -> Path:
    """Write the embedded default as a TRELLIS-format folder (fp16 weights, like TRELLIS)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_trellis_stage1(folder, modules.flow, modules.decoder, modules.encoder, sampler=settings.sampler)
    if modules.image_encoder is not None:
        _save_image_encoder(modules.image_encoder, settings.model.conditioner, folder / IMAGE_ENCODER_CKPT)
        pipeline = json.loads((folder / "pipeline.json").read_text())
        pipeline["args"][IMAGE_ENCODER_KEY] = IMAGE_ENCODER_CKPT
        (folder / "pipeline.json").write_text(json.dumps(pipeline, indent=4))
    if training_record is not None:
        (folder / TRAINING_RECORD).write_text(json.dumps(training_record, indent=2))
    return folder


def load_stage_one(settings: ModelSettings) -> StageOneModules:
    """Load the modules ``settings.source`` names, on ``settings.device``, in eval mode."""
    device = resolve_device(settings.device)
    if settings.source == "random":
        return build_tiny_modules(settings).to(device)
    if settings.source == "embedded":
        folder = Path(settings.weights_path) if settings.weights_path else TINY_DIR
        if not (folder / "pipeline.json").is_file():
            raise ModelFolderNotFoundError(
                f"embedded model not found at {folder}; run `dso pretrain --config configs/tiny.yaml` to build it"
            )
    else:
        if settings.trellis_path is None:
            raise ModelFolderNotFoundError("model.source is 'trellis' but model.trellis_path is not set")
        folder = Path(settings.trellis_path)
    stage = load_trellis_stage1(folder, dtype=settings.dtype, device=device, load_encoder=False)
    image_encoder = None
    enc_base = stage.pipeline.get("args", {}).get(IMAGE_ENCODER_KEY)
    if settings.conditioner.kind == "tiny":
        if not isinstance(enc_base, str) or not enc_base.startswith("ckpts/"):
            raise InvalidModelSpecError(f"{folder}/pipeline.json names no tiny image encoder ({IMAGE_ENCODER_KEY})")
        image_encoder = _load_image_encoder(folder / enc_base).to(device)
    return StageOneModules(stage.flow, stage.decoder, None, image_encoder, stage.sampler)


def model_folder(settings: ModelSettings) -> Path:
    """The folder the weights of ``settings`` load from (the shipped tiny model for ``embedded``)."""
    if settings.source == "embedded":
        return Path(settings.weights_path) if settings.weights_path else TINY_DIR
    if settings.trellis_path is None:
        raise ModelFolderNotFoundError(f"model.source {settings.source!r} has no folder to load an encoder from")
    return Path(settings.trellis_path)


def load_vae_encoder(settings: ModelSettings) -> SparseStructureEncoder | None:
    """The sparse-structure VAE encoder (occupancy -> latent) when the model folder ships one, else None."""
    if settings.source == "random":
        return None
    stage = load_trellis_stage1(model_folder(settings), dtype=settings.dtype, device=resolve_device(settings.device))
    return None if stage.encoder is None else stage.encoder.eval()


def training_record(settings: ModelSettings) -> dict | None:
    folder = Path(settings.weights_path) if settings.weights_path else TINY_DIR
    path = folder / TRAINING_RECORD
    return json.loads(path.read_text()) if path.is_file() else None
