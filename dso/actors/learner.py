"""Learner role: labelled stream -> replay buffer -> DRO (or DPO) steps -> adapter versions.

Each ``step`` moves newly labelled samples into the replay buffer (atomic
ingest + ack, deduplicated by sample id) and counts them in the live stats,
then, once both classes are present, trains one step on a class-balanced draw
of fresh-enough samples (``broker.max_staleness_versions``). Every
``loop.publish_every`` steps it checkpoints (adapter, optimiser, step, RNG,
version) into the run directory and publishes the adapter as the next version.
When the canary refuses a version of its line, the learner rolls back to the
promoted adapter (``gate.rollback``) and publishes onwards from there; without a
canary it promotes each publish itself.
A restarted learner loads that checkpoint and continues the version sequence
from the adapter store, and the replay buffer lives on in Redis.

Counting happens here because only the replay buffer's ingest knows whether a
sample id is new: the run's statistics (StatsStore) and the per-prompt counts
behind ``GET /v1/prompts/{id}`` see every sample exactly once, redeliveries
excluded. Steps, loss, staleness and publishes go to :mod:`dso.telemetry`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import time

import numpy as np
import torch

from dso import telemetry
from dso.actors.prompt_images import PromptImages
from dso.broker.prompt_stats import PromptStats
from dso.broker.adapter_store import AdapterManifest, AdapterStoreError
from dso.broker.broker import Broker
from dso.broker.promotion import CanaryRecord, Decision
from dso.broker.records import LabelledRecord
from dso.broker.replay import IngestResult
from dso.config import Settings, TrainSettings
from dso.learner.anchors import GroundTruthAnchors
from dso.learner.trainer import ADAPTER_DIR, CHECKPOINT_FILE, FineTuner, TrainBatch, training_guidance
from dso.models.factory import load_vae_encoder, resolve_device
from dso.models.generator import Generator
from dso.shapes.prompts import training_prompt

log = logging.getLogger(__name__)
STATE_FILE = "learner_state.json"
COUNTED = (IngestResult.INSERTED, IngestResult.SKIPPED)  # first sight of a sample id: count it once


@dataclass
class LearnerStep:
    """What one ``step`` did."""

    ingested: int = 0  # labelled entries moved into the replay buffer (duplicates included)
    trained: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    published: AdapterManifest | None = None


def online_train_settings(settings: Settings) -> TrainSettings:
    """``train`` with the online learner's own step size (``loop.learner_lr``) where one is set."""
    lr = settings.loop.learner_lr
    return settings.train if lr is None else settings.train.model_copy(update={"lr": lr})


def learner_settings(settings: Settings) -> Settings:
    model = settings.model.model_copy(update={"device": settings.loop.learner_device})
    return settings.model_copy(update={"model": model})


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Learner:
    """The online fine-tuner: owns the FineTuner, the per-prompt condition cache and the version counter."""

    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        run_dir: Path,
        name: str = "learner-0",
        generator: Generator | None = None,
    ):
        self.broker = broker
        self.settings = settings
        self.loop = settings.loop
        self.name = name
        self.checkpoint_dir = Path(run_dir) / "learner"
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        generator = generator or Generator.from_settings(learner_settings(settings))
        self.encoder = generator  # frozen conditioner: prompt image -> condition tokens
        self.device = resolve_device(self.loop.learner_device)
        self.tuner = FineTuner(
            generator.trainable_module, settings.lora, settings.objective, online_train_settings(settings), self.device,
            training_guidance(settings)
        )
        self.images = PromptImages(broker.prompts, settings)
        self._cond: dict[str, torch.Tensor] = {}
        self.resumed_from_step: int | None = None
        self._ingested = 0  # samples moved into the replay buffer by this process
        if (self.checkpoint_dir / CHECKPOINT_FILE).is_file():
            self.resumed_from_step = self.tuner.load(self.checkpoint_dir)
            log.info("%s: resumed from step %d", name, self.resumed_from_step)
        self._step_allowance_base = self.tuner.step  # a resumed learner is not held back by its past steps
        state = self._read_state()
        saved = state.get("version", 0)
        self.version = max(broker.adapters.latest() or 0, int(saved))
        # the version the live adapter descends from: the last publish, or the promoted one after a rollback
        self.parent_version = int(state.get("parent_version", self.version)) if int(saved) == self.version else self.version
        self.refusals_handled = int(state.get("refusals_handled", 0))  # refused versions up to this one are dealt with
        self.rollbacks = int(state.get("rollbacks", 0))
        self.refusal_streak = int(state.get("refusal_streak", 0))  # refusals of this line since its last promotion
        self._decisions_id = "0-0"  # position in the promotion decision stream (re-read from the start on restart)
        self.prompt_stats = PromptStats.for_broker(broker)
        self.anchors = self._ground_truth_anchors() if settings.objective.anchor_share > 0 else None
        # newest labels per prompt (group-relative objectives): rebuilt from the stream after a restart
        self._recent: dict[str, deque[bool]] = defaultdict(lambda: deque(maxlen=settings.objective.group_window))
        telemetry.set_adapter_version("learner", self.version)

    # --- persistence ---------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            return json.loads((self.checkpoint_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return {}

    def checkpoint(self) -> Path:
        """Adapter + optimiser + step + RNG (FineTuner.save) and the version it trains on, atomically each."""
        self.tuner.save(self.checkpoint_dir)
        self._write_state()
        return self.checkpoint_dir

    def _write_state(self) -> None:
        state = {
            "step": self.tuner.step, "version": self.version, "parent_version": self.parent_version,
            "refusals_handled": self.refusals_handled, "rollbacks": self.rollbacks, "refusal_streak": self.refusal_streak,
        }
        write_json_atomic(self.checkpoint_dir / STATE_FILE, state)

    def publish(self, metrics: dict[str, float]) -> AdapterManifest:
        """Checkpoint, then publish the adapter as the next version (the store writes the files and announces it to the registry)."""
        self.checkpoint()
        finite = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        manifest = self.broker.adapters.publish(
            self.checkpoint_dir / ADAPTER_DIR,
            step=self.tuner.step,
            objective=self.settings.objective.name,
            metrics=finite,
            parent_version=self.parent_version,
        )
        self.version = self.parent_version = manifest.version
        self._write_state()
        telemetry.observe_adapter_published(self.version)  # also sets the learner's adapter-version gauge
        log.info("%s: published adapter version %d at step %d", self.name, self.version, self.tuner.step)
        if not self.settings.canary.enabled:  # no canary: every publish is promoted, generators follow promoted
            self.broker.promotion.record(
                CanaryRecord(version=self.version, decision=Decision.promoted, reasons=["no canary: promoted on publish"])
            )
        return manifest

    # --- rollback ------------------------------------------------------------------

    def maybe_rollback(self) -> bool:
        """Back to the promoted adapter when the canary refused a version this adapter descends from.

        One XRANGE of the decision stream per call (usually empty). A refused version outside this
        learner's line (not an ancestor of what it trains) is noted and ignored.
        """
        self._decisions_id, decisions = self.broker.promotion.decisions_after(self._decisions_id)
        refused: set[int] = set()
        streak = self.refusal_streak
        for d in decisions:  # in decision order: a promotion ends a streak of refusals
            if d["version"] <= self.refusals_handled:
                continue
            if d["decision"] == Decision.promoted.value:
                streak = 0
            elif d["decision"] == Decision.refused.value:
                refused.add(d["version"])
                streak += 1
        if not refused:
            self.refusal_streak = streak
            return False
        self.refusals_handled = max(refused)
        promoted = self.broker.promotion.promoted()
        if not self.settings.gate.rollback or not self._descends_from(refused, promoted):
            self._write_state()
            return False
        self.refusal_streak = streak
        if self.refusal_streak < self.settings.gate.rollback_after:
            # one refusal near a bound can be the probe's noise: keep training, go back only on a streak
            log.info("%s: v%s refused (%d in a row of %d before a rollback)", self.name,
                     ",".join(map(str, sorted(refused))), self.refusal_streak, self.settings.gate.rollback_after)
            self._write_state()
            return False
        self.refusal_streak = 0
        self.tuner.restore(self.broker.adapters.path(promoted) if promoted else None)
        self.parent_version = promoted
        self.refusals_handled = max(self.refusals_handled, self.version)  # everything published so far is behind us
        self.rollbacks += 1
        self.checkpoint()  # a restart resumes from the promoted weights, not the refused line
        log.warning(
            "%s: v%s refused by the canary; rolled back to promoted v%d (rollback %d)",
            self.name, ",".join(map(str, sorted(refused))), promoted, self.rollbacks,
        )
        return True

    def _descends_from(self, versions: set[int], promoted: int) -> bool:
        """Whether the live adapter's line (parent_version and its parents, newer than ``promoted``) meets ``versions``."""
        version: int | None = self.parent_version
        seen: set[int] = set()
        while version and version > promoted and version not in seen:
            if version in versions:
                return True
            seen.add(version)
            try:
                version = self.broker.adapters.manifest(version).parent_version
            except AdapterStoreError:
                return False
        return False

    # --- data ----------------------------------------------------------------------

    def ingest(self) -> int:
        """Move labelled entries (reclaimed ones of a dead learner first) into the replay buffer."""
        queue = self.broker.labelled
        deliveries = queue.reclaim(self.name, count=self.loop.ingest_batch)
        deliveries += queue.read(self.name, count=self.loop.ingest_batch, block_ms=0)
        for delivery in deliveries:
            result = self.broker.replay.ingest(delivery, queue)
            if result in COUNTED:
                record = LabelledRecord.from_bytes(delivery.payload)
                outcome = self.broker.stats.record_labelled(record.verdict, record.adapter_version)
                self.prompt_stats.record(record.sample.prompt_id, outcome)
                if outcome in ("stable", "unstable"):
                    self._recent[record.sample.prompt_id].append(outcome == "stable")
        return len(deliveries)

    def _ground_truth_anchors(self) -> GroundTruthAnchors | None:
        encoder = load_vae_encoder(learner_settings(self.settings).model)
        if encoder is None:
            log.warning("%s: objective.anchor_share is set but the model ships no VAE encoder; no anchors", self.name)
            return None
        shapes = self.settings.shapes

        def occupancy_of(prompt_id: str):
            seed = self.broker.prompts.get(prompt_id).metadata.get("object_seed")
            return None if seed is None else training_prompt(int(seed), view_seed=int(seed), settings=shapes).object.occupancy

        return GroundTruthAnchors(encoder, occupancy_of)

    def _anchor(self, x0: torch.Tensor, cond: torch.Tensor, labels: list[bool], rng: np.random.Generator) -> int:
        """Replace ``anchor_share`` of the batch's stable rows by true objects (in place); returns how many."""
        stable_rows = [i for i, y in enumerate(labels) if y]
        k = int(round(self.settings.objective.anchor_share * len(stable_rows)))
        drawn = self.anchors.draw(self.broker.prompts.active(), k, rng)
        for row, (prompt_id, latent) in zip(stable_rows, drawn):
            x0[row] = latent
            cond[row] = self.condition(prompt_id)
        return len(drawn)

    def group_rate(self, prompt_id: str, label: bool) -> float:
        """The prompt's stable rate over its newest labels (the group mean); the row's own label when none."""
        recent = self._recent.get(prompt_id)
        return float(np.mean(recent)) if recent else float(label)

    def condition(self, prompt_id: str) -> torch.Tensor:
        """Condition tokens [L, D] of a prompt, from its stored image through the frozen conditioner (cached)."""
        cond = self._cond.get(prompt_id)
        if cond is None:
            image = self.images.get(prompt_id)
            cond = self.encoder.encode([image])[0].detach().to("cpu", torch.float32)
            self._cond[prompt_id] = cond
        return cond

    def fleet_version(self) -> int:
        """The version generators sample from: the promoted one, which lags the newest publish while the canary
        scores. Staleness counts from it; counted from the newest publish, a gate that refuses a few candidates
        would leave the learner no fresh-enough sample at all."""
        return self.broker.promotion.promoted()

    def within_replay_ratio(self) -> bool:
        """Whether another step keeps learner steps <= ``loop.max_steps_per_sample`` x samples ingested.

        Without a bound a fast learner keeps re-fitting the same replay buffer, which
        for DRO and DPO means drifting away from the base geometry ("cheating").
        """
        ratio = self.loop.max_steps_per_sample
        if ratio is None:
            return True
        return self.tuner.step < self._step_allowance_base + ratio * self._ingested

    def ready(self) -> bool:
        """At least ``loop.min_replay`` fresh-enough samples (of both classes for paired objectives).

        Unpaired DRO learns from either class alone (pull stable samples in, push
        unstable ones out, each half averaged on its own), so it starts without pairs.
        """
        min_version = self.fleet_version() - self.broker.settings.max_staleness_versions
        counts = self.broker.replay.counts(min_version=min_version)
        if self.tuner.paired and not (counts["stable"] and counts["unstable"]):
            return False
        return sum(counts.values()) >= self.loop.min_replay

    def _records(self, rng: np.random.Generator) -> tuple[list[LabelledRecord], list[bool]] | None:
        n = self.loop.learner_batch
        if not self.tuner.paired:
            batch = self.broker.replay.sample(n, self.fleet_version(), rng=rng)
            if not batch.balanced:  # one class only: a full batch of it (its half of a 2n draw)
                batch = self.broker.replay.sample(2 * n, self.fleet_version(), rng=rng)
            return (list(batch), batch.labels) if len(batch) else None
        # paired objectives: row i of the stable half and of the unstable half share a prompt
        pool = self.broker.replay.sample(4 * n, self.fleet_version(), rng=rng)
        unstable_by_prompt: dict[str, list[LabelledRecord]] = defaultdict(list)
        for record in pool.unstable:
            unstable_by_prompt[record.sample.prompt_id].append(record)
        winners, losers = [], []
        for record in pool.stable:
            candidates = unstable_by_prompt.get(record.sample.prompt_id)
            if candidates:
                winners.append(record)
                losers.append(candidates.pop())
            if len(winners) == n // 2:
                break
        if not winners:
            return None
        return winners + losers, [True] * len(winners) + [False] * len(losers)

    def train_batch(self, rng: np.random.Generator) -> tuple[TrainBatch, list[int]] | None:
        """A TrainBatch from the replay buffer and each row's staleness (versions behind), or None if not drawable."""
        drawn = self._records(rng)
        if drawn is None:
            return None
        records, labels = drawn
        x0 = torch.stack([torch.from_numpy(r.sample.latent.astype(np.float32)) for r in records])
        cond = torch.stack([self.condition(r.sample.prompt_id) for r in records])
        fleet = self.fleet_version()
        staleness = [max(0, fleet - r.adapter_version) for r in records]
        rate = None
        if self.tuner.needs.group_rate:
            rate = torch.tensor([self.group_rate(r.sample.prompt_id, y) for r, y in zip(records, labels)], dtype=torch.float32)
        if self.anchors is not None and not self.tuner.paired:
            anchored = self._anchor(x0, cond, labels, rng)
            if rate is not None:
                rate[[i for i, y in enumerate(labels) if y][:anchored]] = 0.0  # a true object always pulls
        return TrainBatch(x0, cond, torch.tensor(labels, dtype=torch.bool), rate), staleness

    # --- one step --------------------------------------------------------------------

    def step(self) -> LearnerStep:
        self.maybe_rollback()
        out = LearnerStep(ingested=self.ingest())
        self._ingested += out.ingested
        if not self.within_replay_ratio() or not self.ready():
            return out
        rng = np.random.default_rng([self.settings.train.seed, self.tuner.step])
        drawn = self.train_batch(rng)
        if drawn is None:
            return out
        batch, staleness = drawn
        telemetry.observe_staleness(staleness)
        started = time.perf_counter()
        try:
            metrics = self.tuner.train_step(batch)
        except FloatingPointError as exc:
            log.warning("%s: %s", self.name, exc)
            return out
        telemetry.observe_learner_step(metrics["loss"], time.perf_counter() - started)
        metrics["batch_staleness"] = float(np.mean(staleness))
        out.trained, out.metrics = True, metrics
        if self.tuner.step % self.loop.publish_every == 0:
            out.published = self.publish(metrics)
        elif self.loop.checkpoint_every and self.tuner.step % self.loop.checkpoint_every == 0:
            self.checkpoint()
        extras = {k: v for k, v in metrics.items() if k not in ("loss", "step") and math.isfinite(v)}
        extras["rollbacks"] = self.rollbacks
        self.broker.stats.record_learner(self.tuner.step, metrics["loss"], self.version, **extras)
        return out
