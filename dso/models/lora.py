"""LoRA adapters on the flow transformer's attention, in PEFT's standard on-disk format.

Only the adapter moves between the learner and the generators, so this module
covers its whole life: attach it (:func:`attach_lora`), save it
(:func:`save_adapter`: ``adapter_config.json`` + ``adapter_model.safetensors``,
loadable by stock ``peft.PeftModel.from_pretrained(base, dir)``), swap new
weights into a live model in place and prove the swap took effect
(:class:`AdapterSwapper` / :func:`hot_swap`), and import the DSO authors'
released LoRA files, which hold a whole PEFT model state dict
(:func:`import_released_lora`).

Swap verification: a fixed probe input (:class:`Probe`, built once from a seed)
is run through the model before and after the copy. If the adapter's
effective update ``B @ A`` changed, the output must change; if it did not, the
output must stay put. Anything else means the copy never reached the live
forward pass (or touched something else), and raises :class:`AdapterSwapError`
after restoring the previous weights.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from torch import nn

from dso.config import LoraSettings

ADAPTER_CONFIG_FILE = CONFIG_NAME  # "adapter_config.json"
ADAPTER_WEIGHTS_FILE = SAFETENSORS_WEIGHTS_NAME  # "adapter_model.safetensors"
SAVED_KEY_PREFIX = "base_model.model."  # PEFT's prefix for keys in a saved adapter

# A LoRA tensor in any of the layouts PEFT writes: saved adapters (no adapter
# name), live state dicts (".default." inside), optionally behind DDP's "module.".
_LORA_KEY = re.compile(
    r"^(?:module\.)?(?:base_model\.model\.)?(?P<path>.+?)\.(?P<kind>lora_A|lora_B)"
    r"(?:\.(?P<adapter>[^.]+))?\.weight$"
)
PROBE_TIMESTEP = 500.0  # mid-trajectory (t * 1000), where both noise and structure matter
PROBE_COND_TOKENS = 4  # few condition tokens keep the probe's cross-attention cheap
_OTHER_LORA_PARTS = ("lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "lora_bias")


class AdapterSwapError(RuntimeError):
    """A hot swap was refused or did not take effect; the previous weights are back in place."""


class AdapterFormatError(ValueError):
    """An adapter file or state dict does not hold what a LoRA adapter should."""


# --- attach and save -------------------------------------------------------------


def lora_config(settings: LoraSettings, base_model_name_or_path: str | None = None) -> LoraConfig:
    """The PEFT ``LoraConfig`` our settings describe (LoRA on the attention projections)."""
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
    )


def default_base_name(model: nn.Module) -> str:
    """Identify a plain nn.Module base by its import path (PEFT otherwise records None)."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def attach_lora(
    model: nn.Module,
    settings: LoraSettings,
    adapter_name: str = "default",
    base_model_name_or_path: str | None = None,
) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters (B = 0, so outputs are unchanged at first).

    The base is modified in place (its target Linears become LoRA layers) and
    frozen; only LoRA parameters train. ``base_model_name_or_path`` goes into
    ``adapter_config.json``; by default the base's class path, e.g.
    ``dso.models.transformer.SparseStructureFlowModel``; pass a checkpoint
    path or name when there is a more specific one.
    """
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    if not names.intersection(settings.target_modules):
        raise ValueError(
            f"none of the LoRA target modules {settings.target_modules} is an nn.Linear in "
            f"{type(model).__name__} (Linear names found: {sorted(names)[:12]})"
        )
    peft_model = get_peft_model(model, lora_config(settings), adapter_name=adapter_name)
    # get_peft_model reads the name from transformers' ``name_or_path``, which a plain nn.Module lacks.
    name = base_model_name_or_path or default_base_name(model)
    peft_model.peft_config[adapter_name].base_model_name_or_path = name
    return peft_model


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of parameters that will receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(peft_model: PeftModel, directory: str | Path, adapter_name: str = "default") -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` for one adapter into ``directory``.

    Uses PEFT's own ``save_pretrained``; PEFT nests non-default adapters in a
    sub-folder, which is flattened here so every adapter directory looks the same.
    """
    if adapter_name not in peft_model.peft_config:
        raise KeyError(f"no adapter named {adapter_name!r}; have {sorted(peft_model.peft_config)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        peft_model.save_pretrained(
            tmp, selected_adapters=[adapter_name], safe_serialization=True, save_embedding_layers=False
        )
        written = Path(tmp) if adapter_name == "default" else Path(tmp) / adapter_name
        for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
            shutil.move(str(written / name), str(directory / name))
    return directory


def adapter_sha256(directory: str | Path) -> str:
    """sha256 of ``adapter_model.safetensors``: the identity of a published adapter file."""
    path = _weights_path(directory)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of tensor contents (names, dtypes, shapes, values), independent of file encoding."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _weights_path(source: str | Path) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / ADAPTER_WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter weights not found")
    return path


def load_adapter_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """Read an adapter's LoRA tensors (saved-adapter key format) from its directory or safetensors file."""
    path = _weights_path(source)
    state = load_file(str(path))
    bad = [key for key in state if not _LORA_KEY.match(key)]
    if bad:
        raise AdapterFormatError(f"{path}: {len(bad)} keys are not LoRA A/B weights, e.g. {bad[:3]}")
    return state


# --- hot swap ----------------------------------------------------------------------


def live_lora_parameters(peft_model: nn.Module, adapter_name: str = "default") -> dict[str, nn.Parameter]:
    """The live LoRA parameters of one adapter, keyed as in a saved adapter file."""
    live: dict[str, nn.Parameter] = {}
    for name, param in peft_model.named_parameters():
        match = _LORA_KEY.match(name)
        if match and match["adapter"] == adapter_name:
            live[f"{SAVED_KEY_PREFIX}{match['path']}.{match['kind']}.weight"] = param
    if not live:
        raise ValueError(f"model has no LoRA parameters for adapter {adapter_name!r}")
    return live


class Probe:
    """A fixed, small model input used to check that a swap changed the model's output.

    The tensors are drawn once from ``seed`` on the CPU and cast to the model's
    device and dtype at each call; the model runs in eval mode under
    ``no_grad`` (its train/eval mode is restored afterwards).
    """

    def __init__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> None:
        self.args = args
        self.kwargs = kwargs

    @staticmethod
    def _place(value: Any, like: torch.Tensor) -> Any:
        if isinstance(value, torch.Tensor):
            dtype = like.dtype if value.is_floating_point() else value.dtype
            return value.to(device=like.device, dtype=dtype)
        return value

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> torch.Tensor:
        like = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            args = [self._place(a, like) for a in self.args]
            kwargs = {k: self._place(v, like) for k, v in self.kwargs.items()}
            out = model(*args, **kwargs)
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"probe expects the model to return a tensor, got {type(out).__name__}")
        return out.float()


def flow_model_probe(model: nn.Module, settings: LoraSettings, cond_tokens: int = PROBE_COND_TOKENS) -> Probe:
    """Probe for a flow transformer ``forward(x, t, cond)``: one noise volume, t = 500, a few cond tokens.

    Reads ``resolution``, ``in_channels`` and ``cond_channels`` from the model
    (through a PeftModel wrapper too). Few condition tokens keep the
    cross-attention cheap; the volume must have the model's full resolution
    because the position embedding is fixed. Note: a freshly initialised flow
    model has a zero output layer, so its output cannot move; probe trained models.
    """
    try:
        resolution, in_channels, cond_channels = (
            int(getattr(model, name)) for name in ("resolution", "in_channels", "cond_channels")
        )
    except AttributeError as exc:
        raise TypeError(f"{type(model).__name__} is not a flow transformer ({exc}); build a Probe by hand") from exc
    generator = torch.Generator().manual_seed(settings.probe_seed)
    x = torch.randn(1, in_channels, resolution, resolution, resolution, generator=generator)
    cond = torch.randn(1, cond_tokens, cond_channels, generator=generator)
    t = torch.full((1,), PROBE_TIMESTEP)
    return Probe(x, t, cond)


@dataclass(frozen=True)
class SwapRecord:
    """What a hot swap did."""

    version: str | None  # caller's label for the new weights (e.g. adapter store version)
    digest: str  # weights_digest of the new weights
    previous_digest: str
    weights_changed: bool  # the effective LoRA update B @ A differs from the previous one
    verified: bool
    max_abs_output_change: float  # on the probe input; nan when not verified
    tensors: int
    seconds: float


class AdapterSwapper:
    """Copies new LoRA weights into a live PEFT model in place and verifies the swap.

    One swapper per live model: it keeps the fixed probe and the digest and
    version of the weights currently loaded.
    """

    def __init__(
        self,
        peft_model: nn.Module,
        probe: Probe | Callable[[nn.Module], torch.Tensor],
        settings: LoraSettings,
        adapter_name: str = "default",
    ) -> None:
        self.model = peft_model
        self.probe = probe
        self.settings = settings
        self.adapter_name = adapter_name
        self.params = live_lora_parameters(peft_model, adapter_name)
        self.version: str | None = None
        self.digest = weights_digest({k: p.detach() for k, p in self.params.items()})

    def check_compatible(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Raise ``AdapterSwapError`` naming every missing, unexpected or mis-shaped key."""
        expected, given = set(self.params), set(state_dict)
        problems: list[str] = []
        if missing := sorted(expected - given):
            problems.append(f"{len(missing)} missing keys: {missing[:5]}")
        if unexpected := sorted(given - expected):
            problems.append(f"{len(unexpected)} unexpected keys: {unexpected[:5]}")
        shapes = [
            f"{k}: {tuple(state_dict[k].shape)} != live {tuple(self.params[k].shape)}"
            for k in sorted(expected & given)
            if tuple(state_dict[k].shape) != tuple(self.params[k].shape)
        ]
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches: {shapes[:5]}")
        if problems:
            raise AdapterSwapError("adapter does not fit the live model: " + "; ".join(problems))

    def _effective_update_changed(self, new: Mapping[str, torch.Tensor]) -> bool:
        """Whether B @ A differs for any layer, tested on one fixed random vector per layer.

        Comparing ``B (A v)`` is O(r (in + out)) per layer instead of forming
        B @ A, and (unlike comparing A and B directly) says "no change" when
        B is zero before and after, where the output truly cannot move.
        ``new`` must already have the live parameters' dtype and device.
        """
        generator = torch.Generator().manual_seed(self.settings.probe_seed)
        for key_a in sorted(k for k in self.params if k.endswith(".lora_A.weight")):
            key_b = key_a.replace(".lora_A.weight", ".lora_B.weight")
            old_a, old_b = self.params[key_a].detach(), self.params[key_b].detach()
            new_a, new_b = new[key_a], new[key_b]
            if torch.equal(old_a, new_a) and torch.equal(old_b, new_b):
                continue
            v = torch.randn(old_a.shape[1], generator=generator).to(old_a.device)
            old_update = old_b.float() @ (old_a.float() @ v)
            if not torch.equal(old_update, new_b.float() @ (new_a.float() @ v)):
                return True
        return False

    def _copy(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, param in self.params.items():
                param.copy_(state_dict[key])

    def swap(
        self,
        source: Mapping[str, torch.Tensor] | str | Path,
        version: str | None = None,
        verify: bool = True,
        expect_change: bool | None = None,
    ) -> SwapRecord:
        """Load ``source`` (a state dict, adapter directory or safetensors file) into the live model.

        ``expect_change=True`` says the caller believes these are new weights
        (e.g. a newer version from the store); weights equal to the live ones
        then raise, since that is a publishing mistake, not a swap (``False``:
        the reverse, a reload that must not change anything). With ``verify``
        the probe output must move exactly when the effective update moved.
        Costs two probe forwards when verifying.
        """
        started = time.perf_counter()
        state = load_adapter_weights(source) if isinstance(source, (str, Path)) else dict(source)
        self.check_compatible(state)
        new_digest = weights_digest(state)
        # what the live model will hold: the new values in the live dtype and device
        incoming = {k: state[k].detach().to(device=p.device, dtype=p.dtype) for k, p in self.params.items()}
        identical = all(torch.equal(p.detach(), incoming[k]) for k, p in self.params.items())
        if expect_change is True and identical:
            raise AdapterSwapError(
                f"no-op swap: version {version!r} was announced as new but its weights equal the live ones "
                f"(live version {self.version!r})"
            )
        if expect_change is False and not identical:
            raise AdapterSwapError(
                f"version {version!r} was announced as unchanged but its weights differ from the live ones "
                f"(live version {self.version!r})"
            )
        changed = not identical and self._effective_update_changed(incoming)
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        before = self.probe(self.model) if verify else None
        self._copy(incoming)
        max_change = float("nan")
        try:
            not_copied = [k for k, p in self.params.items() if not torch.equal(p.detach(), incoming[k])]
            if not_copied:
                raise AdapterSwapError(f"{len(not_copied)} tensors did not take the new values: {not_copied[:5]}")
            if verify:
                after = self.probe(self.model)
                max_change = float((after - before).abs().max())
                atol = self.settings.probe_atol
                if changed and not max_change > atol:
                    raise AdapterSwapError(
                        "silent no-op swap: the LoRA update changed but the probe output did not "
                        f"(max |change| {max_change:.3g} <= {atol}); is the adapter disabled, merged, "
                        "or is this a copy of the served model?"
                    )
                if not changed and max_change > atol:
                    raise AdapterSwapError(
                        f"the probe output moved by {max_change:.3g} although the LoRA update is unchanged; "
                        "something other than the adapter changed the model"
                    )
        except AdapterSwapError:
            self._copy(backup)
            raise
        previous = self.digest
        self.digest, self.version = new_digest, version
        return SwapRecord(
            version=version,
            digest=new_digest,
            previous_digest=previous,
            weights_changed=changed,
            verified=verify,
            max_abs_output_change=max_change,
            tensors=len(state),
            seconds=time.perf_counter() - started,
        )


def hot_swap(
    peft_model: nn.Module,
    source: Mapping[str, torch.Tensor] | str | Path,
    probe: Probe | Callable[[nn.Module], torch.Tensor],
    settings: LoraSettings,
    verify: bool = True,
    version: str | None = None,
    expect_change: bool | None = None,
    adapter_name: str = "default",
) -> SwapRecord:
    """One-off swap; long-lived generators should keep an :class:`AdapterSwapper` instead."""
    swapper = AdapterSwapper(peft_model, probe, settings, adapter_name)
    return swapper.swap(source, version=version, verify=verify, expect_change=expect_change)


# --- released DSO LoRA files ---------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) or sorted(
            p for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in path.glob(ext)
        )
        if len(candidates) != 1:
            raise AdapterFormatError(f"{path}: expected one weights file, found {[c.name for c in candidates]}")
        path = candidates[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict) and len(state) <= 3:
            state = state[wrapper]
    if not isinstance(state, dict):
        raise AdapterFormatError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def extract_lora_state(
    full_state: Mapping[str, torch.Tensor], adapter_name: str | None = None
) -> dict[str, torch.Tensor]:
    """Keep only LoRA A/B tensors of a whole-model PEFT state dict, with saved-adapter key names.

    Base weights (plain or ``.base_layer.``) are dropped. With several adapters
    in the file, ``adapter_name`` picks one.
    """
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in full_state.items():
        match = _LORA_KEY.match(key)
        if match is None:
            if any(f".{part}" in key for part in _OTHER_LORA_PARTS):
                raise AdapterFormatError(f"unsupported LoRA variant tensor {key!r} (only plain LoRA A/B)")
            continue
        adapter = match["adapter"] or "default"
        found.setdefault(adapter, {})[f"{SAVED_KEY_PREFIX}{match['path']}.{match['kind']}.weight"] = tensor
    if not found:
        raise AdapterFormatError("no LoRA tensors (keys ending in lora_A/lora_B[.<adapter>].weight) found")
    if adapter_name is None:
        if len(found) > 1:
            raise AdapterFormatError(f"several adapters in the file {sorted(found)}; pass adapter_name")
        adapter_name = next(iter(found))
    if adapter_name not in found:
        raise AdapterFormatError(f"adapter {adapter_name!r} not in the file; have {sorted(found)}")
    return found[adapter_name]


def infer_lora_shape(state: Mapping[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Rank r and target module names of an adapter state dict, checking every A has a matching B."""
    ranks: set[int] = set()
    targets: set[str] = set()
    for key_a in (k for k in state if k.endswith(".lora_A.weight")):
        key_b = key_a.replace(".lora_A.weight", ".lora_B.weight")
        if key_b not in state:
            raise AdapterFormatError(f"{key_a} has no matching {key_b}")
        a, b = state[key_a], state[key_b]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise AdapterFormatError(f"{key_a} {tuple(a.shape)} and {key_b} {tuple(b.shape)} are not a LoRA pair")
        ranks.add(int(a.shape[0]))
        targets.add(key_a[: -len(".lora_A.weight")].rsplit(".", 1)[-1])
    orphans = [k for k in state if k.endswith(".lora_B.weight") and k.replace(".lora_B.", ".lora_A.") not in state]
    if orphans:
        raise AdapterFormatError(f"lora_B without lora_A: {orphans[:3]}")
    if len(ranks) != 1:
        raise AdapterFormatError(f"expected one LoRA rank across layers, found {sorted(ranks)}")
    return ranks.pop(), sorted(targets)


def import_released_lora(
    source: str | Path,
    settings: LoraSettings,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    adapter_name: str | None = None,
) -> tuple[dict[str, torch.Tensor], LoraSettings]:
    """Turn a released DSO LoRA file (whole PEFT model state dict) into our adapter directory.

    Only lora_A / lora_B tensors are kept, renamed to PEFT's saved-adapter
    keys; r and the target modules are read off the tensors. Alpha and
    dropout are not stored in a state dict: they come from an
    ``adapter_config.json`` beside the file when there is one, otherwise
    from ``settings`` (the paper's code uses alpha 128 for r 64).
    Returns the adapter state dict and the settings that describe it.
    """
    source = Path(source)
    state = extract_lora_state(_read_state_dict(source), adapter_name)
    r, targets = infer_lora_shape(state)
    update: dict[str, Any] = {"r": r, "target_modules": targets}
    config_beside = (source if source.is_dir() else source.parent) / ADAPTER_CONFIG_FILE
    if config_beside.is_file():
        released = json.loads(config_beside.read_text())
        update["alpha"] = int(released.get("lora_alpha", settings.alpha))
        update["dropout"] = float(released.get("lora_dropout", settings.dropout))
    imported = LoraSettings.model_validate({**settings.model_dump(), **update})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = lora_config(imported, base_model_name_or_path)
    config.inference_mode = True
    config.save_pretrained(str(out))
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(out / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    return state, imported
