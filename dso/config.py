"""Typed settings for every stage of the loop.

One source of truth for defaults: each section below is a pydantic model whose
field defaults are *the* defaults. YAML files under ``configs/`` override them,
and environment variables ``DSO__SECTION__FIELD=value`` override the YAML.
Pure libraries receive their own section object, never the whole tree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


class Section(BaseModel):
    """Base for every settings section: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --- generator (dso.models) -------------------------------------------------


class FlowTransformerSettings(Section):
    """Architecture of the sparse-structure flow transformer (TRELLIS names).

    Defaults are TRELLIS image-large stage 1 (``ss_flow_img_dit_L_16l8``).
    """

    resolution: int = 16
    in_channels: int = 8
    out_channels: int = 8
    model_channels: int = 1024
    cond_channels: int = 1024
    num_blocks: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 1
    pe_mode: Literal["ape"] = "ape"
    qk_rms_norm: bool = True
    qk_rms_norm_cross: bool = False
    share_mod: bool = False


class DecoderSettings(Section):
    """Stage-1 3-D conv decoder (TRELLIS ``ss_dec_conv3d_16l8``): latent -> occupancy logits."""

    out_channels: int = 1
    latent_channels: int = 8
    num_res_blocks: int = 2
    num_res_blocks_middle: int = 2
    channels: list[int] = Field(default_factory=lambda: [512, 128, 32])


class ConditionerSettings(Section):
    """Image conditioning: DINOv2-with-registers (TRELLIS) or the tiny learned encoder."""

    kind: Literal["dinov2", "tiny"] = "dinov2"
    path: Path | None = None  # local folder of a transformers DINOv2-with-registers model
    image_size: int = 518
    crop_margin: float = 1.2
    # tiny encoder
    tiny_image_size: int = 64
    tiny_channels: int = 128


class ModelSettings(Section):
    """Which generator to build and where its weights come from."""

    source: Literal["embedded", "trellis", "random"] = "embedded"
    trellis_path: Path | None = None  # local TRELLIS model folder (pipeline.json + ckpts/)
    weights_path: Path | None = None  # embedded default: None -> weights shipped in dso/assets
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"  # "auto" -> cuda if available else cpu
    transformer: FlowTransformerSettings = Field(default_factory=FlowTransformerSettings)
    decoder: DecoderSettings = Field(default_factory=DecoderSettings)
    conditioner: ConditionerSettings = Field(default_factory=ConditionerSettings)


class SamplerSettings(Section):
    """Euler flow sampler with CFG inside a guidance interval (TRELLIS stage-1 defaults)."""

    steps: int = 12
    cfg_strength: float = 7.5
    cfg_interval: tuple[float, float] = (0.5, 1.0)
    rescale_t: float = 3.0
    sigma_min: float = 1e-5


class LoraSettings(Section):
    """LoRA on the attention projections, as in the paper's code."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["to_qkv", "to_q", "to_kv", "to_out"])


# --- oracle (dso.sim) ---------------------------------------------------------


class SimSettings(Section):
    """Stability oracle: geometry -> MuJoCo -> verdict. See dso/sim for what each knob does."""

    mode: Literal["boxes", "decompose", "hull"] = "boxes"
    timestep: float = 0.002
    integrator: Literal["euler", "implicitfast", "implicit", "rk4"] = "implicitfast"
    max_time: float = 10.0
    density: float = 1000.0
    friction: tuple[float, float, float] = (1.0, 0.005, 0.0001)
    tilt_threshold_deg: float = 20.0
    rest_linear_velocity: float = 1e-3  # m/s
    rest_angular_velocity: float = 1e-2  # rad/s
    rest_dwell_time: float = 0.2  # s the thresholds must hold
    object_scale: float = 1.0  # metres spanned by the unit cube [-0.5, 0.5]^3
    max_faces: int = 200_000
    item_timeout_s: float = 30.0
    workers: int = 0  # 0 -> one per CPU core
    coacd_threshold: float = 0.05
    coacd_seed: int = 0
    cache_dir: Path | None = None


# --- embedded default (dso.shapes, pretraining) -------------------------------


class ShapesSettings(Section):
    """Procedural prompt objects and their renders."""

    resolution: int = 64
    render_size: int = 128
    heldout_seed: int = 1_000_003
    heldout_objects: int = 16
    heldout_views: int = 2


class PretrainSettings(Section):
    """Pretraining the embedded default generator (VAE, then flow) on procedural objects."""

    seed: int = 0
    output_dir: Path = Path("runs/pretrain")


class ObjectiveSettings(Section):
    """Training objectives (dso.learner.objectives): DRO (default), DPO, SFT."""

    name: Literal["dro", "dro_paired", "dpo", "sft"] = "dro"
    dpo_beta: float = 500.0  # paper, Sec. 4
    # Balanced DRO: the unstable half's error is capped so the loss is bounded
    # below even for an all-unstable batch (velocity MSE of a trained model is ~0.1-1).
    dro_unstable_cap: float = 2.0
    t_logit_mean: float = 1.0  # logit-normal t, as in the paper's code
    t_logit_std: float = 1.0
    sigma_min: float = 1e-5  # TRELLIS flow path
    cond_drop_prob: float = 0.1  # classifier-free guidance dropout (pretraining / SFT)


class Settings(Section):
    """The whole configuration tree."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sim: SimSettings = Field(default_factory=SimSettings)
    shapes: ShapesSettings = Field(default_factory=ShapesSettings)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    objective: ObjectiveSettings = Field(default_factory=ObjectiveSettings)


ENV_PREFIX = "DSO__"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``DSO__SIM__TIMESTEP=0.001`` -> {"sim": {"timestep": 0.001}} (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw)
    return tree


def resolve_config_path(path: str | Path) -> Path:
    """Accept a file path, or the bare name of a config shipped under ``configs/``."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config file not found: {path} (also looked in {CONFIG_DIR})")


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load settings: defaults <- YAML file (if any) <- ``DSO__*`` environment variables."""
    data: dict[str, Any] = {}
    if path is not None:
        cfg_path = resolve_config_path(path)
        loaded = yaml.safe_load(cfg_path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{cfg_path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    data = _deep_merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    return Settings.model_validate(data)
