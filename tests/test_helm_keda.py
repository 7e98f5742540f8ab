"""The simulator Deployment's KEDA ScaledObject (helm/dso/templates/simulator-scaledobject.yaml).

Rendered by Helm's own engine (as tests/test_helm_chart.py does) and validated against KEDA's
ScaledObject CRD schema (tests/data/keda, see its NOTICE.md) plus the redis-streams scaler's own
metadata rules; its stream and group must be the broker's key names, its targets the defaults of
dso.config.ScalingSettings, the rule that dso/scaling.py states.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from test_helm_chart import CHART, KUBE_VERSION, NAMESPACE, RELEASE, deep_merge, helm, named, of_kind, render  # noqa: F401

from dso.broker.keys import KeySpace
from dso.config import BrokerSettings, LoopSettings, ScalingSettings, load_settings

SCHEMA = json.loads((Path(__file__).resolve().parent / "data" / "keda" / "scaledobject.v1alpha1.schema.json").read_text())

AUTOSCALED = {"simulatorDeployment": {"enabled": True, "autoscaling": {"enabled": True}}}
EXTERNAL = {"redis": {"enabled": False},
            "externalRedis": {"url": "rediss://redis.example.net:6380/2", "username": "dso", "existingSecret": "redis-creds"}}

# KEDA's redis-streams scaler (pkg/scalers/redis_streams_scaler.go): the metadata keys it reads
REDIS_STREAMS_KEYS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv", "usernameFromEnv", "passwordFromEnv",
    "databaseIndex", "enableTLS", "unsafeSsl", "stream", "consumerGroup", "pendingEntriesCount", "streamLength",
    "lagCount", "activationLagCount",
}
TARGETS = ("pendingEntriesCount", "streamLength", "lagCount")


def redis_streams_errors(metadata: dict[str, str]) -> list[str]:
    """The scaler's parse checks that a schema cannot state (it fails the ScaledObject at runtime)."""
    errors = [f"unknown metadata key {k}" for k in sorted(set(metadata) - REDIS_STREAMS_KEYS)]
    if not metadata.get("stream"):
        errors.append("missing stream")
    if not any(metadata.get(k) for k in ("address", "addressFromEnv", "host", "hostFromEnv")):
        errors.append("no address")
    targets = [k for k in TARGETS if k in metadata]
    if len(targets) != 1:
        errors.append(f"exactly one of {TARGETS} expected, got {targets}")
    for key in targets + ["activationLagCount", "databaseIndex"]:
        if key in metadata and not metadata[key].isdigit():
            errors.append(f"{key} must be an integer, got {metadata[key]!r}")
    if set(targets) & {"pendingEntriesCount", "lagCount"} and not metadata.get("consumerGroup"):
        errors.append("pendingEntriesCount / lagCount need consumerGroup")
    if metadata.get("enableTLS", "false") not in ("true", "false"):
        errors.append("enableTLS must be true or false")
    return errors


def scaled_object(chart: Any, values: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    docs = render(chart, deep_merge(AUTOSCALED, values))
    found = of_kind(docs, "ScaledObject")
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0], docs


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.mark.parametrize("values", [{}, EXTERNAL], ids=["in-chart-valkey", "external-redis"])
def test_scaled_object_is_valid_for_keda_and_targets_the_simulator_deployment(chart: Any, values: dict[str, Any]) -> None:
    obj, docs = scaled_object(chart, values)
    jsonschema.validate(obj, SCHEMA)
    spec = obj["spec"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    names = [t["name"] for t in spec["triggers"]]
    assert len(names) == len(set(names)) == 2
    for trigger in spec["triggers"]:
        assert trigger["type"] == "redis-streams"
        assert redis_streams_errors(trigger["metadata"]) == [], trigger
    deployment = named(docs, "Deployment", spec["scaleTargetRef"]["name"])
    assert spec["scaleTargetRef"]["kind"] == "Deployment" and spec["scaleTargetRef"]["apiVersion"] == "apps/v1"
    assert "replicas" not in deployment["spec"], "KEDA's HPA owns the count: a fixed replicas would fight it on upgrades"
    kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == spec["scaleTargetRef"]["envSourceContainerName"])
    env = {e["name"] for e in container["env"]}
    for trigger in spec["triggers"]:
        for key in ("passwordFromEnv", "usernameFromEnv", "addressFromEnv"):
            if key in trigger["metadata"]:
                assert trigger["metadata"][key] in env, f"{key} names a variable the simulator container lacks"


def test_keda_schema_has_teeth(chart: Any) -> None:
    obj, _ = scaled_object(chart, {})
    typo = copy.deepcopy(obj)
    typo["spec"]["maxReplicas"] = 3
    numbers = copy.deepcopy(obj)
    numbers["spec"]["triggers"][0]["metadata"]["lagCount"] = 8
    no_target = copy.deepcopy(obj)
    del no_target["spec"]["scaleTargetRef"]
    for doc in (typo, numbers, no_target):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, SCHEMA)
    assert redis_streams_errors({"stream": "s", "address": "r:6379", "lagCount": "8"})  # no consumer group
    assert redis_streams_errors({"stream": "s", "address": "r:6379", "consumerGroup": "g", "lagCount": "8", "pendingEntriesCount": "1"})


def test_stream_and_group_are_the_broker_key_names(chart: Any, tmp_path: Path) -> None:
    custom = {"config": {"broker": {"key_prefix": "run7", "samples_stream": "shapes", "simulator_group": "oracles"},
                         "loop": {"simulator_batch": 4}}}
    for values in ({}, custom):
        obj, docs = scaled_object(chart, values)
        config_map = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config"))
        path = tmp_path / "config.yaml"
        path.write_text(config_map["data"]["config.yaml"])
        settings = load_settings(path, environ={})
        stream = KeySpace(settings.broker.key_prefix).stream(settings.broker.samples_stream)
        by_name = {t["name"]: t["metadata"] for t in obj["spec"]["triggers"]}
        for metadata in by_name.values():
            assert metadata["stream"] == stream
            assert metadata["consumerGroup"] == settings.broker.simulator_group
        assert by_name["samples-in-flight"]["pendingEntriesCount"] == str(settings.loop.simulator_batch)
    # the template's fallbacks are the settings' defaults
    assert (BrokerSettings().key_prefix, BrokerSettings().samples_stream, BrokerSettings().simulator_group) == ("dso", "samples", "simulators")
    assert LoopSettings().simulator_batch == 1


def test_chart_defaults_are_the_scaling_settings(chart: Any) -> None:
    obj, _ = scaled_object(chart, {})
    spec, want = obj["spec"], ScalingSettings()
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (want.min_replicas, want.max_replicas)
    assert spec["pollingInterval"] == want.polling_interval_s
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == want.scale_down_stabilization_s
    lag = next(t for t in spec["triggers"] if t["name"] == "samples-lag")["metadata"]
    assert lag["lagCount"] == str(want.lag_per_replica)


def test_in_chart_and_external_redis_addresses(chart: Any) -> None:
    inside, _ = scaled_object(chart, {})
    meta = inside["spec"]["triggers"][0]["metadata"]
    assert meta["address"] == f"{RELEASE}-dso-redis.{NAMESPACE}.svc:6379"  # KEDA runs in its own namespace
    assert (meta["databaseIndex"], meta["enableTLS"], meta["passwordFromEnv"]) == ("0", "false", "DSO_REDIS_PASSWORD")
    outside, docs = scaled_object(chart, EXTERNAL)
    meta = outside["spec"]["triggers"][0]["metadata"]
    assert (meta["address"], meta["databaseIndex"], meta["enableTLS"]) == ("redis.example.net:6380", "2", "true")
    assert meta["usernameFromEnv"] == "DSO_REDIS_USERNAME"
    no_auth, _ = scaled_object(chart, {"redis": {"auth": {"enabled": False}}})
    assert "passwordFromEnv" not in no_auth["spec"]["triggers"][0]["metadata"]


def test_autoscaling_off_or_without_the_deployment_renders_no_scaled_object(chart: Any) -> None:
    assert of_kind(render(chart, {}), "ScaledObject") == []
    assert of_kind(render(chart, {"simulatorDeployment": {"autoscaling": {"enabled": True}}}), "ScaledObject") == []
    fixed = render(chart, {"simulatorDeployment": {"enabled": True, "replicas": 3}})
    assert of_kind(fixed, "ScaledObject") == []
    assert named(fixed, "Deployment", f"{RELEASE}-dso-simulator")["spec"]["replicas"] == 3


def test_autoscaling_values_are_checked(chart: Any) -> None:
    with pytest.raises(helm.HelmValuesError, match="lagPerReplica"):
        chart.validate_schema(deep_merge(AUTOSCALED, {"simulatorDeployment": {"autoscaling": {"lagPerReplica": 0}}}))
    with pytest.raises(helm.HelmValuesError, match="maxReplica"):
        chart.validate_schema(deep_merge(AUTOSCALED, {"simulatorDeployment": {"autoscaling": {"maxReplica": 4}}}))
    with pytest.raises(helm.HelmError, match="minReplicas <= maxReplicas"):
        chart.render(values=deep_merge(AUTOSCALED, {"simulatorDeployment": {"autoscaling": {"minReplicas": 9, "maxReplicas": 4}}}),
                     name=RELEASE, namespace=NAMESPACE)
    report = helm.lint(CHART, AUTOSCALED, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
