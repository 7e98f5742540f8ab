"""The Helm chart helm/dso, rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK).

Every rendered manifest is validated: core Kubernetes objects against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), RayJob / RayCluster against KubeRay's
CRD schema (tests/data/kuberay, see its NOTICE.md) plus the operator's own checks, Ray pod
templates against Kubernetes' PodTemplate schema, PodMonitor / ServiceMonitor against the
Prometheus Operator fields the chart uses.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (a dev dependency) is not installed")

from dso.config import load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "dso"
KUBERAY_DATA = Path(__file__).resolve().parent / "data" / "kuberay"
KUBE_VERSION = "1.30"  # oldest Kubernetes the manifests are checked against (Chart.yaml: >=1.27)
RELEASE, NAMESPACE = "demo", "ml"
CONFIG_PATH = "/etc/dso/config.yaml"

# Value sets: the chart's defaults and the example files under helm/dso/ci/.
VALUE_SETS = ["default", "external-redis", "raycluster", "monitoring-off", "cpu-only"]


def values_for(name: str) -> dict[str, Any]:
    if name == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rendered manifests as objects (NOTES.txt and empty templates left out)."""
    files = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected {kind}/{name}, got {[d['metadata']['name'] for d in of_kind(docs, kind)]}"
    return found[0]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


@pytest.fixture(scope="module", params=VALUE_SETS)
def rendered(request: pytest.FixtureRequest, chart: Any) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(chart, values_for(request.param))


# --- schemas ----------------------------------------------------------------------------


def kuberay_schema(kind: str) -> dict[str, Any]:
    return json.loads((KUBERAY_DATA / f"{kind.lower()}.v1.schema.json").read_text())


# Prometheus Operator monitoring.coreos.com/v1 (prometheus-operator/prometheus-operator,
# Apache-2.0, example/prometheus-operator-crd): the fields this chart uses, unknown ones rejected.
_RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "targetLabel": {"type": "string"}, "action": {"type": "string"}, "regex": {"type": "string"},
    "replacement": {"type": "string"}, "separator": {"type": "string"}}}
_ENDPOINT = {"type": "object", "additionalProperties": False, "properties": {
    "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
    "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
    "relabelings": {"type": "array", "items": _RELABEL}}}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array"}}}
_NAMESPACES = {"type": "object", "additionalProperties": False, "properties": {
    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}}


def _monitor_schema(kind: str, endpoints_field: str) -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {
                "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": kind},
                "metadata": {"type": "object", "required": ["name"]},
                "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
                    "selector": _SELECTOR, "namespaceSelector": _NAMESPACES, "jobLabel": {"type": "string"},
                    endpoints_field: {"type": "array", "minItems": 1, "items": _ENDPOINT}}}}}


MONITOR_SCHEMAS = {"PodMonitor": _monitor_schema("PodMonitor", "podMetricsEndpoints"),
                   "ServiceMonitor": _monitor_schema("ServiceMonitor", "endpoints")}


def ray_cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
        return [doc["spec"]["rayClusterSpec"]]
    return []


def pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, PodTemplateSpec) of every pod a Ray resource or a workload would create."""
    found = []
    for spec in ray_cluster_specs(doc):
        found.append(("head", spec["headGroupSpec"]["template"]))
        found += [(f"worker {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        found.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    if doc["kind"] in ("Deployment", "StatefulSet"):
        found.append((doc["kind"], doc["spec"]["template"]))
    return found


def kuberay_operator_errors(spec: dict[str, Any]) -> list[str]:
    """KubeRay's ValidateRayClusterSpec checks that JSON Schema cannot state (see NOTICE.md)."""
    errors = []
    head = spec["headGroupSpec"]["template"]["spec"]["containers"]
    if not head:
        errors.append("headGroupSpec should have at least one container")
    env_names = {e["name"] for e in head[0].get("env", [])}
    for reserved in ("RAY_REDIS_ADDRESS", "REDIS_USERNAME"):
        if reserved in env_names:
            errors.append(f"{reserved} in the head container turns on GCS fault tolerance / is rejected")
    names = [g["groupName"] for g in spec.get("workerGroupSpecs", [])]
    if len(names) != len(set(names)):
        errors.append(f"duplicate worker group names {names}")
    for group in spec.get("workerGroupSpecs", []):
        if group["minReplicas"] > group["maxReplicas"]:
            errors.append(f"worker group {group['groupName']} has minReplicas greater than maxReplicas")
        if not group["template"]["spec"]["containers"]:
            errors.append("workerGroupSpec should have at least one container")
    return errors


# --- validity of everything rendered ----------------------------------------------------


def test_chart_lints_clean_with_every_value_set() -> None:
    for name in VALUE_SETS:
        report = helm.lint(CHART, values_for(name), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], f"{name}: {report}"


def test_every_rendered_manifest_is_valid(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    assert docs, name
    for doc in docs:
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "ray.io/v1":
            jsonschema.validate(doc, kuberay_schema(doc["kind"]))
        elif doc["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(doc, MONITOR_SCHEMAS[doc["kind"]])
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
        for spec in ray_cluster_specs(doc):
            assert kuberay_operator_errors(spec) == [], where


def test_every_pod_template_is_a_valid_kubernetes_pod_template(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    templates = [(f"{d['kind']}/{d['metadata']['name']} {where}", t) for d in docs for where, t in pod_templates(d)]
    assert len(templates) >= 4, name  # head, three worker groups (and the submitter, the API, Redis)
    for where, template in templates:
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
        try:
            kubernetes_validate.validate(wrapped, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {where}: {exc.message} at {list(exc.path)}")
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


def test_kuberay_schema_rejects_what_the_operator_would() -> None:
    """The CRD schema copy has teeth: a misspelt field or a forbidden combination fails."""
    job = next(d for d in render_default() if d["kind"] == "RayJob")
    jsonschema.validate(job, kuberay_schema("RayJob"))
    broken = []
    typo = copy.deepcopy(job)
    typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    broken.append(typo)
    neither = copy.deepcopy(job)
    del neither["spec"]["rayClusterSpec"]
    broken.append(neither)
    selector_with_retries = copy.deepcopy(neither)
    selector_with_retries["spec"]["clusterSelector"] = {"ray.io/cluster": "x"}
    selector_with_retries["spec"].pop("shutdownAfterJobFinishes")
    selector_with_retries["spec"].pop("ttlSecondsAfterFinished")
    selector_with_retries["spec"]["backoffLimit"] = 2
    broken.append(selector_with_retries)
    ttl_without_shutdown = copy.deepcopy(job)
    ttl_without_shutdown["spec"]["shutdownAfterJobFinishes"] = False
    broken.append(ttl_without_shutdown)
    long_name = copy.deepcopy(job)
    long_name["metadata"]["name"] = "a" * 48
    broken.append(long_name)
    for doc in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, kuberay_schema("RayJob"))


_DEFAULT_CACHE: list[dict[str, Any]] = []


def render_default() -> list[dict[str, Any]]:
    if not _DEFAULT_CACHE:
        with helm.Chart.load(CHART) as loaded:
            _DEFAULT_CACHE.extend(render(loaded))
    return copy.deepcopy(_DEFAULT_CACHE)


# --- values schema ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ray": {"mode": "ray-serve"}}, "/ray/mode"),
        ({"redis": {"enabled": False}}, "/externalRedis/url"),
        ({"externalRedis": {"url": "http://redis:6379"}}, "/externalRedis/url"),
        ({"sharedStorage": {"accessModes": ["ReadWriteOnce"]}}, "/sharedStorage/accessModes"),
        ({"ray": {"workerGroups": {"simulator": {"replicas": -1}}}}, "/ray/workerGroups/simulator/replicas"),
        ({"ray": {"workerGroups": {"Sim_Group": {"enabled": True, "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                                                  "gpus": 0, "resources": {}}}}}, "Sim_Group"),
        ({"api": {"port": 70000}}, "/api/port"),
        ({"api": {"replica": 2}}, "replica"),
        ({"replicaCount": 3}, "replicaCount"),
        ({"redis": {"appendfsync": "sometimes"}}, "/redis/appendfsync"),
        ({"monitoring": {"podMonitors": {"interval": "30 seconds"}}}, "/monitoring/podMonitors/interval"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"ray": {"job": {"submissionMode": "SidecarMode"}}}, "/ray/job/submissionMode"),
    ],
)
def test_values_violating_the_schema_are_rejected(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def test_example_value_sets_pass_the_schema(chart: Any) -> None:
    for name in VALUE_SETS:
        chart.validate_schema(values_for(name))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ray": {"workerGroups": {"simulator": {"minReplicas": 5, "replicas": 2}}}}, "minReplicas <= replicas"),
        ({"monitoring": {"dsoMetricsPort": 8080}}, "dsoMetricsPort must differ"),
        ({"redis": {"enabled": False}, "externalRedis": {"url": "redis://user:pw@redis:6379/0"}}, "must not carry credentials|does not match"),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


# --- what the chart deploys -------------------------------------------------------------


def container_env(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}


def test_rendered_config_is_a_valid_dso_config_matching_the_tiny_default(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    name, docs = rendered
    config_map = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config"))
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    settings = load_settings(path, environ={})  # raises on any unknown section / field / bad value
    assert str(settings.broker.adapter_store_dir) == "/data/adapters"
    assert str(settings.broker.run_dir) == "/data/run"
    assert settings.api.host == "0.0.0.0"  # metrics servers in pods bind api.host: scrapable from other pods
    tiny = load_settings("tiny", environ={})  # the packaged preset
    for section in ("model", "sampler", "lora", "shapes"):  # one source of truth for the embedded model
        got, want = getattr(settings, section).model_dump(), getattr(tiny, section).model_dump()
        if section == "model":
            got.pop("device"), want.pop("device")  # cluster: "auto" (GPU when there is one)
        assert got == want, f"{name}: config.{section} drifted from configs/tiny.yaml"


def test_rayjob_mode_runs_the_align_entrypoint_on_its_own_cluster() -> None:
    docs = render_default()
    assert of_kind(docs, "RayCluster") == []
    job = one(docs, "RayJob")["spec"]
    assert job["entrypoint"] == f"python -m dso.jobs.align --config {CONFIG_PATH}"
    assert yaml.safe_load(job["runtimeEnvYAML"]) == {"env_vars": {"OMP_NUM_THREADS": "1"}}
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] == 600
    assert job["submissionMode"] == "K8sJobMode" and "clusterSelector" not in job
    cluster = job["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"generator", "learner", "simulator"}
    for gpu_group in ("generator", "learner"):
        limits = groups[gpu_group]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1
        tolerations = groups[gpu_group]["template"]["spec"]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert "nvidia.com/gpu" not in groups["simulator"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    resources = json.loads(yaml.safe_load(f"x: {groups['simulator']['rayStartParams']['resources']}")["x"])
    assert resources == {"dso_simulator": 1}  # KubeRay passes the quoted JSON to `ray start --resources`
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for where, template in pod_templates(one(docs, "RayJob")):
        if where == "submitter":
            continue
        mounts = {m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert {"/etc/dso", "/data", "/dev/shm"} <= mounts, where
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080 and ports["dso-metrics"] == 9100, where
        assert container_env(template)["DSO_METRICS_PORT"]["value"] == "9100"


def test_node_selectors_and_tolerations_reach_their_group(chart: Any) -> None:
    values = {"ray": {"workerGroups": {"simulator": {"nodeSelector": {"pool": "cpu-spot"},
                                                     "tolerations": [{"key": "spot", "operator": "Exists"}]}},
                      "head": {"nodeSelector": {"pool": "system"}}}}
    cluster = one(render(chart, values), "RayJob")["spec"]["rayClusterSpec"]
    groups = {g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}
    assert groups["simulator"]["nodeSelector"] == {"pool": "cpu-spot"}
    assert groups["simulator"]["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert "nodeSelector" not in groups["generator"]
    assert cluster["headGroupSpec"]["template"]["spec"]["nodeSelector"] == {"pool": "system"}


def test_raycluster_mode_submits_the_job_to_the_long_lived_cluster(chart: Any) -> None:
    docs = render(chart, values_for("raycluster"))
    cluster = one(docs, "RayCluster")
    job = one(docs, "RayJob")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in job and "shutdownAfterJobFinishes" not in job and "backoffLimit" not in job
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    # with the autoscaler, KubeRay gives the head its own service account (autoscaler RBAC)
    assert "serviceAccountName" not in cluster["spec"]["headGroupSpec"]["template"]["spec"]
    manual = render(chart, deep_merge(values_for("raycluster"), {"ray": {"job": {"submitInRayClusterMode": False}}}))
    assert of_kind(manual, "RayJob") == [] and len(of_kind(manual, "RayCluster")) == 1


def test_job_is_replaced_when_what_it_runs_changes_but_not_when_raycluster_scales(chart: Any) -> None:
    def job_name(values: dict[str, Any]) -> str:
        return one(render(chart, values), "RayJob")["metadata"]["name"]

    base = values_for("raycluster")
    scaled = deep_merge(base, {"ray": {"workerGroups": {"simulator": {"replicas": 8}}}})
    reconfigured = deep_merge(base, {"config": {"loop": {"simulators": 8}}})
    assert job_name(scaled) == job_name(base)
    assert job_name(reconfigured) != job_name(base)
    # rayjob mode: the job owns its cluster, so a new cluster shape is a new job
    assert job_name({"ray": {"workerGroups": {"simulator": {"replicas": 3}}}}) != job_name({})


def test_in_chart_redis_is_a_persistent_append_only_statefulset() -> None:
    docs = render_default()
    redis = one(docs, "StatefulSet")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--dir") + 1] == "/data"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data"}
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    secret = named(docs, "Secret", "demo-dso-redis")
    env = container_env(one(docs, "Deployment")["spec"]["template"])
    assert env["DSO_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "redis-password"}
    assert env["DSO__BROKER__REDIS_URL"]["value"] == "redis://:$(DSO_REDIS_PASSWORD)@demo-dso-redis:6379/0"
    service = named(docs, "Service", "demo-dso-redis")
    assert service["spec"]["clusterIP"] == "None" and redis["spec"]["serviceName"] == "demo-dso-redis"


def test_given_redis_password_is_used_and_no_password_means_no_secret(chart: Any) -> None:
    docs = render(chart, {"redis": {"auth": {"password": "s3cret-pass"}}})
    secret = named(docs, "Secret", "demo-dso-redis")
    assert secret["data"]["redis-password"] == "czNjcmV0LXBhc3M="  # base64("s3cret-pass")
    open_docs = render(chart, {"redis": {"auth": {"enabled": False}}})
    env = container_env(one(open_docs, "Deployment")["spec"]["template"])
    assert "DSO_REDIS_PASSWORD" not in env
    assert env["DSO__BROKER__REDIS_URL"]["value"] == "redis://demo-dso-redis:6379/0"
    assert "--requirepass" not in one(open_docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_external_redis_replaces_the_statefulset(chart: Any) -> None:
    docs = render(chart, values_for("external-redis"))
    assert of_kind(docs, "StatefulSet") == [] and of_kind(docs, "PersistentVolumeClaim") == []
    assert all("redis" not in d["metadata"]["name"] for d in of_kind(docs, "Secret") + of_kind(docs, "Service"))
    templates = [t for d in docs for _, t in pod_templates(d) if "submitter" not in t["metadata"]["labels"].get("app.kubernetes.io/component", "")]
    assert len(templates) == 5  # API Deployment, Ray head, three worker groups
    for template in templates:
        env = container_env(template)
        assert env["DSO__BROKER__REDIS_URL"]["value"] == "rediss://dso:$(DSO_REDIS_PASSWORD)@redis.example.internal:6380/2"
        assert env["DSO_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "dso-redis", "key": "password"}
        claims = [v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["dso-shared-rwx"]


def test_api_deployment_probes_token_service_and_ingress(chart: Any) -> None:
    docs = render(chart, values_for("raycluster"))
    api = named(docs, "Deployment", "demo-dso-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["dso"]
    assert container["args"] == ["api", "--config", CONFIG_PATH, "--host", "0.0.0.0", "--port", "8000"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    token = container_env(api["spec"]["template"])["DSO_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "demo-dso-api-token", "key": "token"}
    assert any(d["metadata"]["name"] == "demo-dso-api-token" for d in of_kind(docs, "Secret"))
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/dso", "/data"} <= mounts  # the API reads adapters from the shared volume
    service = named(docs, "Service", "demo-dso-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = one(docs, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx" and ingress["tls"][0]["secretName"] == "dso-example-tls"
    assert ingress["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": "demo-dso-api", "port": {"name": "http"}}
    assert of_kind(render_default(), "Ingress") == []


def test_given_api_token_is_stored_and_existing_secret_is_referenced(chart: Any) -> None:
    docs = render(chart, {"api": {"auth": {"token": "tok-123"}}})
    secret = named(docs, "Secret", "demo-dso-api-token")
    assert secret["data"]["token"] == "dG9rLTEyMw=="  # base64("tok-123")
    docs = render(chart, values_for("external-redis"))
    assert all(d["metadata"]["name"] != "demo-dso-api-token" for d in of_kind(docs, "Secret"))
    env = container_env(one(docs, "Deployment")["spec"]["template"])
    assert env["DSO_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "dso-api-token", "key": "token"}


def test_shared_adapter_volume_is_read_write_many_and_kept() -> None:
    docs = render_default()
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    users = [t for d in docs for _, t in pod_templates(d)
             if any(v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"] for v in t["spec"].get("volumes", []))]
    assert len(users) == 5  # API, Ray head, generator, learner and simulator groups


def test_simulator_deployment_runs_the_standalone_worker(chart: Any) -> None:
    docs = render(chart, values_for("raycluster"))
    sim = named(docs, "Deployment", "demo-dso-simulator")
    assert sim["spec"]["replicas"] == 6
    container = sim["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["dso"]
    assert container["args"][:4] == ["worker", "simulate", "--redis", "$(DSO__BROKER__REDIS_URL)"]
    assert container["args"][4:] == ["--config", CONFIG_PATH]
    assert {p["name"] for p in container["ports"]} == {"dso-metrics"}
    assert [d for d in of_kind(render_default(), "Deployment") if d["metadata"]["name"] == "demo-dso-simulator"] == []


def test_monitoring_objects_select_pods_and_ports_that_exist(chart: Any) -> None:
    docs = render(chart, values_for("raycluster"))
    monitors = {d["metadata"]["name"]: d["spec"] for d in of_kind(docs, "PodMonitor")}
    assert set(monitors) == {"demo-dso-ray-head", "demo-dso-ray-workers", "demo-dso-simulators"}
    pods = [(dict(t["metadata"]["labels"]), {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}, where)
            for d in docs for where, t in pod_templates(d)]
    cluster = one(docs, "RayCluster")["spec"]
    # KubeRay adds ray.io/node-type to the pods it creates from these templates
    pods += [({**cluster["headGroupSpec"]["template"]["metadata"]["labels"], "ray.io/node-type": "head"},
              {p["name"] for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}, "head pod")]
    pods += [({**g["template"]["metadata"]["labels"], "ray.io/node-type": "worker"},
              {p["name"] for p in g["template"]["spec"]["containers"][0]["ports"]}, g["groupName"]) for g in cluster["workerGroupSpecs"]]
    for name, spec in monitors.items():
        selector = spec["selector"]["matchLabels"]
        matched = [(ports, where) for labels, ports, where in pods if selector.items() <= labels.items()]
        assert matched, f"{name} selects no pod"
        for ports, where in matched:
            for endpoint in spec["podMetricsEndpoints"]:
                assert endpoint["port"] in ports, f"{name}: {where} has no port {endpoint['port']}"
    service_monitor = one(docs, "ServiceMonitor")["spec"]
    assert service_monitor["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "30s"}
    assert service_monitor["selector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


def test_dashboard_configmap_ships_the_chart_copy() -> None:
    docs = render_default()
    dashboard = named(docs, "ConfigMap", "demo-dso-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["dso-dashboard.json"])
    assert shipped == json.loads((CHART / "dashboards" / "dso-dashboard.json").read_text())
    assert shipped["panels"] and shipped["title"]


def test_chart_dashboard_is_the_repository_dashboard() -> None:
    chart_copy = CHART / "dashboards" / "dso-dashboard.json"
    assert chart_copy.is_file(), "the chart must ship helm/dso/dashboards/dso-dashboard.json"
    source = ROOT / "deploy" / "grafana" / "dso-dashboard.json"
    if source.is_file():  # the repository's dashboard is the source; the chart carries a copy
        assert json.loads(chart_copy.read_text()) == json.loads(source.read_text()), (
            "helm/dso/dashboards/dso-dashboard.json differs from deploy/grafana/dso-dashboard.json: "
            "cp deploy/grafana/dso-dashboard.json helm/dso/dashboards/")


def test_monitoring_off_renders_no_operator_objects() -> None:
    with helm.Chart.load(CHART) as loaded:
        docs = render(loaded, values_for("monitoring-off"))
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"PodMonitor", "ServiceMonitor"}
    assert all(d["metadata"]["name"] != "demo-dso-dashboard" for d in of_kind(docs, "ConfigMap"))
    assert {"RayJob", "StatefulSet", "Deployment", "PersistentVolumeClaim"} <= kinds


def test_cpu_only_values_ask_for_no_gpu(chart: Any) -> None:
    docs = render(chart, values_for("cpu-only"))
    for where, template in pod_templates(one(docs, "RayJob")):
        limits = template["spec"]["containers"][0].get("resources", {}).get("limits", {})
        assert "nvidia.com/gpu" not in limits, where


OBJECT_STORE = {"adapterStore": {"url": "s3://dso-bucket/runs/adapters", "endpoint": "http://minio.storage:9000", "region": "eu-west-1",
                                 "credentials": {"existingSecret": "dso-s3"}}}


def test_adapters_on_object_storage_get_url_endpoint_and_credentials_from_a_secret(chart: Any, tmp_path: Path) -> None:
    report = helm.lint(CHART, OBJECT_STORE, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
    docs = render(chart, OBJECT_STORE)
    for doc in docs:
        if doc["apiVersion"] not in ("ray.io/v1", "monitoring.coreos.com/v1"):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    config_map = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config"))
    (tmp_path / "config.yaml").write_text(config_map["data"]["config.yaml"])
    settings = load_settings(tmp_path / "config.yaml", environ={})
    assert settings.broker.adapter_store_dir == "s3://dso-bucket/runs/adapters"
    assert settings.broker.adapter_store_endpoint == "http://minio.storage:9000"
    templates = [t for t in pod_templates_of(docs) if "DSO__BROKER__REDIS_URL" in container_env(t)]  # DSO's own pods
    assert len(templates) >= 5
    for template in templates:
        env = container_env(template)
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "dso-s3", "key": "AWS_ACCESS_KEY_ID"}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "dso-s3", "key": "AWS_SECRET_ACCESS_KEY"}
        assert env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert not any(name.startswith("AWS_") for t in pod_templates_of(render_default()) for name in container_env(t))
    with pytest.raises(helm.HelmError, match="does not match"):
        chart.render(values={"adapterStore": {"url": "/data/adapters"}}, name=RELEASE, namespace=NAMESPACE)


def pod_templates_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for d in docs for _, t in pod_templates(d)]
