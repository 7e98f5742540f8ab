"""Read and write TRELLIS model folders (stage 1 only), from a local path.

A TRELLIS folder holds ``pipeline.json`` (``{"name": ..., "args": {"models": {key: "ckpts/<name>"},
"sparse_structure_sampler": {...}, ...}}``) and, per model, ``ckpts/<name>.json``
(``{"name": class, "args": {...}}``) next to ``ckpts/<name>.safetensors``. We build our
classes from the json args and load the weights with strict key / shape checks.
Nothing here downloads anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dso.config import SamplerSettings
from dso.models.precision import DTypeName, resolve_dtype
from dso.models.transformer import SparseStructureFlowModel
from dso.models.vae import SparseStructureDecoder, SparseStructureEncoder

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"
FLOW_KEY = "sparse_structure_flow_model"
DECODER_KEY = "sparse_structure_decoder"
ENCODER_KEY = "sparse_structure_encoder"  # ours; TRELLIS's pipeline.json does not list the encoder
SAMPLER_KEY = "sparse_structure_sampler"
DEFAULT_ENCODER_CKPT = "ckpts/ss_enc_conv3d_16l8_fp16"  # where TRELLIS-image-large keeps it
DEFAULT_CKPT_NAMES = {
    FLOW_KEY: "ckpts/ss_flow_img_dit_L_16l8_fp16",
    DECODER_KEY: "ckpts/ss_dec_conv3d_16l8_fp16",
    ENCODER_KEY: DEFAULT_ENCODER_CKPT,
}
PIPELINE_NAME = "TrellisImageTo3DPipeline"
SAMPLER_NAME = "FlowEulerGuidanceIntervalSampler"
# pipeline.json sampler param -> SamplerSettings field (TRELLIS.2 spells some differently)
SAMPLER_PARAM_ALIASES = {
    "steps": "steps",
    "cfg_strength": "cfg_strength",
    "guidance_strength": "cfg_strength",
    "cfg_interval": "cfg_interval",
    "guidance_interval": "cfg_interval",
    "rescale_t": "rescale_t",
}


# --- errors -------------------------------------------------------------------------


class TrellisLoadError(Exception):
    """Base class: a TRELLIS folder or checkpoint could not be loaded."""


class ModelFolderNotFoundError(TrellisLoadError, FileNotFoundError):
    """The model folder does not exist."""


class ModelFileMissingError(TrellisLoadError, FileNotFoundError):
    """A file the folder should contain (pipeline.json, a ckpt json or safetensors) is missing."""


class InvalidModelSpecError(TrellisLoadError, ValueError):
    """A json file is malformed, or its args do not fit the class."""


class UnsupportedModelClassError(TrellisLoadError, ValueError):
    """The json names a model class we do not implement."""


@dataclass(frozen=True)
class StateDictDiff:
    """How a checkpoint's keys and shapes differ from a module's state dict."""

    missing: list[str] = field(default_factory=list)  # in the module, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the module
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, expected, found

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def clip(items: list[str]) -> str:
            more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        parts = []
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {clip(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {clip(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k}: expected {list(e)}, found {list(f)}" for k, e, f in self.mismatched]
            parts.append(f"wrong shapes ({len(shapes)}): {clip(shapes)}")
        return "; ".join(parts)


class CheckpointMismatchError(TrellisLoadError, ValueError):
    """The checkpoint's keys or shapes do not match the module built from its json."""

    def __init__(self, path: Path | str, diff: StateDictDiff) -> None:
        self.path = Path(path)
        self.diff = diff
        super().__init__(f"{path}: checkpoint does not match the model: {diff.describe()}")


# --- model registry -----------------------------------------------------------------

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "SparseStructureFlowModel": SparseStructureFlowModel,
    "SparseStructureDecoder": SparseStructureDecoder,
    "SparseStructureEncoder": SparseStructureEncoder,
}


def build_model(name: str, args: Mapping[str, Any], dtype: DTypeName | torch.dtype | None = None) -> nn.Module:
    """Build a model from a TRELLIS json ``{"name", "args"}`` pair.

    ``dtype`` overrides the compute precision; ``None`` keeps the json's ``use_fp16``.
    """
    if name not in MODEL_REGISTRY:
        raise UnsupportedModelClassError(
            f"model class {name!r} is not supported; supported: {sorted(MODEL_REGISTRY)}"
        )
    try:
        return MODEL_REGISTRY[name](**dict(args), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidModelSpecError(f"cannot build {name} from args {dict(args)}: {exc}") from exc


# --- checkpoints --------------------------------------------------------------------


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a safetensors file, read from its header only."""
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def diff_state_dict(module: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> StateDictDiff:
    """Compare a module's state dict with checkpoint key -> shape."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return StateDictDiff(
        missing=sorted(k for k in expected if k not in shapes),
        unexpected=sorted(k for k in shapes if k not in expected),
        mismatched=[(k, expected[k], tuple(shapes[k])) for k in sorted(expected) if k in shapes and tuple(shapes[k]) != expected[k]],
    )


def load_checkpoint(module: nn.Module, path: Path | str, strict: bool = True) -> StateDictDiff:
    """Load a safetensors file into ``module`` (values cast to each parameter's dtype).

    Wrong shapes always raise :class:`CheckpointMismatchError`; missing / unexpected keys
    raise too when ``strict``. Returns the diff (empty when everything matched).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileMissingError(f"checkpoint file not found: {path}")
    diff = diff_state_dict(module, _checkpoint_shapes(path))
    if diff.mismatched or (strict and not diff.ok):
        raise CheckpointMismatchError(path, diff)
    state = load_file(str(path), device="cpu")
    module.load_state_dict(state, strict=False)
    return diff


def save_checkpoint(module: nn.Module, path: Path | str, dtype: torch.dtype | None = torch.float16) -> None:
    """Write ``module``'s state dict as safetensors; ``dtype`` casts floating tensors (TRELLIS ships fp16)."""
    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous()
    save_file(state, str(path))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ModelFileMissingError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidModelSpecError(f"{path} is not valid json: {exc}") from exc


def _resolve_device(device: torch.device | str) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    ckpt_base: Path | str,
    dtype: DTypeName | torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Load ``<ckpt_base>.json`` + ``<ckpt_base>.safetensors`` strictly, in eval mode.

    The module is built on the meta device first so that a 555 M-parameter model costs no
    random initialisation; memory is allocated once the checkpoint is known to fit.
    """
    base = str(ckpt_base)
    json_path, weights_path = Path(base + ".json"), Path(base + ".safetensors")
    spec = _read_json(json_path)
    if not isinstance(spec, dict) or "name" not in spec or not isinstance(spec.get("args", {}), dict):
        raise InvalidModelSpecError(f'{json_path} must hold {{"name": class, "args": {{...}}}}, got {spec!r}')
    if not weights_path.is_file():
        raise ModelFileMissingError(f"checkpoint file not found: {weights_path}")
    with torch.device("meta"):
        module = build_model(spec["name"], spec.get("args", {}), dtype=dtype)
    diff = diff_state_dict(module, _checkpoint_shapes(weights_path))
    if not diff.ok:
        raise CheckpointMismatchError(weights_path, diff)
    module = module.to_empty(device=_resolve_device(device))
    state = load_file(str(weights_path), device="cpu")
    module.load_state_dict(state, strict=True)
    return module.eval()


def save_model(module: nn.Module, ckpt_base: Path | str, dtype: torch.dtype | None = torch.float16) -> None:
    """Write ``<ckpt_base>.json`` (class name + ``module.config``) and ``<ckpt_base>.safetensors``."""
    name = type(module).__name__
    if name not in MODEL_REGISTRY:
        raise UnsupportedModelClassError(f"cannot save {name}; supported: {sorted(MODEL_REGISTRY)}")
    base = Path(str(ckpt_base))
    base.parent.mkdir(parents=True, exist_ok=True)
    Path(str(base) + ".json").write_text(json.dumps({"name": name, "args": module.config}, indent=4))
    save_checkpoint(module, str(base) + ".safetensors", dtype=dtype)


# --- pipeline folders ---------------------------------------------------------------


def sampler_settings_from_pipeline(pipeline: Mapping[str, Any], base: SamplerSettings | None = None) -> SamplerSettings:
    """Stage-1 sampler settings from a pipeline.json dict; keys it lacks keep ``base``'s values."""
    settings = (base or SamplerSettings()).model_dump()
    sampler = pipeline.get("args", {}).get(SAMPLER_KEY)
    if sampler is None:
        return SamplerSettings(**settings)
    name = sampler.get("name", SAMPLER_NAME)
    if name != SAMPLER_NAME:
        log.warning("pipeline.json names sampler %s; sampling with %s semantics", name, SAMPLER_NAME)
    sigma_min = sampler.get("args", {}).get("sigma_min")
    if sigma_min is not None:
        settings["sigma_min"] = float(sigma_min)
    for key, value in sampler.get("params", {}).items():
        target = SAMPLER_PARAM_ALIASES.get(key)
        if target is None:
            log.warning("ignoring unsupported sparse_structure_sampler param %s=%r", key, value)
            continue
        settings[target] = tuple(value) if target == "cfg_interval" else value
    try:
        return SamplerSettings(**settings)
    except ValueError as exc:
        raise InvalidModelSpecError(f"invalid sparse_structure_sampler params in pipeline.json: {exc}") from exc


@dataclass
class TrellisStage1:
    """TRELLIS stage 1 loaded from a folder: flow transformer, decoder, optional encoder, sampler."""

    flow: SparseStructureFlowModel
    decoder: SparseStructureDecoder
    encoder: SparseStructureEncoder | None
    sampler: SamplerSettings
    pipeline: dict[str, Any]
    folder: Path


def _expect(module: nn.Module, cls: type[nn.Module], key: str, base: str) -> None:
    if not isinstance(module, cls):
        raise InvalidModelSpecError(f"{base}.json: {key} must be a {cls.__name__}, got {type(module).__name__}")


def load_trellis_stage1(
    folder: Path | str,
    dtype: DTypeName | torch.dtype | None = None,
    device: torch.device | str = "cpu",
    load_encoder: bool = True,
) -> TrellisStage1:
    """Load the stage-1 models of a local TRELLIS folder.

    ``dtype`` sets the compute precision of the flow transformer and the VAE torso
    (``None``: as each json's ``use_fp16`` says). The encoder is taken from the pipeline's
    ``sparse_structure_encoder`` entry, else ``ckpts/ss_enc_conv3d_16l8_fp16`` if present,
    else left out (``None``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderNotFoundError(f"TRELLIS model folder not found: {folder}")
    pipeline = _read_json(folder / PIPELINE_FILE)
    models = pipeline.get("args", {}).get("models") if isinstance(pipeline, dict) else None
    if not isinstance(models, dict):
        raise InvalidModelSpecError(f"{folder / PIPELINE_FILE} has no args.models mapping")
    for key in (FLOW_KEY, DECODER_KEY):
        if key not in models:
            raise InvalidModelSpecError(f"{folder / PIPELINE_FILE}: args.models lacks {key!r}")

    resolved = resolve_dtype(dtype) if dtype is not None else None
    flow = load_model(folder / models[FLOW_KEY], dtype=resolved, device=device)
    _expect(flow, SparseStructureFlowModel, FLOW_KEY, models[FLOW_KEY])
    decoder = load_model(folder / models[DECODER_KEY], dtype=resolved, device=device)
    _expect(decoder, SparseStructureDecoder, DECODER_KEY, models[DECODER_KEY])

    encoder = None
    if load_encoder:
        encoder_base = models.get(ENCODER_KEY)
        if encoder_base is None and Path(str(folder / DEFAULT_ENCODER_CKPT) + ".json").is_file():
            encoder_base = DEFAULT_ENCODER_CKPT
        if encoder_base is not None:
            encoder = load_model(folder / encoder_base, dtype=resolved, device=device)
            _expect(encoder, SparseStructureEncoder, ENCODER_KEY, encoder_base)

    return TrellisStage1(
        flow=flow,  # type: ignore[arg-type]
        decoder=decoder,  # type: ignore[arg-type]
        encoder=encoder,  # type: ignore[arg-type]
        sampler=sampler_settings_from_pipeline(pipeline),
        pipeline=pipeline,
        folder=folder,
    )


def save_trellis_stage1(
    folder: Path | str,
    flow: SparseStructureFlowModel,
    decoder: SparseStructureDecoder,
    encoder: SparseStructureEncoder | None = None,
    sampler: SamplerSettings | None = None,
    dtype: torch.dtype | None = torch.float16,
) -> Path:
    """Write a TRELLIS-format folder holding stage 1 (how the embedded default ships).

    Weights are stored in ``dtype`` (fp16 like TRELLIS; ``None`` keeps each tensor's dtype).
    """
    folder = Path(folder)
    sampler = sampler or SamplerSettings()
    names = {FLOW_KEY: DEFAULT_CKPT_NAMES[FLOW_KEY], DECODER_KEY: DEFAULT_CKPT_NAMES[DECODER_KEY]}
    modules: dict[str, nn.Module] = {FLOW_KEY: flow, DECODER_KEY: decoder}
    if encoder is not None:
        names[ENCODER_KEY] = DEFAULT_CKPT_NAMES[ENCODER_KEY]
        modules[ENCODER_KEY] = encoder
    for key, module in modules.items():
        save_model(module, folder / names[key], dtype=dtype)
    pipeline = {
        "name": PIPELINE_NAME,
        "args": {
            "models": names,
            SAMPLER_KEY: {
                "name": SAMPLER_NAME,
                "args": {"sigma_min": sampler.sigma_min},
                "params": {
                    "steps": sampler.steps,
                    "cfg_strength": sampler.cfg_strength,
                    "cfg_interval": list(sampler.cfg_interval),
                    "rescale_t": sampler.rescale_t,
                },
            },
        },
    }
    (folder / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=4))
    return folder
