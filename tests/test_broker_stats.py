"""Live statistics on a real Valkey: counters per version, sliding window, learner, queues, staleness."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from conftest_broker import make_settings, verdict_of

from dso.broker import AdapterRegistry, EmbeddedValkey, KeySpace, StatsStore, WorkQueue
from dso.sim.verdict import SimStatus, Verdict
from dso.config import BrokerSettings


def make_stats(client: redis.Redis, settings: BrokerSettings) -> tuple[StatsStore, WorkQueue, AdapterRegistry]:
    keys = KeySpace(settings.key_prefix)
    queue = WorkQueue(client, keys, settings.samples_stream, settings.simulator_group, settings)
    registry = AdapterRegistry(client, keys, settings)
    return StatsStore(client, keys, settings, queues=[queue], registry=registry), queue, registry


def test_counters_and_rates_per_version(redis_client: redis.Redis, broker_settings: BrokerSettings) -> None:
    stats, _, _ = make_stats(redis_client, broker_settings)
    stats.record_generated(0, count=4, seconds=2.0)
    stats.record_generated(1, count=2, seconds=1.0)
    for stable in (True, False, False):
        stats.record_labelled(verdict_of("stable" if stable else "unstable"), adapter_version=0)
    stats.record_labelled(Verdict.failure(SimStatus.invalid_input, "empty grid"), 0)
    stats.record_labelled(verdict_of("stable"), adapter_version=1)
    snap = stats.snapshot()
    totals = snap["totals"]
    assert (totals["generated"], totals["labelled"], totals["stable"], totals["unstable"], totals["invalid"]) == (6, 5, 2, 2, 1)
    assert totals["stability_rate"] == pytest.approx(0.5) and totals["invalid_rate"] == pytest.approx(0.2)
    assert totals["generation_seconds"] == pytest.approx(3.0)
    v0, v1 = snap["by_version"][0], snap["by_version"][1]
    assert v0["stability_rate"] == pytest.approx(1 / 3) and v0["invalid"] == 1 and v0["generated"] == 4
    assert v1["stability_rate"] == 1.0 and v1["generated"] == 2


def test_window_holds_only_the_last_n_events(
    redis_client: redis.Redis, tmp_path: Path, valkey_server: EmbeddedValkey
) -> None:
    settings = make_settings(tmp_path, redis_url=valkey_server.url, stats_window_samples=3)
    stats, _, _ = make_stats(redis_client, settings)
    for stable in (False, False, True, True, True):
        stats.record_labelled(verdict_of("stable" if stable else "unstable"), adapter_version=0)
    snap = stats.snapshot()
    assert snap["totals"]["stability_rate"] == pytest.approx(0.6)
    assert snap["window"]["labelled"] == 3 and snap["window"]["stability_rate"] == 1.0


def test_window_drops_events_older_than_its_span(
    redis_client: redis.Redis, tmp_path: Path, valkey_server: EmbeddedValkey
) -> None:
    settings = make_settings(tmp_path, redis_url=valkey_server.url, stats_window_seconds=0.3)
    stats, _, _ = make_stats(redis_client, settings)
    stats.record_labelled(verdict_of("unstable"), adapter_version=0)
    stats.record_generated(0, count=5)
    time.sleep(0.4)
    stats.record_labelled(verdict_of("stable"), adapter_version=0)
    window = stats.snapshot()["window"]
    assert (window["labelled"], window["stable"], window["generated"]) == (1, 1, 0)


def _clock(monkeypatch: pytest.MonkeyPatch, start: float) -> list[float]:
    """A settable clock for dso.broker.stats, so events can be spread over seconds without sleeping."""
    import types

    import dso.broker.stats as stats_module

    now = [start]
    monkeypatch.setattr(stats_module, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


def test_rates_divide_by_the_time_the_window_covers(
    redis_client: redis.Redis, broker_settings: BrokerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10 s old run labelling 6/s reports 6/s, not 60 / stats_window_seconds (the 300 s bug)."""
    stats, _, _ = make_stats(redis_client, broker_settings)
    now = _clock(monkeypatch, 1000.0)
    for k in range(61):  # one verdict every 1/6 s, for 10 s
        now[0] = 1000.0 + k / 6
        stats.record_labelled(verdict_of("stable"), adapter_version=0)
        if k % 3 == 0:  # a batch of 3 every 0.5 s
            stats.record_generated(0, count=3)
    now[0] = 1010.0
    window = stats.snapshot()["window"]
    assert window["labelled_per_s"] == pytest.approx(6.0) and window["labelled_seconds"] == pytest.approx(10.0)
    assert window["generated_per_s"] == pytest.approx(6.0)
    now[0] = 1000.0 + broker_settings.stats_window_seconds + 10.0  # stopped: the window is full length, rate decays
    window = stats.snapshot()["window"]
    assert window["labelled_seconds"] == pytest.approx(broker_settings.stats_window_seconds)
    assert window["labelled_per_s"] < 6.0 / 10
    now[0] += broker_settings.stats_window_seconds
    assert stats.snapshot()["window"]["labelled_per_s"] == 0.0


def test_rates_when_the_event_cap_drops_older_events(
    redis_client: redis.Redis, tmp_path: Path, valkey_server: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, redis_url=valkey_server.url, stats_window_samples=10)
    stats, _, _ = make_stats(redis_client, settings)
    now = _clock(monkeypatch, 1000.0)
    for k in range(61):
        now[0] = 1000.0 + k / 6
        stats.record_labelled(verdict_of("stable"), adapter_version=0)
    window = stats.snapshot()["window"]
    assert window["labelled_per_s"] == pytest.approx(6.0) and window["labelled_seconds"] == pytest.approx(1.5)


def test_learner_queue_depths_and_staleness(redis_client: redis.Redis, broker_settings: BrokerSettings) -> None:
    stats, queue, registry = make_stats(redis_client, broker_settings)
    stats.record_learner(step=10, loss=0.8, version=2)
    stats.record_learner(step=11, loss=0.6, version=2, grad_norm=1.5)
    for version in (1, 3):
        stats.record_labelled(verdict_of("stable"), adapter_version=version)
    registry.announce({"version": 3, "step": 11})
    queue.put("a", b"x")
    queue.put("b", b"y")
    queue.read("sim", count=1)
    snap = stats.snapshot()
    assert snap["learner"]["step"] == 11 and snap["learner"]["loss"] == pytest.approx(0.6)
    assert snap["learner"]["grad_norm"] == 1.5
    assert snap["learner"]["loss_window_mean"] == pytest.approx(0.7)
    assert snap["queues"]["samples"] == {"length": 2, "lag": 1, "pending": 1, "backlog": 2}
    assert snap["current_version"] == 3
    assert snap["window"]["staleness_max"] == 2 and snap["window"]["staleness_mean"] == pytest.approx(1.0)


def test_every_failure_verdict_is_counted_invalid(redis_client: redis.Redis, broker_settings: BrokerSettings) -> None:
    stats, _, _ = make_stats(redis_client, broker_settings)
    classes = [stats.record_labelled(Verdict.failure(status, "no physics"), 0) for status in SimStatus if status != SimStatus.ok]
    assert classes == ["invalid"] * 3
    assert stats.record_labelled(Verdict(status=SimStatus.ok, stable=True, tilt_deg=1.0, rotation_deg=1.0), 0) == "stable"
    totals = stats.snapshot()["totals"]
    assert (totals["labelled"], totals["invalid"], totals["stable"]) == (4, 3, 1)
