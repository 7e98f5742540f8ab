"""The canary in the real loop (local Ray, embedded Valkey, the trained tiny model, the MuJoCo oracle).

A candidate that barely changes the model is promoted and the generators move to it; a deliberately
wrecked candidate (large random LoRA weights, published in PEFT format into the run's adapter store while
the loop runs) is refused, and no generator ever adopts it: the promoted pointer never points at it.
The learner trains but does not publish here, so every candidate is ours and no publish of the learner can
supersede the wrecked one before the canary scores it (test_canary.py covers supersession).
"""

from __future__ import annotations

import threading
import time

import pytest
import ray
from rich.console import Console

from dso.broker.broker import Broker
from dso.evaluate.gate import Decision
from dso.jobs.runner import LoopRunner
from dso.models.factory import TINY_DIR
from test_canary import CANARY, publish
from test_loop_support import loop_test_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray for this module (``address="local"``: never joins another session's cluster)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_wrecked_candidate_is_refused_and_never_served(tmp_path, local_ray):
    run_dir = tmp_path / "run"
    settings = loop_test_settings(
        TINY_DIR, {"run_dir": str(run_dir), "claim_idle_ms": 2000, "max_backlog": 24},
        canary={**CANARY, "min_interval_s": 0.5, "poll_s": 0.25, "num_cpus": 0.25},
        generator_num_cpus=0.5, simulator_num_cpus=0.5, learner_num_cpus=0.5, ray_num_cpus=2,
        publish_every=1_000_000, drain_timeout_s=5.0, progress_interval_s=5.0, api_enabled=False,
    )
    settings.api.metrics_port = 0
    broker = Broker.open(settings.broker)
    settings = settings.model_copy(update={"broker": settings.broker.model_copy(update={"redis_url": broker.url})})
    runner = LoopRunner(settings, broker, run_dir, Console(width=140))
    adoptions = broker.adoptions
    stop = threading.Event()
    supervisor = threading.Thread(target=runner.supervise, args=(stop, 180.0))
    started = time.monotonic()
    try:
        runner.start()
        supervisor.start()
        assert "canary" in runner.roles()
        wait_for(lambda: broker.promotion.get(0), 60, "the canary's baseline")

        good = publish(broker, settings, tmp_path, scale=1e-3, seed=11)
        record = wait_for(lambda: broker.promotion.get(good), 60, "a decision on the good candidate")
        assert record.decision == Decision.promoted, record.reasons
        wait_for(lambda: any(e.version == good for e in adoptions.events()), 60, "a generator to adopt the promoted version")

        bad = publish(broker, settings, tmp_path, scale=5.0, seed=12)
        record = wait_for(lambda: broker.promotion.get(bad), 60, "a decision on the wrecked candidate")
        assert record.decision == Decision.refused and record.reasons, record
        generated = broker.stats.snapshot()["totals"]["generated"]
        # the generators go on after the refusal (a few batches) without moving to it
        wait_for(lambda: broker.stats.snapshot()["totals"]["generated"] >= generated + 8, 60, "more batches")
    finally:
        stop.set()
        supervisor.join(timeout=60)
        runner.stop()
    summary = runner.summary(time.monotonic() - started)
    try:
        assert {e.version for e in adoptions.events()} == {good}, "generators adopted only the promoted version"
        assert bad not in summary.by_version, "no sample was ever made with the refused adapter"
        assert broker.promotion.promoted() == good, "the pointer only moves forward, and it never reached the refused one"
        assert not [d for d in broker.promotion.decisions() if d["version"] == bad and d["decision"] == "promoted"]
        canary = summary.canary
        assert canary["promoted"] == good and canary["counts"]["refused"] == 1 and canary["counts"]["promoted"] == 1
        assert canary["base"]["paired_drift"] == 0.0 and set(canary["promoted_scores"]) == {"stable_ratio", "paired_drift", "chamfer"}
        canary_result = next(a.result for a in runner.actors if a.name == "canary-0")
        assert canary_result is not None and canary_result["refused"] == 1, canary_result
    finally:
        broker.close()
