"""The loop across Ray nodes: roles placed on different nodes, adapters only through object storage, a node lost.

A ``ray.cluster_utils.Cluster`` on this machine: a head (the driver, the broker and the learner) and one
worker node each for the generator and the simulator, every node with its own temp dir. Roles are
placed by ``loop.placement`` (a custom resource per role), each role's processes get a temp dir of their
own (``TMPDIR``: the default adapter cache is node-local), and the adapter store is ``s3://`` on moto's
S3 server, so no file is shared between roles. Then the generator's and the simulator's nodes are
removed mid-run: the runner's supervision brings both back on a replacement node and not one sample
is lost. Bounded (about a minute on 2 cores) and marked slow like the other Ray loop tests.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from conftest_broker import S3_TEST_ENV
from ray.cluster_utils import Cluster
from rich.console import Console

from dso.broker.adapter_store import ADAPTER_WEIGHTS
from dso.broker.broker import Broker
from dso.config import Settings
from dso.actors.ray_actors import actor_options
from dso.jobs.runner import LoopRunner
from test_loop_support import export_random_tiny_model, loop_test_settings, wait_for

boto3 = pytest.importorskip("boto3")

BUCKET = "dso-multinode"
ROLES = ("generator", "simulator", "learner")
RESOURCE = {role: f"dso_{role}" for role in ROLES}  # the custom resource that places each role
NODE_CPUS = 1  # per node: a 0.5-CPU actor and room for Ray's own tasks
CACHE = "dso-adapter-cache"  # the adapter cache's folder in the (per-role) temp dir: BrokerSettings' default
RUN_S = 150.0  # the supervisor's own bound; the test stops it as soon as its checks pass


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return export_random_tiny_model(tmp_path_factory.mktemp("multinode-model"))


@pytest.fixture(scope="module")
def nodes_root() -> Iterator[Path]:
    """Short paths under /tmp: a node's temp dir holds its Unix sockets (107-byte limit), pytest's are deep."""
    root = Path(tempfile.mkdtemp(prefix="dso-mn-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, nodes_root: Path) -> Iterator[tuple[Cluster, dict[str, object]]]:
    """Head (learner) + a generator node + a simulator node, each with its own temp dir; the driver joins it."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_TEST_ENV.items():
            env.setenv(name, value)  # the nodes' raylets, and so every actor, inherit the S3 credentials
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": NODE_CPUS, "resources": {RESOURCE["learner"]: 1}, "temp_dir": str(nodes_root / "head"),
            "include_dashboard": False,
        })
        try:
            nodes = {role: cluster.add_node(num_cpus=NODE_CPUS, resources={RESOURCE[role]: 1}, temp_dir=str(nodes_root / role))
                     for role in ("generator", "simulator")}
            nodes["learner"] = cluster.head_node
            ray.init(address=cluster.address, log_to_driver=False)
            try:
                yield cluster, nodes
            finally:
                ray.shutdown()
        finally:
            cluster.shutdown()


def multinode_settings(model_folder: Path, run_dir: Path, store_url: str, endpoint: str, role_tmp: dict[str, Path]) -> Settings:
    placement = {role: {"resources": {RESOURCE[role]: 1}, "env_vars": {"TMPDIR": str(role_tmp[role])}} for role in ROLES}
    broker = {"run_dir": str(run_dir), "claim_idle_ms": 2000, "max_backlog": 24,
              "adapter_store_dir": store_url, "adapter_store_endpoint": endpoint}  # adapter_cache_dir: the node-local default
    return loop_test_settings(
        model_folder, broker, simulator_num_cpus=0.5, generator_num_cpus=0.5, learner_num_cpus=0.5,
        drain_timeout_s=10.0, progress_interval_s=5.0, api_enabled=False, canary={"enabled": False}, placement=placement,
    )


def test_placement_becomes_each_roles_ray_options(model_folder, tmp_path):
    settings = multinode_settings(model_folder, tmp_path, "s3://b/p", "http://127.0.0.1:1", {r: tmp_path / r for r in ROLES})
    options = actor_options(settings)
    for role in ROLES:
        assert options[role]["resources"] == {RESOURCE[role]: 1}
        assert options[role]["runtime_env"] == {"env_vars": {"TMPDIR": str(tmp_path / role)}}
    assert "resources" not in options["canary"] and "runtime_env" not in options["canary"]  # unset: anywhere, as before
    with pytest.raises(ValueError, match="positive"):
        Settings.model_validate({"loop": {"placement": {"simulator": {"resources": {"dso_simulator": 0}}}}})


def node_of(handle) -> str:
    return ray.get(handle.__ray_call__.remote(lambda actor: ray.get_runtime_context().get_node_id()), timeout=60)


@pytest.mark.slow
def test_roles_on_their_own_nodes_share_adapters_through_s3_and_survive_a_lost_node(
    model_folder, cluster, s3_endpoint, nodes_root, tmp_path
):
    ray_cluster, nodes = cluster
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)  # credentials: the fixture's environment
    store_url = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/adapters"
    role_tmp = {role: nodes_root / "tmp" / role for role in ROLES}
    for folder in role_tmp.values():
        folder.mkdir(parents=True)
    run_dir = tmp_path / "run"
    settings = multinode_settings(model_folder, run_dir, store_url, s3_endpoint, role_tmp)
    broker = Broker.open(settings.broker)
    settings = settings.model_copy(update={"broker": settings.broker.model_copy(update={"redis_url": broker.url})})
    runner = LoopRunner(settings, broker, run_dir, Console(width=140))
    stop = threading.Event()
    supervisor = threading.Thread(target=runner.supervise, args=(stop, RUN_S))
    started = time.monotonic()
    try:
        runner.start()
        supervisor.start()
        placed = {role: node_of(runner.actor(f"{role}-0")) for role in ROLES}
        assert placed == {role: nodes[role].node_id for role in ROLES}, "each role on its own node"

        # the learner (head) publishes to S3; the generator (its own node) pulls and adopts it
        wait_for(lambda: any(e.version >= 1 and e.worker == "generator-0" for e in broker.adoptions.events()),
                 90, "the generator to adopt a published adapter", poll_s=0.5)
        assert broker.adapters.remote and broker.adapters.versions()[0] == 1
        assert broker.registry.latest() >= 1
        pulled = list((role_tmp["generator"] / CACHE).rglob(ADAPTER_WEIGHTS))
        assert pulled, "the generator pulled the adapter into its own node-local cache"
        assert not (role_tmp["simulator"] / CACHE).exists(), "the simulator never touches adapters"
        assert not (run_dir / "adapters").exists(), "no shared adapter folder: the store is S3"

        # lose the generator's and the simulator's nodes; a replacement node offers both roles' resources
        spare = ray_cluster.add_node(num_cpus=NODE_CPUS, resources={RESOURCE["generator"]: 1, RESOURCE["simulator"]: 1},
                                     temp_dir=str(nodes_root / "spare"))
        before = broker.stats.snapshot()["totals"]
        adoptions_before = len(broker.adoptions.events())
        ray_cluster.remove_node(nodes["generator"])
        ray_cluster.remove_node(nodes["simulator"])

        def recovered() -> bool:
            restarted = all(a.restarts >= 1 and a.ref is not None for a in runner.actors if a.role in ("generator", "simulator"))
            totals = broker.stats.snapshot()["totals"]
            return restarted and totals["generated"] > before["generated"] and totals["labelled"] > before["labelled"]

        wait_for(recovered, 90, "the lost node's actors to come back and work again", poll_s=0.5)
        assert {role: node_of(runner.actor(f"{role}-0")) for role in ("generator", "simulator")} == \
            {"generator": spare.node_id, "simulator": spare.node_id}, "restarted on the replacement node"
        # the restarted generator starts from the promoted adapter again, pulled on its new node
        assert len(broker.adoptions.events()) > adoptions_before
        assert runner.alive("learner"), "the learner's node was never touched"
    finally:
        stop.set()
        if supervisor.is_alive():
            supervisor.join(timeout=30)
        try:
            runner.stop()
            summary = runner.summary(time.monotonic() - started)
        finally:
            broker.close()
    totals = summary.totals
    assert summary.problems() == [], summary.problems()  # no failed role, nothing left after the drain: `dso run` exits 0
    assert summary.backlog_after_drain == 0
    assert summary.restarts["generator"] >= 1 and summary.restarts["simulator"] >= 1 and summary.restarts["learner"] == 0
    assert summary.dead_letters == 0
    assert totals["generated"] == totals["labelled"] > before["labelled"], totals  # not one sample lost
    assert summary.adapter_dir == store_url and summary.versions_published[0] == 1

