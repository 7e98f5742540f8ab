"""Prometheus metrics: recording helpers, label hygiene, the scrape servers, and `promtool check metrics`."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest_broker import make_settings, verdict_of
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from dso.api.app import create_app
from dso.broker import Broker
from dso.config import ApiSettings, Settings
from dso.telemetry import (
    BrokerCollector,
    LoopMetrics,
    MetricsTargets,
    labelled_result,
    start_metrics_server,
    start_process_metrics,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; scripts/ci-system-deps.sh does it in CI)"
)


def value(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry.get_sample_value(name, labels or {})


def promtool_check(exposition: bytes) -> None:
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as opened:
        yield opened


def test_verdicts_map_to_the_four_results() -> None:
    from dso.sim.verdict import Outcome, SimStatus, Verdict

    assert labelled_result(Verdict(status=SimStatus.ok, stable=True)) == "stable"
    assert labelled_result(Verdict(status=SimStatus.ok, stable=False)) == "unstable"
    assert labelled_result(Verdict.failure(SimStatus.invalid_input, "empty")) == "invalid"
    assert labelled_result(Verdict.failure(SimStatus.sim_error, "crashed")) == "error"
    assert labelled_result(Verdict.failure(SimStatus.timeout, "slow")) == "error"
    assert labelled_result("stable") == "stable" and labelled_result(Outcome.error) == "error"
    with pytest.raises(ValueError, match="result must be one of"):
        labelled_result("maybe")


def test_oracle_verdict_objects_are_read_directly() -> None:
    from dso.sim.verdict import SimStatus, Verdict

    registry = CollectorRegistry()
    metrics = LoopMetrics(registry)
    assert metrics.observe_labelled(Verdict(status=SimStatus.ok, stable=True, elapsed_s=0.04)) == "stable"
    assert metrics.observe_labelled(Verdict.failure(SimStatus.invalid_input, "empty grid", elapsed_s=0.01)) == "invalid"
    assert metrics.observe_labelled(Verdict.failure(SimStatus.timeout, "too slow", elapsed_s=30.0)) == "error"
    assert value(registry, "dso_simulation_duration_seconds_sum") == pytest.approx(30.05)


def test_helpers_record_counters_histograms_and_gauges() -> None:
    from dso.sim.verdict import SimStatus, Verdict

    registry = CollectorRegistry()
    metrics = LoopMetrics(registry)
    for result in ("stable", "unstable", "invalid", "error"):  # every series exists before the first event
        assert value(registry, "dso_samples_labelled_total", {"result": result}) == 0
    metrics.observe_generated(8, 1.25)
    metrics.observe_labelled(Verdict(status=SimStatus.ok, stable=True, elapsed_s=0.02))
    metrics.observe_labelled(Verdict(status=SimStatus.ok, stable=False), seconds=0.5)
    metrics.observe_labelled(Verdict.failure(SimStatus.timeout, "slow"), seconds=30.0)
    metrics.observe_learner_step(loss=0.42, seconds=0.2)
    metrics.observe_adapter_published(version=3)
    metrics.set_adapter_version("generator", 2)
    metrics.observe_staleness([0, 1, 1, 4])
    metrics.observe_publish_to_adopt(1.5)
    assert value(registry, "dso_samples_generated_total") == 8
    assert value(registry, "dso_generation_batch_duration_seconds_sum") == 1.25
    assert value(registry, "dso_samples_labelled_total", {"result": "stable"}) == 1
    assert value(registry, "dso_samples_labelled_total", {"result": "error"}) == 1
    assert value(registry, "dso_simulation_duration_seconds_count") == 3
    assert value(registry, "dso_learner_steps_total") == 1 and value(registry, "dso_learner_loss") == 0.42
    assert value(registry, "dso_adapters_published_total") == 1
    assert value(registry, "dso_adapter_version", {"component": "learner"}) == 3
    assert value(registry, "dso_adapter_version", {"component": "generator"}) == 2
    assert value(registry, "dso_sample_staleness_versions_count") == 4
    assert value(registry, "dso_sample_staleness_versions_bucket", {"le": "1.0"}) == 3
    assert value(registry, "dso_adapter_publish_to_adopt_seconds_sum") == 1.5
    with pytest.raises(ValueError, match="component"):
        metrics.set_adapter_version("generator-7", 1)  # no ids as label values
    with pytest.raises(ValueError):
        metrics.observe_staleness([-1])


def test_loop_process_server_serves_valid_metrics_and_finds_a_free_port() -> None:
    registry = CollectorRegistry()
    LoopMetrics(registry).observe_labelled("stable", seconds=0.1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        server = start_metrics_server(busy, host="127.0.0.1", span=20, registry=registry)
        try:
            assert busy < server.port < busy + 20  # skipped the busy port
            body = httpx.get(server.url, timeout=5).content
        finally:
            server.stop()
    assert b'dso_samples_labelled_total{result="stable"} 1.0' in body
    if PROMTOOL:
        promtool_check(body)


@needs_promtool
def test_api_exposition_passes_promtool_and_has_no_ids_in_labels(broker: Broker) -> None:
    metrics = LoopMetrics(CollectorRegistry())
    app = create_app(Settings(broker=broker.settings, api=ApiSettings()), broker, metrics=metrics, environ={})
    prompt = broker.prompts.add(b"\x89PNG fake bytes are fine for the store", {}).prompt_id
    broker.stats.record_labelled(verdict_of("stable"), adapter_version=0)
    with TestClient(app) as client:
        client.get(f"/v1/prompts/{prompt}")
        client.get("/v1/prompts/" + "1" * 64)
        body = client.get("/metrics").content
    promtool_check(body)
    text = body.decode()
    assert prompt not in text and "1" * 64 not in text  # routes are templates, never ids
    assert 'route="/v1/prompts/{prompt_id}",status="404"' in text
    assert "dso_broker_up 1.0" in text and 'dso_queue_length{stream="samples"}' in text
    assert 'dso_adapter_stability_ratio{adapter_version="0"} 1.0' in text


def test_broker_collector_keeps_only_the_newest_versions(broker: Broker) -> None:
    for version in range(6):
        broker.stats.record_labelled(verdict_of("stable" if version % 2 == 0 else "unstable"), adapter_version=version)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, recent_versions=3))
    text = generate_latest(registry).decode()
    versions = sorted(line.split('"')[1] for line in text.splitlines() if line.startswith("dso_adapter_stability_ratio{"))
    assert versions == ["3", "4", "5"]
    assert value(registry, "dso_adapter_stability_ratio", {"adapter_version": "4"}) == 1.0
    assert value(registry, "dso_adapter_stability_ratio", {"adapter_version": "5"}) == 0.0


def test_targets_expire_unless_reannounced(broker: Broker) -> None:
    targets = MetricsTargets(broker.targets, ttl_s=10)
    targets.announce("simulator", "h1:9100", now=1000.0)
    targets.announce("learner", "h2:9100", now=1000.0)
    assert targets.live(now=1005.0) == [("learner", "h2:9100"), ("simulator", "h1:9100")]
    targets.announce("simulator", "h1:9100", now=1008.0)  # re-announced: lives on
    assert targets.live(now=1012.0) == [("simulator", "h1:9100")]
    targets.withdraw("simulator", "h1:9100")
    assert targets.live(now=1012.0) == []
    with pytest.raises(ValueError, match="host:port"):
        targets.announce("simulator", "nohost")


def test_process_metrics_take_the_env_port_and_announce_themselves(broker: Broker) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = start_process_metrics(
        "learner", ApiSettings(metrics_port=1, metrics_port_span=4), broker, host="127.0.0.1",
        environ={"DSO_METRICS_PORT": str(port)},
    )
    targets = MetricsTargets(broker.targets)
    try:
        assert port <= running.server.port < port + 4
        assert targets.live() == [("learner", f"127.0.0.1:{running.server.port}")]
        assert httpx.get(running.server.url, timeout=5).status_code == 200
    finally:
        running.stop()
    assert targets.live() == []  # withdrawn on a clean stop


def test_process_metrics_bind_the_configured_api_host_not_every_interface() -> None:
    """Actors' /metrics were on 0.0.0.0 while the API was on 127.0.0.1: they now follow api.host."""
    running = start_process_metrics("simulator", ApiSettings(metrics_port=0), environ={})
    try:
        assert running.server.host == ApiSettings().host == "127.0.0.1"
        assert running.server.server.server_address[0] == "127.0.0.1"
    finally:
        running.stop()
    bare = start_metrics_server(0, registry=CollectorRegistry())  # no host given: loopback too
    try:
        assert bare.server.server_address[0] == "127.0.0.1"
    finally:
        bare.stop()
