"""A real Prometheus scrapes a running API and a simulator process; PromQL gives the stability rate.

Set-up (all real): the session's embedded Valkey, the API in a uvicorn thread, a simulator
process that labels procedural objects with the MuJoCo oracle and exports its counters
on its own /metrics, and Debian's ``prometheus`` binary that finds both through the
API's HTTP service discovery (``/v1/metrics/targets``), as deploy/prometheus/prometheus.yml does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest_broker import make_settings
from prometheus_client import CollectorRegistry

from dso.api.app import create_app
from dso.api.server import ApiServer
from dso.broker import Broker
from dso.config import ApiSettings, Settings
from dso.telemetry import LoopMetrics

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None or PROMTOOL is None,
        reason="prometheus/promtool not installed (apt-get install prometheus; CI runs scripts/ci-system-deps.sh)",
    ),
]

STABILITY_RATE = (
    'sum(rate(dso_samples_labelled_total{result="stable"}[1m]))'
    ' / sum(rate(dso_samples_labelled_total{result=~"stable|unstable"}[1m]))'
)
SINCE_START = (
    'sum(dso_samples_labelled_total{result="stable"}) / sum(dso_samples_labelled_total{result=~"stable|unstable"})'
)
OBJECTS = 6  # each labelled upright and upside down: 12 verdicts, some unstable

# The simulator process: real oracle verdicts, counted in Prometheus and in the broker's stats.
WORKER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from dso.broker import Broker
    from dso.config import ApiSettings, BrokerSettings, SimSettings
    from dso.shapes.procedural import sample_object
    from dso.sim.oracle import simulate
    from dso import telemetry

    url, prefix, run_dir, objects = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    broker = Broker.open(BrokerSettings(redis_url=url, key_prefix=prefix, run_dir=run_dir))
    telemetry.start_process_metrics("simulator", ApiSettings(metrics_port=0), broker, host="127.0.0.1")
    go = broker.prompts.keys.key("test", "go")
    while not broker.connection.client.exists(go):
        time.sleep(0.1)
    for seed in range(objects):
        occupancy = sample_object(seed, 32).occupancy
        for grid in (occupancy, np.ascontiguousarray(occupancy[:, :, ::-1])):
            verdict = simulate(grid, SimSettings())
            telemetry.observe_labelled(verdict)
            broker.stats.record_labelled(verdict, adapter_version=0)
            time.sleep(0.2)
    broker.connection.client.set(prefix + ":test:done", "1")
    while True:
        time.sleep(1)
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            result = None
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


@pytest.fixture()
def broker(tmp_path: Path, valkey_server) -> Iterator[Broker]:
    with Broker.open(make_settings(tmp_path, redis_url=valkey_server.url)) as opened:
        yield opened


@pytest.fixture()
def api_url(broker: Broker) -> Iterator[str]:
    app = create_app(
        Settings(broker=broker.settings, api=ApiSettings()), broker,
        metrics=LoopMetrics(CollectorRegistry()), environ={},
    )
    with ApiServer(app, host="127.0.0.1", port=0) as server:
        yield server.url


@pytest.fixture()
def worker(broker: Broker, valkey_server, tmp_path: Path) -> Iterator[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k != "DSO_METRICS_PORT"} | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, valkey_server.url, broker.settings.key_prefix, str(tmp_path), str(OBJECTS)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    yield process
    process.kill()
    process.wait(timeout=10)


@pytest.fixture()
def prometheus(api_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "dso",
                "http_sd_configs": [{"url": f"{api_url}/v1/metrics/targets", "refresh_interval": "1s"}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    check = subprocess.run([PROMTOOL, "check", "config", str(config_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "prometheus.log", "wb")
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("Prometheus to be ready", lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def test_prometheus_scrapes_the_loop_and_computes_the_stability_rate(
    broker: Broker, api_url: str, worker: subprocess.Popen, prometheus: str
) -> None:
    up = wait_for(
        "both targets up",
        lambda: (r := query(prometheus, "up == 1")) and {s["metric"]["component"] for s in r} == {"api", "simulator"} and r,
    )
    for series in up:  # every exposition Prometheus scrapes passes promtool
        body = httpx.get(f"http://{series['metric']['instance']}/metrics", timeout=5).content
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True)
        assert lint.returncode == 0, series["metric"]["component"] + ": " + lint.stdout.decode() + lint.stderr.decode()

    broker.connection.client.set(broker.prompts.keys.key("test", "go"), "1")
    total = 2 * OBJECTS
    wait_for("every verdict scraped", lambda: float(query(prometheus, "sum(dso_samples_labelled_total)")[0]["value"][1]) == total)

    truth = httpx.get(f"{api_url}/v1/stats", timeout=5).json()["totals"]
    assert truth["labelled"] == total and 0 < truth["stable"] < total  # real verdicts of both kinds
    since_start = float(query(prometheus, SINCE_START)[0]["value"][1])
    assert since_start == pytest.approx(truth["stability_rate"])
    rate = wait_for("a finite stability rate", lambda: (v := float(query(prometheus, STABILITY_RATE)[0]["value"][1])) == v and [v])
    assert 0.0 < rate[0] < 1.0 and not math.isinf(rate[0])
    broker_up = query(prometheus, 'dso_broker_up{component="api"}')
    assert broker_up and broker_up[0]["value"][1] == "1"
