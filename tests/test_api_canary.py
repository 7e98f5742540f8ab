"""The canary and the promotion gate through the API: latest = promoted, scores per version, stats, history, metrics.

Decisions are recorded the way the canary records them (``broker.promotion.record``) on a real
embedded Valkey; the adapters are tiny fake PEFT folders (the API serves bytes, it never loads them).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_broker import make_settings
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from dso.api.app import create_app
from dso.broker import Broker
from dso.broker.promotion import CanaryRecord, Decision
from dso.config import ApiSettings, Settings
from dso.telemetry import BrokerCollector, LoopMetrics

PROMTOOL = shutil.which("promtool")
WEIGHTS = "adapter_model.safetensors"
BASE = {"stable_ratio": 0.5, "paired_drift": 0.0, "chamfer": 1.0, "fscore": 0.6, "footprint_ratio": 1.0, "diversity": 1.0}
GOOD = {**BASE, "stable_ratio": 0.75, "paired_drift": 0.4, "chamfer": 1.02, "stable_n": 48.0}
BAD = {**BASE, "stable_ratio": 0.9, "paired_drift": 2.5, "chamfer": 1.4}


def publish(broker: Broker, tmp_path: Path, seed: int) -> int:
    """A PEFT-shaped folder with distinct bytes per seed; returns its version."""
    folder = tmp_path / f"adapter-{seed}"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(f'{{"peft_type": "LORA", "r": {seed + 1}}}')
    (folder / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes([seed]) * 16)
    return broker.adapters.publish(folder, step=seed, objective="dpo").version


def decide(broker: Broker, version: int, decision: Decision, scores: dict[str, float], at: float, **extra) -> bool:
    return broker.promotion.record(
        CanaryRecord(version=version, decision=decision, scores=scores, samples=64, seconds=3.5, decided_at=at, **extra)
    )


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as opened:
        yield opened


def make_client(broker: Broker, metrics: LoopMetrics) -> TestClient:
    app = create_app(Settings(broker=broker.settings, api=ApiSettings()), broker, metrics=metrics, environ={})
    return TestClient(app)


@pytest.fixture()
def client(broker: Broker) -> Iterator[TestClient]:
    with make_client(broker, LoopMetrics(CollectorRegistry())) as test_client:
        yield test_client


@pytest.fixture()
def scored(broker: Broker, tmp_path: Path) -> Broker:
    """v1 promoted, v2 refused, v3 published but not scored yet (the baseline is v0)."""
    for seed in (1, 2, 3):
        publish(broker, tmp_path, seed)
    decide(broker, 0, Decision.baseline, BASE, at=1000.0)
    assert decide(broker, 1, Decision.promoted, GOOD, at=1010.0, reasons=["within every bound"])
    assert not decide(broker, 2, Decision.refused, BAD, at=1020.0,
                      reasons=["paired drift 2.50 > 1.50", "chamfer ratio 1.40 > 1.05"])
    return broker


def test_latest_is_a_clear_404_until_something_is_promoted(client: TestClient, broker: Broker, tmp_path: Path) -> None:
    publish(broker, tmp_path, 1)
    for url in ("/v1/adapters/latest", f"/v1/adapters/latest/files/{WEIGHTS}", "/v1/adapters/latest/archive"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "no adapter has been promoted yet: 1 published" in response.json()["detail"]
    assert client.get("/v1/adapters/1").status_code == 200  # a numbered candidate stays inspectable
    assert client.get("/v1/adapters").json()["promoted"] == 0


def test_latest_follows_the_promoted_version_not_the_newest_publish(client: TestClient, scored: Broker) -> None:
    broker = scored
    latest = client.get("/v1/adapters/latest").json()
    assert latest["version"] == 1 and latest["promoted"] is True and latest["latest"] is False
    # downloads of "latest" are the promoted version's bytes, with the same ETag / 304 rules as before
    weights = client.get(f"/v1/adapters/latest/files/{WEIGHTS}")
    digest = hashlib.sha256(weights.content).hexdigest()
    assert weights.status_code == 200 and digest == broker.adapters.manifest(1).sha256 != broker.adapters.manifest(3).sha256
    assert weights.headers["etag"] == f'"{digest}"' and weights.headers["cache-control"].endswith("no-cache")
    assert client.get(f"/v1/adapters/latest/files/{WEIGHTS}", headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    archive = client.get("/v1/adapters/latest/archive")
    assert archive.content == client.get("/v1/adapters/1/archive").content
    assert client.get("/v1/adapters/latest/archive", headers={"If-None-Match": archive.headers["etag"]}).status_code == 304

    # a newer promotion moves "latest"; the old ETag no longer matches
    assert decide(broker, 3, Decision.promoted, GOOD, at=1030.0)
    assert client.get("/v1/adapters/latest").json()["version"] == 3
    moved = client.get(f"/v1/adapters/latest/files/{WEIGHTS}", headers={"If-None-Match": f'"{digest}"'})
    assert moved.status_code == 200 and hashlib.sha256(moved.content).hexdigest() == broker.adapters.manifest(3).sha256
    # a late decision on an older candidate cannot demote the promoted one
    assert not decide(broker, 2, Decision.promoted, GOOD, at=1040.0)
    assert client.get("/v1/adapters/latest").json()["version"] == 3


def test_each_version_carries_its_canary_scores_and_decision(client: TestClient, scored: Broker) -> None:
    refused = client.get("/v1/adapters/2").json()
    assert refused["promoted"] is False
    canary = refused["canary"]
    assert canary["decision"] == "refused" and canary["reasons"] == ["paired drift 2.50 > 1.50", "chamfer ratio 1.40 > 1.05"]
    assert canary["scores"] == BAD and canary["samples"] == 64 and canary["seconds"] == 3.5
    assert canary["decided_at"] == 1020.0
    promoted = client.get("/v1/adapters/1").json()
    assert promoted["promoted"] is True and promoted["canary"]["scores"]["stable_n"] == 48.0
    assert client.get("/v1/adapters/3").json()["canary"] is None  # not scored yet

    listing = client.get("/v1/adapters").json()
    assert listing["latest"] == 3 and listing["promoted"] == 1
    decisions = {item["version"]: (item["canary"] or {}).get("decision") for item in listing["items"]}
    assert decisions == {1: "promoted", 2: "refused", 3: None}
    assert [item["promoted"] for item in listing["items"]] == [True, False, False]


def test_stats_and_history_carry_the_promoted_version_and_canary_points(client: TestClient, scored: Broker) -> None:
    stats = client.get("/v1/stats").json()
    assert stats["promoted_version"] == 1 and stats["current_version"] == 3
    assert stats["decisions"] == {"promoted": 1, "refused": 1, "superseded": 0, "baseline": 1}

    history = client.get("/v1/stats/history").json()
    assert history["promoted_version"] == 1
    points = history["canary"]
    assert [(p["version"], p["decision"]) for p in points] == [(0, "baseline"), (1, "promoted"), (2, "refused")]
    assert points[2] == {"version": 2, "decided_at": 1020.0, "decision": "refused", "stable_ratio": 0.9,
                         "paired_drift": 2.5, "chamfer": 1.4}


def test_nothing_scored_reads_as_the_base_model(client: TestClient) -> None:
    stats = client.get("/v1/stats").json()
    assert stats["promoted_version"] == 0 and set(stats["decisions"].values()) == {0}
    history = client.get("/v1/stats/history").json()
    assert history["canary"] == [] and history["promoted_version"] == 0


@pytest.mark.parametrize("registry", ["own", "process-wide"])
def test_metrics_export_the_promoted_version_once_from_the_broker(scored: Broker, registry: str) -> None:
    # the process's own gauge says something else (a canary in this process, or nothing): the broker's reading wins
    metrics = LoopMetrics(CollectorRegistry() if registry == "own" else None)  # None: the API reads the default registry
    metrics.promoted_version.set(99)
    with make_client(scored, metrics) as client:
        body = client.get("/metrics").content
    text = body.decode()
    assert text.count("# TYPE dso_adapter_promoted_version gauge") == 1, "one family per name"
    assert "dso_adapter_promoted_version 1.0" in text.splitlines()
    assert 'dso_adapter_decisions{decision="refused"} 1.0' in text
    assert 'dso_adapter_decisions{decision="superseded"} 0.0' in text
    assert 'dso_adapter_canary_stable_ratio{adapter_version="2"} 0.9' in text
    assert 'dso_adapter_canary_chamfer{adapter_version="1"} 1.02' in text
    assert "dso_adapter_canary_stable_n" not in text  # only the documented score names become metrics
    if PROMTOOL:
        result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_openapi_documents_the_canary(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"canary", "promoted"} <= set(schemas["AdapterInfo"]["properties"])
    assert set(schemas["CanaryResult"]["properties"]) >= {"decision", "reasons", "scores", "samples", "seconds", "decided_at"}
    assert {"promoted_version", "decisions"} <= set(schemas["StatsResponse"]["properties"])
    assert {"canary", "promoted_version"} <= set(schemas["StabilityHistory"]["properties"])
    assert set(schemas["Decision"]["enum"]) == {"promoted", "refused", "superseded", "baseline"}


def test_per_version_canary_gauges_keep_the_newest_versions_and_the_baseline(scored: Broker) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(scored, recent_versions=1))
    text = generate_latest(registry).decode()
    versions = sorted(line.split('"')[1] for line in text.splitlines() if line.startswith("dso_adapter_canary_chamfer{"))
    assert versions == ["0", "2"]  # v1 left the window; v0 stays, the reference of every ratio
