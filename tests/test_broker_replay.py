"""Replay buffer on a real Valkey: bounded per class, balanced draws, staleness filter, dedup."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from conftest_broker import make_labelled

from dso.broker import IngestResult, KeySpace, ReplayBuffer
from dso.config import BrokerSettings


@pytest.fixture()
def replay(redis_client: redis.Redis, broker_settings: BrokerSettings) -> ReplayBuffer:
    return ReplayBuffer(redis_client, KeySpace(broker_settings.key_prefix), broker_settings)


def fill(replay: ReplayBuffer, stable: bool, versions: list[int], seed0: int = 0) -> list[str]:
    ids = []
    for i, version in enumerate(versions):
        record = make_labelled(stable=stable, adapter_version=version, seed=seed0 + i)
        assert replay.add(record) is IngestResult.INSERTED
        ids.append(record.sample_id)
    return ids


def test_each_class_keeps_only_its_newest_samples(replay: ReplayBuffer, redis_client: redis.Redis) -> None:
    per_class = replay.per_class_capacity  # capacity 8 -> 4 per class
    stable_ids = fill(replay, True, list(range(per_class + 3)))
    unstable_ids = fill(replay, False, [0], seed0=100)
    assert replay.counts() == {"stable": per_class, "unstable": 1}
    for evicted in stable_ids[:3]:
        assert replay.get(evicted) is None
    for kept in stable_ids[3:] + unstable_ids:
        assert replay.get(kept) is not None
    # the payload hash is evicted together with the indexes
    assert redis_client.hlen(replay.keys.replay("data")) == per_class + 1


def test_draw_is_balanced_and_short_class_is_drawn_with_replacement(replay: ReplayBuffer) -> None:
    stable_ids = fill(replay, True, [1, 1, 1, 1])
    unstable_ids = fill(replay, False, [1, 1], seed0=50)
    batch = replay.sample(8, current_version=1, rng=np.random.default_rng(0))
    assert len(batch.stable) == 4 and len(batch.unstable) == 4 and batch.balanced
    assert all(r.stable for r in batch.stable) and not any(r.stable for r in batch.unstable)
    assert {r.sample_id for r in batch.stable} == set(stable_ids)  # enough: drawn without replacement
    assert {r.sample_id for r in batch.unstable} <= set(unstable_ids)  # short: repeats
    assert batch.labels == [True] * 4 + [False] * 4
    odd = replay.sample(5, current_version=1)
    assert (len(odd.stable), len(odd.unstable)) == (3, 2)


def test_staleness_bound_skips_old_adapter_versions(replay: ReplayBuffer) -> None:
    fill(replay, True, [0, 1, 2, 3])
    fill(replay, False, [0, 3], seed0=10)
    batch = replay.sample(20, current_version=3, max_staleness=1, rng=np.random.default_rng(1))
    assert {r.adapter_version for r in batch} <= {2, 3}
    assert {r.adapter_version for r in batch.unstable} == {3}
    assert replay.counts(min_version=2) == {"stable": 2, "unstable": 1}
    # default bound comes from settings (4 versions): everything is recent enough
    assert {r.adapter_version for r in replay.sample(40, current_version=3, rng=np.random.default_rng(2))} == {0, 1, 2, 3}


def test_a_class_with_nothing_eligible_comes_back_empty(replay: ReplayBuffer) -> None:
    fill(replay, True, [5, 5])
    fill(replay, False, [0], seed0=10)
    batch = replay.sample(4, current_version=5, max_staleness=0)
    assert len(batch.stable) == 2 and batch.unstable == [] and not batch.balanced


def test_duplicates_and_invalid_verdicts_are_not_stored(replay: ReplayBuffer) -> None:
    record = make_labelled(stable=True)
    assert replay.add(record) is IngestResult.INSERTED
    assert replay.add(record) is IngestResult.DUPLICATE
    timeout = make_labelled(stable=False, seed=9, status="timeout")
    assert replay.add(timeout) is IngestResult.SKIPPED
    assert replay.counts() == {"stable": 1, "unstable": 0}
    stored = replay.get(record.sample_id)
    assert stored is not None and stored.verdict == record.verdict


def test_clear_keeps_dedup_memory(replay: ReplayBuffer) -> None:
    record = make_labelled(stable=True)
    replay.add(record)
    replay.clear()
    assert len(replay) == 0
    assert replay.add(record) is IngestResult.DUPLICATE


def test_bad_arguments(replay: ReplayBuffer) -> None:
    with pytest.raises(ValueError, match="n must be"):
        replay.sample(0, current_version=0)
    with pytest.raises(ValueError, match="max_staleness"):
        replay.sample(2, current_version=0, max_staleness=-1)
