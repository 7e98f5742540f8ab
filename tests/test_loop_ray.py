"""End to end on a local Ray with the real embedded Valkey, the tiny generator and the MuJoCo oracle.

Bounded in time (about a minute each) and marked slow; they still run in CI.
"""

from __future__ import annotations

import threading
import time

import pytest
import ray
from rich.console import Console

from dso.broker.broker import Broker
from dso.config import Settings
from dso.jobs.runner import LoopRunner
from dso.jobs.session import run_loop
from test_loop_support import export_random_tiny_model, loop_test_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return export_random_tiny_model(tmp_path_factory.mktemp("loop-model"))


def ray_settings(model_folder, run_dir, **loop) -> Settings:
    broker = {"run_dir": str(run_dir), "claim_idle_ms": 2000, "max_backlog": 24}
    return loop_test_settings(
        model_folder, broker, simulator_num_cpus=0.5, generator_num_cpus=0.5, learner_num_cpus=0.5,
        ray_num_cpus=2, publish_every=3, drain_timeout_s=20.0, progress_interval_s=5.0, **loop,
    )


def test_dso_run_end_to_end(model_folder, tmp_path):
    settings = ray_settings(model_folder, tmp_path / "run", duration_s=35.0)
    summary = run_loop(settings, console=Console(width=140))
    assert len(summary.versions_published) >= 2, "at least two adapter versions published"
    assert summary.learner["step"] >= 2 * settings.loop.publish_every
    newer = [v for v, row in summary.by_version.items() if v >= 2 and row["generated"] > 0]
    assert newer, f"later samples carry newer versions: {summary.by_version}"
    totals = summary.totals
    # reconciliation: every generated sample labelled exactly once (drained at stop) or dead-lettered
    assert totals["generated"] == totals["labelled"] + summary.dead_letters, totals
    assert summary.adoption_latency_s["p50"] is not None
    assert (tmp_path / "run" / "summary.json").is_file()
    # a second run on the same run dir resumes: same Valkey data, the version sequence goes on
    again = run_loop(ray_settings(model_folder, tmp_path / "run", duration_s=15.0), console=Console(width=140))
    assert again.totals["generated"] > totals["generated"]
    assert min(v for v in again.versions_published) == 1 and len(again.versions_published) >= len(summary.versions_published)


def test_killed_learner_resumes_with_next_version(model_folder, tmp_path):
    settings = ray_settings(model_folder, tmp_path / "run")
    broker = Broker.open(settings.broker)
    settings = settings.model_copy(update={"broker": settings.broker.model_copy(update={"redis_url": broker.url})})
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    runner = LoopRunner(settings, broker, tmp_path / "run", Console(width=140))
    stop = threading.Event()
    try:
        runner.start()
        supervisor = threading.Thread(target=runner.supervise, args=(stop, 90.0))
        supervisor.start()
        deadline = time.monotonic() + 60
        while (broker.adapters.latest() or 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert broker.adapters.latest() >= 1, "the learner published before being killed"
        ray.kill(runner.actor("learner-0"), no_restart=False)  # SIGKILL-like: Ray restarts the actor
        killed_at = broker.adapters.latest()
        while (broker.adapters.latest() or 0) <= killed_at + 1 and time.monotonic() < deadline + 30:
            time.sleep(0.2)
        stop.set()
        supervisor.join(timeout=30)
        versions = broker.adapters.versions()
        assert versions == list(range(1, versions[-1] + 1)), "no version number reused or skipped"
        assert versions[-1] >= killed_at + 2
        restarted = next(a for a in runner.actors if a.name == "learner-0")
        assert restarted.restarts >= 1
        manifests = [broker.adapters.manifest(v) for v in versions]
        assert all(b.step > a.step for a, b in zip(manifests, manifests[1:])), "steps continue from the checkpoint"
    finally:
        stop.set()
        runner.stop()
        ray.shutdown()
        broker.close()
