"""Fine-tune on an offline dataset: batch planning per objective, the step loop, checkpoints, resume.

Batches follow each objective's needs:
- ``dro``: equal stable / unstable halves drawn from the whole dataset;
- ``dpo`` / ``dro_paired``: (stable, unstable) pairs of the same prompt, winners
  first, row-aligned with their losers (``TrainSettings.batch_size`` counts samples);
- ``sft``: stable samples only.

Checkpoints go to ``out/checkpoints/step_NNNNNN`` (``FineTuner.save`` plus the
planner's RNG state and every rank's t/noise RNG), and ``out/checkpoints/latest``
names the newest complete one. Resuming restores all of it, so a run that stops
and resumes produces the same adapter, bit for bit, as one that never stopped.

The loop also runs data-parallel: each rank trains on its slice of every global
batch (drawn identically on every rank) through a DDP-wrapped model; rank 0
writes the checkpoint. Nothing here imports Ray; ``dso.jobs.train_ray`` supplies
the process group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dso.config import LoraSettings, ObjectiveSettings, Settings, TrainSettings
from dso.learner import flow_matching as fm
from dso.learner.dataset import OfflineDataset
from dso.learner.objectives import OBJECTIVES, BatchKind
from dso.learner.trainer import FineTuner, TrainBatch, training_guidance
from dso.models.factory import load_stage_one, resolve_device

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
PLANNER_FILE = "planner.json"
METRICS_FILE = "metrics.jsonl"
RANK_RNG_FILE = "rng_rank{rank}.pt"
RANK_SEED_STRIDE = 1_000_003  # rank r draws t / noise from seed + r * stride


class DatasetTooSmallError(ValueError):
    """The dataset lacks the samples an objective needs (e.g. no unstable sample, no pair)."""


@dataclass
class BatchPlan:
    """Dataset rows of one global batch: ``stable`` rows first, then ``unstable`` rows (row-aligned when paired)."""

    stable: np.ndarray
    unstable: np.ndarray

    def shard(self, rank: int, world_size: int) -> "BatchPlan":
        """This rank's part: every world_size-th unit (pair or row) of each half."""
        return BatchPlan(self.stable[rank::world_size], self.unstable[rank::world_size])

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate([self.stable, self.unstable])


class BatchPlanner:
    """Draws the rows of each global batch for one objective from its own, checkpointable RNG."""

    def __init__(self, dataset: OfflineDataset, objective: str, batch_size: int, seed: int):
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {batch_size}")
        self.objective = objective
        self.batch_size = batch_size
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.stable_rows = dataset.stable_rows()
        self.unstable_rows = dataset.unstable_rows()
        self.kind = OBJECTIVES[objective].base_needs.batch
        self.groups = dataset.pair_groups() if self.kind == BatchKind.pairs else []
        self._check(dataset)

    def _check(self, dataset: OfflineDataset) -> None:
        need = {
            BatchKind.stable_only: [("stable", len(self.stable_rows))],
            BatchKind.balanced: [("stable", len(self.stable_rows)), ("unstable", len(self.unstable_rows))],
        }.get(self.kind, [("prompts with both a stable and an unstable sample", len(self.groups))])
        for what, count in need:
            if count == 0:
                raise DatasetTooSmallError(f"objective {self.objective!r} needs {what}, the dataset has none ({dataset.summary()})")

    def next(self) -> BatchPlan:
        half = self.batch_size // 2
        empty = np.zeros(0, dtype=np.int64)
        if self.kind == BatchKind.stable_only:
            return BatchPlan(self.rng.choice(self.stable_rows, self.batch_size), empty)
        if self.kind == BatchKind.balanced:
            return BatchPlan(self.rng.choice(self.stable_rows, half), self.rng.choice(self.unstable_rows, half))
        picks = self.rng.integers(0, len(self.groups), half)
        wins = np.array([self.rng.choice(self.groups[g][0]) for g in picks], dtype=np.int64)
        loses = np.array([self.rng.choice(self.groups[g][1]) for g in picks], dtype=np.int64)
        return BatchPlan(wins, loses)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def make_batch(dataset: OfflineDataset, plan: BatchPlan) -> TrainBatch:
    rows = torch.from_numpy(plan.rows)
    cond_rows = torch.from_numpy(dataset.prompt_row[plan.rows])
    stable = torch.cat([torch.ones(len(plan.stable), dtype=torch.bool), torch.zeros(len(plan.unstable), dtype=torch.bool)])
    return TrainBatch(dataset.x0[rows], dataset.cond[cond_rows], stable, torch.from_numpy(prompt_stable_rate(dataset)[plan.rows]))


def prompt_stable_rate(dataset: OfflineDataset) -> np.ndarray:
    """[N] the stable share of each row's prompt among its trainable samples (group-relative objectives)."""
    ok = dataset.trainable
    prompts = dataset.prompt_row
    stable = np.bincount(prompts[ok], weights=dataset.stable[ok].astype(np.float64), minlength=prompts.max() + 1)
    total = np.bincount(prompts[ok], minlength=prompts.max() + 1)
    return (stable / np.maximum(total, 1))[prompts].astype(np.float32)


class DataParallelFineTuner(FineTuner):
    """A FineTuner whose forward passes go through DistributedDataParallel (gradients averaged over ranks).

    Each rank draws t and noise from its own seed; the adapter, optimiser and step
    are identical on every rank (DDP broadcasts rank 0's parameters at wrap time).
    """

    def __init__(
        self, flow: nn.Module, lora: LoraSettings, objective: ObjectiveSettings, train: TrainSettings, device, rank: int,
        guidance: fm.Guidance | None = None,
    ):
        super().__init__(flow, lora, objective, train, device, guidance)
        from torch.nn.parallel import DistributedDataParallel

        self.rank = rank
        self.generator.manual_seed(train.seed + rank * RANK_SEED_STRIDE)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.network = DistributedDataParallel(self.model, device_ids=ids)


@dataclass
class ParallelContext:
    """Where this process sits in a data-parallel run; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = Path(out_dir) / CHECKPOINTS_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class OfflineTrainingLoop:
    """Steps a FineTuner over an offline dataset with periodic checkpoints and exact resume."""

    def __init__(
        self,
        tuner: FineTuner,
        dataset: OfflineDataset,
        out_dir: Path,
        parallel: ParallelContext | None = None,
        on_checkpoint: Callable[[Path, dict], None] | None = None,
    ):
        self.tuner = tuner
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.parallel = parallel or ParallelContext()
        self.on_checkpoint = on_checkpoint
        train = tuner.train
        self.planner = BatchPlanner(dataset, tuner.objective.name, train.batch_size * self.parallel.world_size, train.seed)
        if self.parallel.world_size > 1 and tuner.paired and train.batch_size % 2:
            raise ValueError("paired objectives need an even per-rank batch_size")

    @property
    def checkpoints_dir(self) -> Path:
        return self.out_dir / CHECKPOINTS_DIR

    def resume(self) -> int:
        """Load the latest checkpoint if there is one; returns the step to continue from."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return 0
        step = self.tuner.load(path)
        self.planner.load_state(json.loads((path / PLANNER_FILE).read_text()))
        rank_rng = path / RANK_RNG_FILE.format(rank=self.parallel.rank)
        if self.parallel.world_size > 1 and rank_rng.is_file():
            self.tuner.generator.set_state(torch.load(rank_rng, weights_only=True))  # a tensor: nothing to unpickle
        if self.parallel.is_main:
            self._truncate_metrics(step)
        return step

    def save(self, metrics: dict) -> Path:
        """Every rank writes its RNG, rank 0 the adapter + optimiser; the pointer moves only once all are done."""
        path = self.checkpoints_dir / f"step_{self.tuner.step:06d}"
        path.mkdir(parents=True, exist_ok=True)
        if self.parallel.world_size > 1:
            torch.save(self.tuner.generator.get_state(), path / RANK_RNG_FILE.format(rank=self.parallel.rank))
        if self.parallel.is_main:
            self.tuner.save(path)
            _write_text_atomic(path / PLANNER_FILE, json.dumps(self.planner.state()))
        self.parallel.barrier()
        if self.parallel.is_main:
            _write_text_atomic(self.checkpoints_dir / LATEST_FILE, path.name)
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, metrics)
        return path

    def _truncate_metrics(self, step: int) -> None:
        path = self.out_dir / METRICS_FILE
        if path.is_file():
            keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            _write_text_atomic(path, "".join(line + "\n" for line in keep))

    def run(self, steps: int, resume: bool = True, on_step: Callable[[dict], None] | None = None) -> dict:
        """Train until ``tuner.step == steps``; returns the last step's metrics."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        start = self.resume() if resume else 0
        every = self.tuner.train.checkpoint_every
        metrics: dict = {"step": start}
        with open(self.out_dir / METRICS_FILE, "a") if self.parallel.is_main else open(os.devnull, "w") as log:
            for _ in range(start, steps):
                plan = self.planner.next().shard(self.parallel.rank, self.parallel.world_size)
                metrics = self.tuner.train_step(make_batch(self.dataset, plan))
                log.write(json.dumps(metrics) + "\n")
                log.flush()
                if on_step is not None:
                    on_step(metrics)
                if self.tuner.step % every == 0 or self.tuner.step == steps:
                    self.save(metrics)
        return metrics


def run_offline_training(
    settings: Settings,
    dataset: OfflineDataset,
    out_dir: Path,
    steps: int | None = None,
    resume: bool = True,
    on_step: Callable[[dict], None] | None = None,
    on_checkpoint: Callable[[Path, dict], None] | None = None,
) -> dict:
    """One process: load the base flow model, attach a fresh adapter, train ``steps`` (default train.steps)."""
    device = resolve_device(settings.model.device)
    flow = load_stage_one(settings.model).flow
    torch.manual_seed(settings.train.seed)  # LoRA A matrices are drawn from the global RNG: same seed, same run
    tuner = FineTuner(flow, settings.lora, settings.objective, settings.train, device, training_guidance(settings))
    loop = OfflineTrainingLoop(tuner, dataset, out_dir, on_checkpoint=on_checkpoint)
    return loop.run(settings.train.steps if steps is None else steps, resume=resume, on_step=on_step)
