"""End to end on a local Ray with the real embedded Valkey, the tiny generator and the MuJoCo oracle.

One Ray instance serves the module (its start-up is paid once). Bounded in time
(well under two minutes each on 2 cores) and marked slow; they still run in CI.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
import ray
from rich.console import Console

from dso.actors.prompt_images import png_bytes
from dso.broker.broker import Broker
from dso.config import Settings
from dso.jobs.runner import LoopRunner
from dso.jobs.session import run_loop
from dso.shapes.prompts import training_prompt
from test_loop_support import export_random_tiny_model, loop_test_settings

pytestmark = pytest.mark.slow
TOKEN = "ray-loop-test-token"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return export_random_tiny_model(tmp_path_factory.mktemp("loop-model"))


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray for this module (``address="local"``: never joins another session's cluster)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_settings(model_folder, run_dir, api_port: int | None = None, **loop) -> Settings:
    broker = {"run_dir": str(run_dir), "claim_idle_ms": 2000, "max_backlog": 24}
    settings = loop_test_settings(
        model_folder, broker, simulator_num_cpus=0.5, generator_num_cpus=0.5, learner_num_cpus=0.5,
        ray_num_cpus=2, publish_every=3, drain_timeout_s=10.0, progress_interval_s=5.0,
        api_enabled=api_port is not None, canary={"enabled": False}, **loop,  # tests/test_canary_loop.py runs one
    )
    if api_port is not None:
        settings.api.port = api_port
    settings.api.metrics_port = 0  # actors' exporters on OS-assigned ports: parallel test runs never clash
    return settings


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def get_json(url: str) -> tuple[int, object]:
    try:
        reply = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return 0, None
    return reply.status_code, reply.json()


def test_dso_run_end_to_end(model_folder, tmp_path, local_ray, monkeypatch):
    monkeypatch.setenv("DSO_API_TOKEN", TOKEN)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    settings = ray_settings(model_folder, tmp_path / "run", api_port=port, duration_s=25.0)
    stop = threading.Event()
    result: dict = {}
    loop = threading.Thread(target=lambda: result.update(summary=run_loop(settings, console=Console(width=140), stop=stop)))
    loop.start()
    try:
        # the API comes up before the actors and is not ready until every role answers
        wait_for(lambda: get_json(f"{api}/healthz")[0] == 200, 30, "the API to answer")
        status, ready = wait_for(lambda: (r := get_json(f"{api}/readyz"))[0] == 200 and r, 60, "/readyz to turn 200")
        assert {"generator", "simulator", "learner"} <= set(ready["checks"]), ready
        targets = get_json(f"{api}/v1/metrics/targets")[1]
        assert {g["labels"]["component"] for g in targets} >= {"generator", "simulator", "learner", "api"}, targets
        # a prompt pushed while the loop runs is sampled, labelled and counted per prompt
        image = png_bytes(training_prompt(seed=4242, view_seed=1, settings=settings.shapes).image)
        reply = httpx.post(f"{api}/v1/prompts", files={"images": ("new.png", image, "image/png")},
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert reply.status_code == 201, reply.text
        uploaded = reply.json()["prompts"][0]["id"]
        wait_for(lambda: (get_json(f"{api}/v1/prompts/{uploaded}")[1] or {}).get("stability", {}).get("labelled", 0) > 0,
                 20, "samples of the uploaded prompt to be labelled")
        # every actor's own exporter counts what it did
        generator = next(g for g in targets if g["labels"]["component"] == "generator")["targets"][0]
        scraped = httpx.get(f"http://{generator}/metrics", timeout=5).text
        generated = [line for line in scraped.splitlines() if line.startswith("dso_samples_generated_total ")]
        assert generated and float(generated[0].split()[1]) > 0, generated
    except BaseException:
        stop.set()  # a failed check: stop the loop now instead of waiting out its duration
        raise
    finally:
        loop.join(timeout=120)
    summary = result["summary"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/healthz", timeout=2)  # stopped with the loop
    assert summary.endpoints["api"] == api and set(summary.endpoints["process_metrics"]) >= {"generator-0", "learner-0"}
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
    again = run_loop(ray_settings(model_folder, tmp_path / "run", duration_s=10.0), console=Console(width=140))
    assert again.totals["generated"] > totals["generated"]
    assert min(v for v in again.versions_published) == 1 and len(again.versions_published) >= len(summary.versions_published)


def test_killed_learner_resumes_with_next_version(model_folder, tmp_path, local_ray):
    settings = ray_settings(model_folder, tmp_path / "run")
    broker = Broker.open(settings.broker)
    settings = settings.model_copy(update={"broker": settings.broker.model_copy(update={"redis_url": broker.url})})
    runner = LoopRunner(settings, broker, tmp_path / "run", Console(width=140))
    stop = threading.Event()
    stopped = False
    try:
        runner.start()
        supervisor = threading.Thread(target=runner.supervise, args=(stop, 90.0))
        supervisor.start()
        deadline = time.monotonic() + 60
        while (broker.adapters.latest() or 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert broker.adapters.latest() >= 1, "the learner published before being killed"
        assert all(runner.alive(role) for role in ("generator", "simulator", "learner"))  # what /readyz asks
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
        assert runner.alive("learner"), "the restarted learner answers again"
        runner.stop()
        stopped = True
        assert not runner.alive("learner"), "stopped (killed) actors are not alive"
    finally:
        stop.set()
        if not stopped:
            runner.stop()
        broker.close()
