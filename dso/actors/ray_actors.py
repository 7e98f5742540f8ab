"""Ray shells over the roles: each actor opens its own broker connection and runs one worker's loop.

Actors are threaded (``max_concurrency=2``) so ``stop()`` can be called while
``run()`` is looping. Resources (CPUs, GPUs) are set per role by
:func:`actor_options` from ``LoopSettings``; on a 2-core laptop the fractional
CPUs let one generator, one simulator and the learner share the machine. On a cluster,
``loop.placement.<role>`` (custom resources, env vars) puts each role on its own nodes.

Each actor is its own process, so each serves its own Prometheus ``/metrics``
(:mod:`dso.actors.exporter`) from construction until its loop ends.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import ray

from dso.config import Settings


def _prepare_process() -> None:
    """One thread per actor for torch/OpenMP: actors share few cores, oversubscription only slows them."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _open_broker(settings: Settings, redis_url: str):
    from dso.broker.broker import Broker

    broker_settings = settings.broker.model_copy(update={"redis_url": redis_url})
    return Broker.open(broker_settings)


class _RoleActor:
    """Stop flag and the run loop shared by every role."""

    name: str

    def _init_role(self, settings: Settings, name: str) -> None:
        _prepare_process()
        self.settings = settings
        self.name = name
        self._stop = threading.Event()
        self._exporter = None

    def _start_exporter(self, component: str) -> None:
        """Serve this actor's metrics (call once its broker is open)."""
        from dso.actors.exporter import start_exporter

        self._exporter = start_exporter(component, self.settings, self.broker)

    def ready(self) -> str:
        return self.name

    def metrics_url(self) -> str | None:
        """Where this actor's ``/metrics`` is reachable from other hosts (None without an exporter)."""
        if self._exporter is None:
            return None
        from dso.telemetry import advertised_host

        server = self._exporter.server
        return f"http://{advertised_host(server.host)}:{server.port}/metrics"

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, step) -> int:
        from dso.actors.exporter import stop_exporter
        from dso.actors.running import run_until_stopped

        self._stop.clear()
        try:
            return run_until_stopped(step, self._stop, self.settings.loop.idle_sleep_s, self.name)
        finally:
            if self._stop.is_set():  # a finished loop: the actor is about to be killed
                stop_exporter(self._exporter)
                self._exporter = None


@ray.remote(max_concurrency=2)
class GeneratorActor(_RoleActor):
    """Samples prompts, generates K shapes each with the current adapter, hot-swaps between batches."""

    def __init__(self, settings: Settings, redis_url: str, name: str) -> None:
        self._init_role(settings, name)
        from dso.actors.generator_worker import GeneratorWorker

        self.broker = _open_broker(settings, redis_url)
        self.worker = GeneratorWorker(self.broker, settings, name=name)
        self._start_exporter("generator")
        self.worker.maybe_adopt()  # a restarted generator starts from the latest adapter

    def run(self) -> dict[str, Any]:
        outages = self._loop(lambda: self.worker.step() is not None)
        return {"name": self.name, "generated": self.worker.generated, "version": self.worker.version, "outages": outages}


@ray.remote(max_concurrency=2)
class SimulatorActor(_RoleActor):
    """Labels samples with the MuJoCo oracle; reclaims work of dead simulators."""

    def __init__(self, settings: Settings, redis_url: str, name: str) -> None:
        self._init_role(settings, name)
        from dso.actors.simulator_worker import SimulatorWorker

        self.broker = _open_broker(settings, redis_url)
        self.worker = SimulatorWorker(self.broker, settings, name=name)
        self._start_exporter("simulator")

    def run(self) -> dict[str, Any]:
        block_ms = min(self.broker.settings.read_block_ms, 250)  # short blocking reads keep stop() responsive
        outages = self._loop(lambda: self.worker.step(block_ms=block_ms) > 0)
        return {"name": self.name, "labelled": self.worker.labelled, "failed": self.worker.failed, "outages": outages}


@ray.remote(max_concurrency=2)
class LearnerActor(_RoleActor):
    """Trains the adapter on the replay buffer, publishes versions, checkpoints on exit."""

    def __init__(self, settings: Settings, redis_url: str, name: str, run_dir: str) -> None:
        self._init_role(settings, name)
        from dso.actors.learner import Learner

        self.broker = _open_broker(settings, redis_url)
        self.learner = Learner(self.broker, settings, Path(run_dir), name=name)
        self._start_exporter("learner")

    def run(self) -> dict[str, Any]:
        def step() -> bool:
            result = self.learner.step()
            return result.trained or result.ingested > 0

        outages = self._loop(step)
        if self.learner.tuner.step > 0:
            self.learner.checkpoint()
        return {
            "name": self.name,
            "step": self.learner.tuner.step,
            "version": self.learner.version,
            "resumed_from_step": self.learner.resumed_from_step,
            "rollbacks": self.learner.rollbacks,
            "outages": outages,
        }


@ray.remote(max_concurrency=2)
class CanaryActor(_RoleActor):
    """Scores each published candidate on the fixed probe; the gate decides what generators may run."""

    def __init__(self, settings: Settings, redis_url: str, name: str) -> None:
        self._init_role(settings, name)
        from dso.actors.canary import CanaryWorker

        self.broker = _open_broker(settings, redis_url)
        self.worker = CanaryWorker(self.broker, settings)
        self._start_exporter("canary")

    def run(self) -> dict[str, Any]:
        # blocks up to canary.poll_s per step (for a publish or the interval), so stop() is heard within that
        outages = self._loop(lambda: self.worker.step(wait_s=self.settings.canary.poll_s))
        worker = self.worker
        return {"name": self.name, "scored": worker.scored, "decided": worker.last_decided, **worker.counts, "outages": outages}


def actor_options(settings: Settings) -> dict[str, dict[str, Any]]:
    """Ray options per role: CPUs / GPUs, restarts (a crashed actor comes back and resumes) and the role's
    placement (``loop.placement.<role>``: custom resources pick its nodes, env vars its processes' environment)."""
    loop = settings.loop
    options = {
        "generator": {"num_cpus": loop.generator_num_cpus, "num_gpus": loop.generator_num_gpus, "max_restarts": -1},
        "simulator": {"num_cpus": loop.simulator_num_cpus, "num_gpus": 0, "max_restarts": -1},
        "learner": {"num_cpus": loop.learner_num_cpus, "num_gpus": loop.learner_num_gpus, "max_restarts": -1},
        "canary": {"num_cpus": settings.canary.num_cpus, "num_gpus": settings.canary.num_gpus, "max_restarts": -1},
    }
    for role, role_options in options.items():
        placement = getattr(loop.placement, role)
        if placement.resources:
            role_options["resources"] = dict(placement.resources)
        if placement.env_vars:
            role_options["runtime_env"] = {"env_vars": dict(placement.env_vars)}
    return options
