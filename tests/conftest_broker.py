"""Broker test fixtures: one real embedded Valkey per test session, one key prefix per test.

Import the fixtures into a test module with
``from conftest_broker import broker_settings, valkey_server, redis_client, make_settings, ...``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from dso.broker.records import LabelledRecord, SampleRecord
from dso.broker.server import EmbeddedValkey, make_client
from dso.config import BrokerSettings
from dso.sim.verdict import Outcome, SimStatus, Verdict

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


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey-session")) as server:
        yield server


@pytest.fixture()
def redis_client(valkey_server: EmbeddedValkey) -> Iterator[redis.Redis]:
    client = make_client(valkey_server.url)
    yield client
    client.close()


@pytest.fixture()
def broker_settings(tmp_path: Path, valkey_server: EmbeddedValkey) -> BrokerSettings:
    return make_settings(tmp_path, redis_url=valkey_server.url)
