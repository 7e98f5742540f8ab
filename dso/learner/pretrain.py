"""Pretrain the embedded default generator on procedural objects, TRELLIS's way.

Stage ``vae``: the sparse-structure VAE (encoder + decoder) learns to compress
occupancy grids into a small latent grid. Stage ``flow``: the flow transformer
and the tiny image encoder learn, jointly, to generate those latents from a
rendered view (logit-normal t, velocity target, 10 % condition dropout for
classifier-free guidance). The result is written as a TRELLIS-format model
folder (``pipeline.json`` + ``ckpts/``), so it loads through the same code path
as the official TRELLIS weights.

Both stages checkpoint (models, optimiser, step, RNG) and resume exactly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dso.config import ASSETS_DIR, Settings
from dso.learner import flow_matching as fm
from dso.learner.checkpoint import load_checkpoint, save_checkpoint
from dso.models.factory import (
    StageOneModules,
    build_tiny_modules,
    export_tiny_folder,
    load_tiny_modules_for_training,
    preprocess_tiny_images,
)

TINY_EXPORT_DIR = ASSETS_DIR / "tiny"


@dataclass
class PretrainData:
    """Everything pretraining reads, built once and cached as ``dataset.npz``."""

    occupancy: np.ndarray  # (N, R, R, R) bool
    images: np.ndarray  # (M, C, S, S) float16, conditioner input
    image_object: np.ndarray  # (M,) index into occupancy
    seeds: np.ndarray  # (N,) object seeds
    dropped_unstable: int = 0


def _make_object(args: tuple[int, Settings]) -> tuple[int, np.ndarray, list[np.ndarray], bool] | None:
    """One training object: its grid, its rendered views, and whether it stands (worker process)."""
    seed, settings = args
    from dso.shapes.procedural import sample_object
    from dso.shapes.render import default_views, render_occupancy

    obj = sample_object(seed, resolution=settings.shapes.resolution, settings=settings.shapes)
    views = default_views(settings.pretrain.views_per_object, seed=seed, settings=settings.shapes)
    images = [render_occupancy(obj.occupancy, cam, size=settings.shapes.render_size, parts=obj.parts) for cam in views]
    stands = True
    if settings.pretrain.drop_unstable:
        from dso.sim.contract import make_oracle
        from dso.sim.verdict import Outcome

        stands = make_oracle(settings.sim).simulate(obj.occupancy).outcome == Outcome.stable
    return seed, obj.occupancy, images, stands


def build_dataset(settings: Settings, progress: bool = True) -> PretrainData:
    """Build (or load the cached) procedural pretraining set: grids, rendered views, stability filter."""
    out = Path(settings.pretrain.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "dataset.npz"
    if cache.exists():
        z = np.load(cache)
        return PretrainData(z["occupancy"], z["images"], z["image_object"], z["seeds"], int(z["dropped_unstable"]))

    p = settings.pretrain
    workers = p.workers or os.cpu_count() or 1
    jobs = [(seed, settings) for seed in range(p.num_objects)]
    occ, imgs, owner, seeds, dropped = [], [], [], [], 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_make_object, jobs, chunksize=8)
        for seed, grid, images, stands in tqdm(results, total=len(jobs), desc="pretrain data", disable=not progress):
            if not stands:
                dropped += 1
                continue
            idx = len(occ)
            occ.append(grid)
            seeds.append(seed)
            for im in images:
                imgs.append(im)
                owner.append(idx)
    batch_images = preprocess_tiny_images(imgs, settings.model.conditioner).numpy().astype(np.float16)
    data = PretrainData(np.stack(occ).astype(bool), batch_images, np.asarray(owner), np.asarray(seeds), dropped)
    tmp = cache.with_name("dataset.tmp.npz")
    np.savez_compressed(
        tmp, occupancy=data.occupancy, images=data.images, image_object=data.image_object, seeds=data.seeds, dropped_unstable=dropped
    )
    tmp.rename(cache)
    return data


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _vae_loss(encoder, decoder, occ: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
    x = occ.float().unsqueeze(1)
    z, mean, logvar = encoder(x, sample_posterior=True, return_raw=True)
    logits = decoder(z)
    bce = F.binary_cross_entropy_with_logits(logits, x)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * x).sum() + 1) / (prob.sum() + x.sum() + 1)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - logvar - 1).mean()
    loss = bce + dice + kl_weight * kl
    return loss, {"bce": bce.item(), "dice": dice.item(), "kl": kl.item()}


def _frozen_copy(module: torch.nn.Module | None) -> torch.nn.Module | None:
    if module is None:
        return None
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def _ema_update(ema: torch.nn.Module | None, live: torch.nn.Module | None, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * live, parameters and buffers alike."""
    if ema is None or live is None:
        return
    for e, x in zip(ema.state_dict().values(), live.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(x, 1.0 - decay)
        else:
            e.copy_(x)


class Pretrainer:
    """Runs the two stages with checkpoints under ``output_dir``; ``run()`` resumes wherever it stopped."""

    def __init__(self, settings: Settings, progress: bool = True):
        self.s = settings
        self.p = settings.pretrain
        self.out = Path(self.p.output_dir)
        self.progress = progress
        torch.manual_seed(self.p.seed)
        if self.p.init_from is not None:
            self.modules = load_tiny_modules_for_training(Path(self.p.init_from), settings.model)
        else:
            self.modules = build_tiny_modules(settings.model)
        with_ema = self.p.flow_ema > 0
        self.ema = (
            _frozen_copy(self.modules.flow) if with_ema else None,
            _frozen_copy(self.modules.image_encoder) if with_ema else None,
        )
        self.history: dict[str, list[float]] = {"vae": [], "flow": []}

    # -- stage 1 -------------------------------------------------------------
    def train_vae(self, data: PretrainData) -> list[float]:
        if self.p.vae_steps == 0:
            return []
        enc, dec = self.modules.encoder, self.modules.decoder
        params = list(enc.parameters()) + list(dec.parameters())
        opt = torch.optim.AdamW(params, lr=self.p.vae_lr, weight_decay=self.p.weight_decay)
        gen = torch.Generator().manual_seed(self.p.seed)
        ckpt = self.out / "vae.ckpt"
        step = load_checkpoint(ckpt, {"encoder": enc, "decoder": dec}, opt, gen) if ckpt.exists() else 0
        occ = torch.from_numpy(data.occupancy)
        losses = []
        bar = tqdm(range(step, self.p.vae_steps), initial=step, total=self.p.vae_steps, desc="vae", disable=not self.progress)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = self.p.vae_lr * _lr_factor(step, self.p.warmup_steps, self.p.vae_steps)
            idx = torch.randint(len(occ), (self.p.vae_batch,), generator=gen)
            loss, parts = _vae_loss(enc, dec, occ[idx], self.p.vae_kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, self.p.grad_clip)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}", bce=f"{parts['bce']:.4f}")
            if (step + 1) % self.p.checkpoint_every == 0 or step + 1 == self.p.vae_steps:
                save_checkpoint(ckpt, step + 1, {"encoder": enc, "decoder": dec}, opt, gen)
        self.history["vae"].extend(losses)
        return losses

    @torch.no_grad()
    def encode_latents(self, data: PretrainData, batch: int = 64) -> torch.Tensor:
        """Posterior means of every training grid: the flow's targets x0 (not normalised, as in TRELLIS)."""
        enc = self.modules.encoder.eval()
        occ = torch.from_numpy(data.occupancy)
        out = []
        for i in range(0, len(occ), batch):
            _, mean, _ = enc(occ[i : i + batch].float().unsqueeze(1), sample_posterior=False, return_raw=True)
            out.append(mean)
        enc.train()
        return torch.cat(out)

    # -- stage 2 -------------------------------------------------------------
    def train_flow(self, data: PretrainData, latents: torch.Tensor) -> list[float]:
        flow, img_enc = self.modules.flow, self.modules.image_encoder
        obj = self.s.objective
        params = list(flow.parameters()) + list(img_enc.parameters())
        opt = torch.optim.AdamW(params, lr=self.p.flow_lr, weight_decay=self.p.weight_decay)
        gen = torch.Generator().manual_seed(self.p.seed + 1)
        ckpt = self.out / "flow.ckpt"
        saved = {"flow": flow, "image_encoder": img_enc}
        if self.p.flow_ema > 0:
            saved |= {k: m for k, m in (("flow_ema", self.ema[0]), ("image_encoder_ema", self.ema[1])) if m is not None}
        step = load_checkpoint(ckpt, saved, opt, gen) if ckpt.exists() else 0
        images = torch.from_numpy(data.images)
        owner = torch.from_numpy(data.image_object)
        losses = []
        bar = tqdm(range(step, self.p.flow_steps), initial=step, total=self.p.flow_steps, desc="flow", disable=not self.progress)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = self.p.flow_lr * _lr_factor(step, self.p.warmup_steps, self.p.flow_steps)
            idx = torch.randint(len(images), (self.p.flow_batch,), generator=gen)
            x0 = latents[owner[idx]]
            cond = img_enc(images[idx].float())
            keep = (torch.rand(len(idx), generator=gen) >= obj.cond_drop_prob).to(cond.dtype)
            cond = cond * keep.view(-1, 1, 1)  # dropped condition = zeros, TRELLIS's unconditional branch
            t = fm.sample_t(len(idx), obj.t_logit_mean, obj.t_logit_std, generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            loss = fm.per_sample_error(flow, x0, cond, t, noise, self.s.sampler.sigma_min).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, self.p.grad_clip)
            opt.step()
            if self.p.flow_ema > 0:
                _ema_update(self.ema[0], flow, self.p.flow_ema)
                _ema_update(self.ema[1], img_enc, self.p.flow_ema)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if (step + 1) % self.p.checkpoint_every == 0 or step + 1 == self.p.flow_steps:
                save_checkpoint(ckpt, step + 1, saved, opt, gen)
        self.history["flow"].extend(losses)
        return losses

    def exported_modules(self) -> StageOneModules:
        """What ships: the EMA flow and image encoder when ``flow_ema`` is on, else the live weights."""
        if self.p.flow_ema <= 0:
            return self.modules
        return dataclasses.replace(self.modules, flow=self.ema[0], image_encoder=self.ema[1])

    def run(self, export: bool = True) -> Path | None:
        start = time.time()
        data = build_dataset(self.s, progress=self.progress)
        self.train_vae(data)
        latents = self.encode_latents(data)
        self.train_flow(data, latents)
        if not export:
            return None
        target = Path(self.p.export_dir) if self.p.export_dir else TINY_EXPORT_DIR
        record = {
            "seed": self.p.seed,
            "objects": int(len(data.occupancy)),
            "images": int(len(data.images)),
            "dropped_unstable": data.dropped_unstable,
            "latent_std": float(latents.std()),
            "init_from": str(self.p.init_from) if self.p.init_from else None,
            "flow_ema": self.p.flow_ema,
            "vae_steps": self.p.vae_steps,
            "flow_steps": self.p.flow_steps,
            "final_vae_loss": self.history["vae"][-1] if self.history["vae"] else None,
            "final_flow_loss": self.history["flow"][-1] if self.history["flow"] else None,
            "wall_seconds_this_invocation": round(time.time() - start, 1),
            "torch": torch.__version__,
        }
        export_tiny_folder(self.exported_modules(), self.s, target, training_record=record)
        (self.out / "pretrain_record.json").write_text(json.dumps(record, indent=2))
        return target
