"""The Grafana dashboard and Prometheus files under deploy/: valid, portable, and about metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest_broker import make_settings
from prometheus_client import CollectorRegistry

from dso.broker import Broker
from dso.telemetry import BrokerCollector, LoopMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dso-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus; scripts/ci-system-deps.sh does it in CI)"
)
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board.get("annotations", {}).get("list", []) if "expr" in a]
    return exprs


@pytest.fixture()
def exported_names(tmp_path: Path, valkey_server) -> Iterator[set[str]]:
    """Every metric family name a DSO process exports."""
    registry = CollectorRegistry(auto_describe=False)
    LoopMetrics(registry)
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as broker:
        registry.register(BrokerCollector(broker))
        yield {family.name for family in registry.collect()}


def test_dashboard_imports_anywhere() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for topic in ("stability rate", "per adapter version", "throughput", "queue", "dead letters", "loss",
                  "staleness", "publish-to-adopt", "canary stable %", "paired drift", "chamfer ratio", "promoted",
                  "decisions"):
        assert topic in titles, topic


def test_dashboard_queries_only_metrics_that_exist(exported_names: set[str]) -> None:
    referenced = set()
    for expr in dashboard_exprs():
        for name in re.findall(r"\b(dso_[a-z0-9_]+)", expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix) and name[: -len(suffix)] in exported_names:
                    name = name[: -len(suffix)]
                    break
            referenced.add(name)
    missing = referenced - exported_names
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"
    assert {"dso_samples_labelled", "dso_queue_length", "dso_learner_loss"} <= referenced
    assert {"dso_adapter_promoted_version", "dso_adapter_canary_stable_ratio", "dso_canary_decisions"} <= referenced


@needs_promtool
def test_dashboard_and_rules_are_valid_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_exprs())
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    for target in (path, DEPLOY / "prometheus" / "dso-rules.yml"):
        result = subprocess.run([PROMTOOL, "check", "rules", str(target)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    config = subprocess.run([PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
