"""Canary role: score every published candidate on the fixed probe and decide whether the fleet may run it.

The learner *publishes*; the canary *decides*; generators follow the *promoted* version only
(:mod:`dso.broker.promotion`). At start the canary scores the base model (version 0) once and records it
as the ``baseline`` (unless a previous canary did: restart-safe; the base's probe samples are regenerated,
they live only in memory). Then, at most once per ``canary.min_interval_s`` (its CPU budget), it takes
the newest published version, marks the undecided ones before it ``superseded``, loads the newest into
its own LoRA-wrapped copy of the generator, scores it (:mod:`dso.evaluate.canary`) and lets the gate
(:mod:`dso.evaluate.gate`) decide against the base and the promoted version.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from dso import telemetry
from dso.broker.adapter_store import AdapterStoreError
from dso.broker.broker import Broker
from dso.broker.promotion import CanaryRecord
from dso.config import Settings
from dso.evaluate.canary import ProbeSamples, ProbeSet, generate_probe, heldout_probe, score_probe
from dso.evaluate.gate import Decision, decide
from dso.models.contract import ShapeGenerator
from dso.models.generator import Generator
from dso.models.lora import AdapterFormatError, attach_lora, live_lora_parameters, load_adapter_weights

log = logging.getLogger(__name__)


def canary_settings(settings: Settings) -> Settings:
    """The settings with the model placed on the canary's device."""
    model = settings.model.model_copy(update={"device": settings.canary.device})
    return settings.model_copy(update={"model": model})


class CanaryWorker:
    """The canary: its own generator (base + LoRA), the probe, the base's samples and the decisions so far."""

    def __init__(
        self, broker: Broker, settings: Settings, generator: ShapeGenerator | None = None, probe: ProbeSet | None = None
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.canary = settings.canary
        self.generator = generator or Generator.from_settings(canary_settings(settings))
        # B = 0 at first: the wrapped model is the base; a candidate is an in-place copy of its LoRA weights
        self.policy = attach_lora(self.generator.trainable_module, settings.lora).eval()
        self.generator.flow = self.policy
        self.live = live_lora_parameters(self.policy)
        self.base_weights = {key: param.detach().clone() for key, param in self.live.items()}
        self.probe = probe or heldout_probe(settings)
        self.base_samples: ProbeSamples | None = None
        self.base_scores: dict[str, float] = {}
        records = broker.promotion.all()
        self.last_decided = max(records, default=0)  # a restarted canary does not re-decide versions
        self.last_scored_at = -math.inf  # time.monotonic() at the end of the last scoring
        self.scored = 0
        self.counts = {d.value: 0 for d in Decision}

    # --- the base model ------------------------------------------------------------

    def start(self) -> dict[str, float]:
        """Score the base model (its samples are the drift reference); record it as the baseline once."""
        started = time.perf_counter()
        self._load(self.base_weights)
        self.base_samples = generate_probe(self.generator, self.probe, self.canary)
        self.base_scores = score_probe(self.base_samples, self.base_samples, self.probe, self.settings.sim, self.canary)
        seconds = time.perf_counter() - started
        self.last_scored_at = time.monotonic()
        if self.broker.promotion.get(0) is None:
            record = CanaryRecord(
                version=0, decision=Decision.baseline, reasons=["the base model: the reference of every bound"],
                scores=self.base_scores, samples=len(self.probe), seconds=seconds,
            )
            self.broker.promotion.record(record)
            telemetry.observe_canary(0, Decision.baseline.value, self.base_scores, seconds, self.broker.promotion.promoted())
        log.info("canary: base model scored in %.1f s: %s", seconds, _brief(self.base_scores))
        return self.base_scores

    # --- candidates ----------------------------------------------------------------

    def newest_published(self) -> int:
        return max(self.broker.registry.latest() or 0, self.broker.adapters.latest() or 0)

    def step(self, wait_s: float = 0.0) -> bool:
        """Decide on the newest published candidate if the interval allows; True when it scored one.

        ``wait_s``: how long to wait for a publish (or for the interval) before returning without work.
        """
        if self.base_samples is None:
            self.start()
        newest = self.newest_published()
        if newest <= self.last_decided:
            if wait_s > 0:
                self.broker.registry.wait_for_newer(self.last_decided, wait_s)
            return False
        remaining = self.last_scored_at + self.canary.min_interval_s - time.monotonic()
        if remaining > 0:
            if wait_s > 0:
                time.sleep(min(wait_s, remaining))
            return False
        newest = self.newest_published()  # more may have come while waiting
        self._supersede(newest)
        self.evaluate(newest)
        return True

    def _supersede(self, newest: int) -> None:
        promoted = self.broker.promotion.promoted()
        for version in self.broker.adapters.versions():
            if self.last_decided < version < newest and self.broker.promotion.get(version) is None:
                reason = f"superseded by v{newest} before it was scored"
                self.broker.promotion.record(CanaryRecord(version=version, decision=Decision.superseded, reasons=[reason]))
                telemetry.observe_canary(version, Decision.superseded.value, {}, 0.0, promoted)
                self.counts[Decision.superseded.value] += 1

    def evaluate(self, version: int) -> CanaryRecord:
        """Score ``version``, decide, record the decision (which moves the promoted pointer when promoted)."""
        started = time.perf_counter()
        promoted_version = self.broker.promotion.promoted()
        try:
            self._load(load_adapter_weights(self.broker.adapters.path(version)))
        except (AdapterStoreError, AdapterFormatError, KeyError, OSError, RuntimeError, ValueError) as exc:
            decision, reasons, scores = Decision.refused, [f"cannot load adapter v{version}: {exc}"], {}
        else:
            samples = generate_probe(self.generator, self.probe, self.canary)
            scores = score_probe(samples, self.base_samples, self.probe, self.settings.sim, self.canary)
            promoted_record = self.broker.promotion.get(promoted_version) if promoted_version else None
            reference = promoted_record.scores if promoted_record and promoted_record.scores else None
            decision, reasons = decide(scores, self.base_scores, reference, self.settings.gate, promoted_version)
        seconds = time.perf_counter() - started
        record = CanaryRecord(
            version=version, decision=decision, reasons=reasons, scores=scores, samples=len(self.probe), seconds=seconds
        )
        self.broker.promotion.record(record)
        after = self.broker.promotion.promoted()
        telemetry.observe_canary(version, decision.value, scores, seconds, after)
        self.last_decided = max(self.last_decided, version)
        self.last_scored_at = time.monotonic()
        self.scored += 1
        self.counts[decision.value] += 1
        log.info(
            "canary: v%d %s in %.1f s (%s)%s", version, decision.value, seconds, _brief(scores),
            "" if decision == Decision.promoted else ": " + "; ".join(reasons),
        )
        return record

    def _load(self, weights: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.live) - set(weights))
        if missing:
            raise KeyError(f"adapter lacks LoRA keys of the model: {missing[:3]}")
        with torch.no_grad():
            for key, param in self.live.items():
                param.copy_(weights[key].to(param.device, param.dtype))


def _brief(scores: dict[str, float]) -> str:
    keys = ("stable_ratio", "paired_drift", "chamfer", "diversity")
    return ", ".join(f"{k} {scores[k]:.4g}" for k in keys if k in scores)
