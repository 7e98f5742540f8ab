"""The standalone ``dso worker simulate`` exports its metrics where the Helm chart's PodMonitor scrapes.

A real worker process (the CLI the chart runs) with ``DSO_METRICS_PORT`` set, on
the session's embedded Valkey: it labels real procedural objects with the MuJoCo
oracle, counts every verdict on ``$DSO_METRICS_PORT``, announces itself for the
API's service discovery, and withdraws on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest_broker import make_settings

from dso import telemetry
from dso.broker import Broker
from dso.broker.records import SampleRecord
from dso.shapes.procedural import sample_object

SAMPLES = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    """Sample name (with labels) -> value, from the worker's exposition."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_worker_serves_metrics_on_the_env_port_and_withdraws_on_sigterm(tmp_path: Path, valkey_server) -> None:
    settings = make_settings(tmp_path, redis_url=valkey_server.url, read_block_ms=100)
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({"broker": {"key_prefix": settings.key_prefix}, "sim": {"max_time": 2.0}}))
    port = free_port()
    env = dict(os.environ, DSO_METRICS_PORT=str(port), OMP_NUM_THREADS="1")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dso.cli", "worker", "simulate", "--redis", valkey_server.url, "--config", str(config),
         "--name", "simulator-test"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    with Broker.open(settings) as broker:
        targets = telemetry.MetricsTargets(broker.targets)
        try:
            for seed in range(SAMPLES):
                occupancy = sample_object(seed, 32).occupancy
                record = SampleRecord(prompt_id="p0", view=0, adapter_version=0, seed=seed,
                                      latent=np.zeros((2, 2, 2, 2), np.float32), occupancy=occupancy,
                                      generation_seconds=0.0)
                broker.samples.put(record.sample_id, record.to_bytes())
            deadline = time.monotonic() + 60
            values: dict[str, float] = {}
            while time.monotonic() < deadline:
                try:
                    values = scrape(port)
                except httpx.HTTPError:
                    values = {}
                if values.get("dso_simulation_duration_seconds_count") == SAMPLES:
                    break
                assert worker.poll() is None, worker.stdout.read()
                time.sleep(0.25)
            labelled = {k: v for k, v in values.items() if k.startswith("dso_samples_labelled_total{")}
            assert sum(labelled.values()) == SAMPLES, values or "the worker never served metrics on DSO_METRICS_PORT"
            assert labelled['dso_samples_labelled_total{result="stable"}'] > 0  # real verdicts: procedural objects stand
            assert [(c, a.rpartition(":")[2]) for c, a in targets.live()] == [("simulator", str(port))]
            assert broker.labelled.depth().length == SAMPLES and broker.samples.backlog() == 0
        finally:
            worker.send_signal(signal.SIGTERM)
            output, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, output
        assert f"labelled {SAMPLES} samples" in output
        assert targets.live() == [], "a stopped worker withdraws its scrape target"
    with pytest.raises(httpx.HTTPError):
        scrape(port)
