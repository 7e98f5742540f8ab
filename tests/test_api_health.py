"""Liveness, readiness (flips to 503 when Redis stops), live statistics and scrape targets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_broker import make_settings, verdict_of
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from dso.api.app import create_app
from dso.broker import Broker, EmbeddedValkey
from dso.broker.server import BrokerConnection, make_client
from dso.config import ApiSettings, Settings
from dso.telemetry import LoopMetrics, MetricsTargets


def build(broker: Broker, **kwargs: object) -> TestClient:
    app = create_app(
        Settings(broker=broker.settings, api=ApiSettings(readiness_timeout_s=1.0)), broker,
        metrics=LoopMetrics(CollectorRegistry()), environ={}, **kwargs,
    )
    return TestClient(app)


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as opened:
        yield opened


def test_readiness_flips_to_503_when_redis_stops(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "own-valkey").start()
    try:
        settings = make_settings(tmp_path, redis_url=server.url)
        broker = Broker.over(BrokerConnection(make_client(server.url), server.url), settings)
        with build(broker) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json() == {"ready": True, "checks": {"redis": "ok", "adapter_store": "ok"}}
            server.stop()
            down = client.get("/readyz")
            assert down.status_code == 503
            assert down.json()["ready"] is False and "Redis unreachable" in down.json()["checks"]["redis"]
            assert client.get("/healthz").status_code == 200  # alive, just not ready
            stats = client.get("/v1/stats")
            assert stats.status_code == 503 and "Redis" in stats.json()["detail"]
            scrape = client.get("/metrics")  # a scrape still works and says the broker is down
            assert scrape.status_code == 200 and "dso_broker_up 0.0" in scrape.text
    finally:
        server.stop()


def test_component_checks_feed_readiness(broker: Broker) -> None:
    alive = {"learner": True}

    def crashing() -> bool:
        raise RuntimeError("actor died")

    with build(broker, component_checks={"learner": lambda: alive["learner"], "simulator": crashing}) as client:
        body = client.get("/readyz").json()
        assert body["checks"]["learner"] == "ok" and "actor died" in body["checks"]["simulator"]
        assert client.get("/readyz").status_code == 503


def test_stats_report_rates_throughput_queues_and_learner(broker: Broker) -> None:
    broker.stats.record_generated(adapter_version=0, count=6, seconds=1.5)
    for stable in (True, True, True, False):
        broker.stats.record_labelled(verdict_of("stable" if stable else "unstable"), adapter_version=0)
    broker.stats.record_labelled(verdict_of("invalid"), adapter_version=0)
    broker.stats.record_learner(step=12, loss=0.25, version=0)
    broker.samples.put("s1", b"payload")
    with build(broker) as client:
        stats = client.get("/v1/stats").json()
    assert stats["totals"]["stability_rate"] == 0.75 and stats["totals"]["invalid"] == 1
    assert stats["window"]["stability_rate"] == 0.75 and stats["by_version"]["0"]["labelled"] == 5
    assert stats["throughput"]["labelled_per_s"] == stats["window"]["labelled_per_s"]
    assert stats["throughput"]["generated_per_s"] == stats["window"]["generated_per_s"]
    assert stats["window"]["labelled_seconds"] < stats["window"]["seconds"]  # covered, not configured
    assert stats["learner"]["step"] == 12 and stats["learner"]["loss"] == 0.25
    assert stats["queues"]["samples"]["length"] == 1 and stats["queues"]["samples"]["lag"] == 1
    assert stats["dead_letters"] == 0 and stats["prompts_active"] == 0


def test_metrics_targets_are_served_as_http_service_discovery(broker: Broker) -> None:
    targets = MetricsTargets(broker.targets, ttl_s=60)
    targets.announce("simulator", "10.0.0.5:9101")
    targets.announce("simulator", "10.0.0.6:9101")
    targets.announce("learner", "10.0.0.7:9100")
    targets.announce("generator", "10.0.0.8:9100", now=0.0)  # expired long ago
    with build(broker) as client:
        groups = client.get("/v1/metrics/targets").json()
    assert groups == [
        {"targets": ["10.0.0.7:9100"], "labels": {"component": "learner"}},
        {"targets": ["10.0.0.5:9101", "10.0.0.6:9101"], "labels": {"component": "simulator"}},
    ]


def test_readiness_can_require_announced_loop_components(broker: Broker) -> None:
    app = create_app(
        Settings(broker=broker.settings, api=ApiSettings(ready_requires=["learner"])), broker,
        metrics=LoopMetrics(CollectorRegistry()), environ={},
    )
    with TestClient(app) as client:
        waiting = client.get("/readyz")
        assert waiting.status_code == 503 and "no live learner" in waiting.json()["checks"]["learner_announced"]
        MetricsTargets(broker.targets).announce("learner", "10.0.0.9:9100")
        assert client.get("/readyz").status_code == 200
