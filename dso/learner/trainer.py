"""Fine-tune the flow model's LoRA adapter with a DSO objective: one class, one step at a time.

The same :class:`FineTuner` serves the offline ``dso train`` command, each Ray
Train worker, and the online learner actor. It owns the PEFT-wrapped flow
model, the optimiser and the RNG, so a checkpoint of it resumes exactly.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from dso.config import LoraSettings, ObjectiveSettings, Settings, TrainSettings
from dso.learner import flow_matching as fm
from dso.learner.checkpoint import load_checkpoint, save_checkpoint
from dso.learner.objectives import Objective, ReferenceRows, Terms, build_objective
from dso.models.sampler import noisy_latent, velocity_target
from dso.models.lora import attach_lora, live_lora_parameters, load_adapter_weights, save_adapter

CHECKPOINT_FILE = "trainer.ckpt"
ADAPTER_DIR = "adapter"


@dataclass
class TrainBatch:
    """Labelled samples. For paired objectives the first half are stable (winners) and the
    second half unstable (losers), row i of each half from the same prompt."""

    x0: torch.Tensor  # [B, C, R, R, R]
    cond: torch.Tensor  # [B, L, D]
    stable: torch.Tensor  # [B] bool
    group_rate: torch.Tensor | None = None  # [B] stable rate of each row's prompt (group-relative objectives)

    def to(self, device: torch.device) -> "TrainBatch":
        rate = None if self.group_rate is None else self.group_rate.to(device)
        return TrainBatch(self.x0.to(device), self.cond.to(device), self.stable.to(device), rate)

    def rows(self, mask: torch.Tensor) -> "TrainBatch":
        rate = None if self.group_rate is None else self.group_rate[mask]
        return TrainBatch(self.x0[mask], self.cond[mask], self.stable[mask], rate)


class _LoraState:
    """Checkpoint view of a PEFT model holding only the adapter tensors (not the base weights)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model, save_embedding_layers=False).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(self.model, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise KeyError(f"checkpoint holds LoRA keys the model lacks: {unexpected[:5]}")


def training_guidance(settings: Settings) -> fm.Guidance | None:
    """The CFG the sampler applies, when the objective scores the guided velocity (``objective.guided``)."""
    s = settings.sampler
    if not settings.objective.guided or s.cfg_strength == 0:
        return None
    return fm.Guidance.from_settings(s)


def autocast_context(mode: str, device: torch.device):
    """bf16 autocast on devices that support it (``auto``: CUDA with bf16); a no-op otherwise."""
    use = mode == "bf16" or (mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else contextlib.nullcontext()


class FineTuner:
    def __init__(
        self,
        flow: nn.Module,
        lora: LoraSettings,
        objective: ObjectiveSettings,
        train: TrainSettings,
        device: torch.device | str = "cpu",
        guidance: fm.Guidance | None = None,
    ):
        """``guidance``: score the guided velocity the sampler follows (see :func:`training_guidance`)."""
        self.device = torch.device(device)
        self.objective = objective
        self.train = train
        self.guidance = guidance
        self.model = attach_lora(flow, lora).to(self.device)
        self.network: nn.Module = self.model  # what forward passes go through (DDP in data-parallel runs)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=train.lr, weight_decay=train.weight_decay)
        self.generator = torch.Generator().manual_seed(train.seed)
        self.step = 0
        self.loss_fn: Objective = build_objective(objective)
        self.needs = self.loss_fn.needs
        self.ema = AdapterEMA(self.model, objective.ema_decay) if self.needs.ema else None

    @property
    def paired(self) -> bool:
        return self.needs.paired

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then constant (as in the paper's code)."""
        return self.train.lr * min(1.0, (step + 1) / max(1, self.train.warmup_steps))

    def _velocity(self, batch: TrainBatch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model = self.guidance.wrap(self.network) if self.guidance else self.network
        return model(x_t, t * fm.TIMESTEP_SCALE, batch.cond)

    def _reference(self, batch: TrainBatch, x_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Velocities of the reference (this network with the adapter off), no gradient, on ``rows`` only
        (0 elsewhere), so an objective pays for the rows it asked for."""
        ref = torch.zeros_like(x_t, dtype=torch.float32)
        if bool(rows.any()):
            with torch.no_grad(), self.model.disable_adapter():
                ref[rows] = self._velocity(batch.rows(rows), x_t[rows], t[rows]).float()
        return ref

    def _noisy_point(self, batch: TrainBatch, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, velocity target) of the flow path at t with this noise: where every velocity is compared."""
        sigma_min = self.objective.sigma_min
        return noisy_latent(batch.x0, noise, t, sigma_min), velocity_target(batch.x0, noise, sigma_min).float()

    def _errors(self, batch: TrainBatch, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per-sample velocity error of the policy (the velocity the objective scores)."""
        x_t, target = self._noisy_point(batch, t, noise)
        return ((self._velocity(batch, x_t, t).float() - target) ** 2).flatten(1).mean(dim=1)

    def _reference_errors(self, batch: TrainBatch, t: torch.Tensor, noise: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per-sample velocity error of the reference on ``rows`` (0 elsewhere), no gradient."""
        x_t, target = self._noisy_point(batch, t, noise)
        err = ((self._reference(batch, x_t, t, rows) - target) ** 2).flatten(1).mean(dim=1)
        return torch.where(rows, err, torch.zeros_like(err))

    def loss(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The configured objective on one batch; t and noise come from the tuner's own RNG."""
        o, needs = self.objective, self.needs
        n = batch.x0.shape[0]
        t = fm.sample_t(n, o.t_logit_mean, o.t_logit_std, generator=self.generator).to(self.device)
        noise = torch.randn(batch.x0.shape, generator=self.generator).to(self.device, batch.x0.dtype)
        if needs.paired:
            # winners and losers of a pair share t and noise, as in Diffusion-DPO
            half = n // 2
            t = torch.cat([t[:half], t[:half]])
            noise = torch.cat([noise[:half], noise[:half]])
        x_t, target = self._noisy_point(batch, t, noise)
        with autocast_context(self.train.autocast, self.device):
            pred = self._velocity(batch, x_t, t).float()
            err = ((pred - target) ** 2).flatten(1).mean(dim=1)
            terms = Terms(err=err, stable=batch.stable, group_rate=batch.group_rate)
            if needs.reference != ReferenceRows.none:
                rows = ~batch.stable if needs.reference == ReferenceRows.unstable else torch.ones_like(batch.stable)
                ref_pred = self._reference(batch, x_t, t, rows)
                terms.ref_err = torch.where(rows, ((ref_pred - target) ** 2).flatten(1).mean(dim=1), torch.zeros_like(err))
                if needs.velocities:
                    terms.pred, terms.ref_pred = pred, ref_pred
            loss, parts = self.loss_fn.loss(terms)
        metrics = {"err_stable": _mean_where(err, batch.stable), "err_unstable": _mean_where(err, ~batch.stable), **parts}
        return loss, metrics

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        if self.paired and (batch.x0.shape[0] % 2 or not bool(batch.stable[: batch.x0.shape[0] // 2].all())):
            raise ValueError(f"objective {self.objective.name!r} needs a batch of (stable, unstable) pairs")
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        loss, metrics = self.loss(batch.to(self.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}; batch skipped")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.train.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        return {"loss": float(loss.item()), "grad_norm": float(grad_norm), "lr": self.lr_at(self.step - 1), "step": self.step, **metrics}

    # -- persistence -----------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """PEFT adapter files (loadable by stock PEFT) + optimiser, step and RNG for exact resume."""
        directory = Path(directory)
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            save_adapter(self.model, directory / ADAPTER_DIR)  # the EMA is what gets published
        save_checkpoint(directory / CHECKPOINT_FILE, self.step, self._state_modules(), self.optimizer, self.generator)
        return directory

    def load(self, directory: Path) -> int:
        self.step = load_checkpoint(Path(directory) / CHECKPOINT_FILE, self._state_modules(), self.optimizer, self.generator)
        return self.step

    def _state_modules(self) -> dict:
        modules: dict = {"lora": _LoraState(self.model)}
        if self.ema is not None:
            modules["ema"] = self.ema
        return modules

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return _LoraState(self.model).state_dict()

    def restore(self, adapter_dir: Path | None) -> None:
        """Roll the adapter back to a published one (``None``: the base model, B = 0) and forget the
        optimiser's moments, which belong to the abandoned trajectory. The step count goes on."""
        live = live_lora_parameters(self.model)
        with torch.no_grad():
            if adapter_dir is None:
                for key, param in live.items():
                    if "lora_B" in key:
                        param.zero_()
            else:
                weights = load_adapter_weights(adapter_dir)
                missing = sorted(set(live) - set(weights))
                if missing:
                    raise KeyError(f"adapter {adapter_dir} lacks LoRA keys of the model: {missing[:5]}")
                for key, param in live.items():
                    param.copy_(weights[key].to(param.device, param.dtype))
        if self.ema is not None:
            self.ema.reset()
        self.optimizer.state.clear()


class AdapterEMA:
    """An exponential moving average of the LoRA tensors: what generators sample from when it is on.

    The published adapter moves by at most (1 - decay) of the live one's change per step, so one noisy
    stretch of training cannot swing the fleet (DiffusionNFT's "old" policy)."""

    def __init__(self, model: nn.Module, decay: float):
        self.live = live_lora_parameters(model)
        self.decay = decay
        self.shadow = {k: p.detach().clone() for k, p in self.live.items()}

    @torch.no_grad()
    def update(self) -> None:
        for key, param in self.live.items():
            self.shadow[key].lerp_(param.detach(), 1.0 - self.decay)

    def reset(self) -> None:
        """Start again from the live weights (after a rollback)."""
        self.shadow = {k: p.detach().clone() for k, p in self.live.items()}

    @contextlib.contextmanager
    def applied(self):
        """Swap the average into the live parameters for the duration (saving the adapter)."""
        backup = {k: p.detach().clone() for k, p in self.live.items()}
        with torch.no_grad():
            for key, param in self.live.items():
                param.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, param in self.live.items():
                    param.copy_(backup[key])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA checkpoint lacks LoRA keys: {sorted(missing)[:5]}")
        self.shadow = {k: state[k].clone() for k in self.shadow}


def _mean_where(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float(x[mask].mean().item()) if bool(mask.any()) else math.nan
