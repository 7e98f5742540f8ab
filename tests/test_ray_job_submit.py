"""The cluster entry point as users run it: ``ray start --head`` then ``ray job submit --working-dir .``.

The head is private to this test: its own temp dir (so no other session's
``ray.init()`` joins it) and OS-assigned ports, started with ``--block`` so that
stopping it is a SIGTERM to the one process this test started, which tears down
exactly the Ray processes it launched. (``ray stop --force`` would kill every Ray
process on the machine, other test sessions' included.)

The job runs ``configs/cluster.yaml`` against a random tiny model (no shipped
weights needed) and a run dir under tmp_path, both passed as ``DSO__*``
variables in the job's runtime env; ``.git`` is excluded from the upload, and
``.venv``/``runs`` are left out because Ray honours ``.gitignore``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from dso.broker.adapter_store import AdapterStore
from test_loop_support import export_random_tiny_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and the `python` the job runs with
JOB_DURATION_S = 20
SUBMIT_TIMEOUT_S = 150
HEAD_START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="disabled",  # Ray 2.60 would otherwise turn token auth on for a new head
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM tears the head down at once
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
    )
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture()
def ray_head():
    """A private ``ray start --head --num-cpus 2``; yields the dashboard (job API) address."""
    dashboard = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths live under it
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(free_port()), "--temp-dir", temp_dir,
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")
    head = subprocess.Popen(command, env=ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            if head.poll() is not None:
                raise AssertionError(f"ray start exited with {head.returncode}: {(Path(temp_dir) / 'ray-start.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{address}/api/version", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the Ray head's job API did not come up within {HEAD_START_TIMEOUT_S} s")
            time.sleep(0.5)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # ray start --block: kills the processes it started, then exits
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the group this test created, nothing else
            head.wait(timeout=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_loop_and_publishes_an_adapter(ray_head, tmp_path):
    model = export_random_tiny_model(tmp_path / "model")
    run_dir = tmp_path / "run"
    runtime_env = {
        "excludes": [".git", ".hypothesis", ".pytest_cache"],
        "env_vars": {
            "DSO__MODEL__WEIGHTS_PATH": str(model),
            "DSO__BROKER__RUN_DIR": str(run_dir),
            "DSO__LOOP__SIMULATORS": "1",  # 2 CPUs: one generator, one simulator, the learner
            "DSO__LOOP__PUBLISH_EVERY": "3",
            "DSO__SAMPLER__STEPS": "4",
            "DSO__SIM__MAX_TIME": "2.0",
            "DSO__API__METRICS_PORT": "0",
            "OMP_NUM_THREADS": "1",
        },
    }
    command = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", ".",
        "--runtime-env-json", json.dumps(runtime_env), "--",
        "python", "-m", "dso.jobs.align", "--config", "configs/cluster.yaml", "--duration", str(JOB_DURATION_S),
    ]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"ray job submit exited {done.returncode} after {time.monotonic() - started:.0f} s:\n{output[-6000:]}"
    assert "succeeded" in output.lower(), output[-3000:]
    versions = AdapterStore(run_dir / "adapters").versions()
    assert versions and versions[0] == 1, f"no adapter version published in {run_dir / 'adapters'}:\n{output[-4000:]}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["versions_published"] == versions
    assert summary["totals"]["generated"] > 0 and summary["learner"]["step"] >= 3
