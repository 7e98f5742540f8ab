"""``dso worker simulate --redis URL``: a standalone simulator process, on any machine that reaches Redis.

Runs the same :class:`dso.actors.SimulatorWorker` as the Ray actors, as one more
consumer in the ``simulators`` group, until SIGINT/SIGTERM, and serves its
Prometheus metrics on ``$DSO_METRICS_PORT`` (else ``api.metrics_port``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path

from dso.actors.exporter import start_exporter, stop_exporter
from dso.actors.running import run_until_stopped
from dso.actors.simulator_worker import SimulatorWorker
from dso.broker.broker import Broker
from dso.config import load_settings

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"simulator-{socket.gethostname()}-{os.getpid()}"


def run_simulator_worker(redis_url: str, config: str | Path | None = None, name: str | None = None, max_items: int | None = None) -> int:
    """Label samples until a stop signal (or ``max_items``); returns how many were labelled."""
    if not redis_url:
        raise ValueError("a standalone simulator needs --redis URL (the loop's broker)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    settings = load_settings(config or "tiny")
    broker = Broker.open(settings.broker.model_copy(update={"redis_url": redis_url}))
    worker = SimulatorWorker(broker, settings, name=name or default_worker_name())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    block_ms = min(settings.broker.read_block_ms, 250)

    def step() -> bool:
        done = worker.step(block_ms=block_ms)
        if max_items is not None and worker.labelled >= max_items:
            stop.set()
        return done > 0

    log.info("%s: consuming %s on %s", worker.name, settings.broker.samples_stream, redis_url)
    exporter = start_exporter("simulator", settings, broker)
    try:
        run_until_stopped(step, stop, settings.loop.idle_sleep_s, worker.name)
    finally:
        stop_exporter(exporter)
        broker.close()
    log.info("%s: labelled %d samples", worker.name, worker.labelled)
    return worker.labelled
