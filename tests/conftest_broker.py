"""Broker test helpers: settings with one key prefix per test, sample / labelled records, verdicts.

The fixtures that use them (``valkey_server``: one real embedded Valkey per test session,
``redis_client``, ``broker_settings``) live in conftest.py, so every test module gets them
without importing them; import the helpers here by name (``from conftest_broker import make_settings``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np

from dso.broker.records import LabelledRecord, SampleRecord
from dso.config import BrokerSettings
from dso.sim.verdict import Outcome, SimStatus, Verdict

# what clients of the test S3 server (conftest.py's ``s3_endpoint``) put in the environment, as in production
S3_TEST_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}

# fast settings: short idle before reclaim, no blocking reads, a small replay buffer
FAST_OVERRIDES: dict[str, Any] = {
    "claim_idle_ms": 100,
    "max_deliveries": 3,
    "read_block_ms": 0,
    "replay_capacity": 8,
    "max_backlog": 6,
    "stream_maxlen": 64,
}


def make_settings(run_dir: Path, **overrides: Any) -> BrokerSettings:
    """Test settings with a unique key prefix, so tests sharing one server never see each other's keys."""
    values = {**FAST_OVERRIDES, "run_dir": run_dir, "key_prefix": f"t{uuid.uuid4().hex[:10]}"}
    values.update(overrides)
    return BrokerSettings(**values)


def make_sample(
    adapter_version: int = 0, resolution: int = 4, channels: int = 2, seed: int = 0, prompt_id: str = "p0"
) -> SampleRecord:
    rng = np.random.default_rng(seed)
    return SampleRecord(
        prompt_id=prompt_id,
        view=seed % 4,
        adapter_version=adapter_version,
        seed=seed,
        latent=rng.standard_normal((channels, resolution, resolution, resolution)).astype(np.float32),
        occupancy=rng.random((resolution, resolution, resolution)) > 0.5,
        generation_seconds=0.01,
    )


_FAILURE_STATUS = {Outcome.invalid: SimStatus.invalid_input, Outcome.error: SimStatus.sim_error}


def verdict_of(outcome: str | Outcome) -> Verdict:
    """A verdict of the oracle's own type with this outcome (failures exactly as the oracle makes them)."""
    outcome = Outcome(outcome)
    if outcome.judged:
        stable = outcome == Outcome.stable
        return Verdict(status=SimStatus.ok, stable=stable, tilt_deg=2.0 if stable else 80.0, rotation_deg=3.0, elapsed_s=0.1)
    return Verdict.failure(_FAILURE_STATUS[outcome], f"test {outcome.value} verdict", elapsed_s=0.1)


def make_labelled(stable: bool, adapter_version: int = 0, seed: int = 0, status: str = "ok") -> LabelledRecord:
    if status == SimStatus.ok.value:
        verdict = verdict_of(Outcome.stable if stable else Outcome.unstable)
    else:
        verdict = Verdict.failure(SimStatus(status), f"test {status} verdict", elapsed_s=0.1)
    return LabelledRecord(sample=make_sample(adapter_version, seed=seed), verdict=verdict)
