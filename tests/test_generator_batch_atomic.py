"""A generator's batch and its count are one transaction (found by the chaos bench: a generator killed between
enqueueing its samples and counting them left the summary with more samples labelled than generated)."""

from __future__ import annotations

import pytest

from conftest_broker import make_settings
from dso.actors import GeneratorWorker, seed_default_prompts
from dso.broker.broker import Broker
from test_loop_support import export_random_tiny_model, loop_test_settings


class Killed(Exception):
    """Stands for the SIGKILL between the enqueue and the count."""


def test_a_generator_dying_before_it_counts_its_batch_leaves_neither(tmp_path, valkey_server, monkeypatch) -> None:
    model = export_random_tiny_model(tmp_path / "model")
    settings = loop_test_settings(model, make_settings(tmp_path, redis_url=valkey_server.url).model_dump())
    broker = Broker.open(settings.broker)
    try:
        seed_default_prompts(broker.prompts, settings)
        generator = GeneratorWorker(broker, settings)
        counted = broker.stats.record_generated

        def dies_while_counting(*args, **kwargs):
            counted(*args, **kwargs)  # queued on the batch's transaction, never executed
            raise Killed

        monkeypatch.setattr(broker.stats, "record_generated", dies_while_counting)
        with pytest.raises(Killed):
            generator.step()
        assert broker.samples.backlog() == 0 and broker.stats.snapshot()["totals"]["generated"] == 0
        monkeypatch.undo()
        batch = generator.step()
        assert broker.samples.backlog() == batch.samples == broker.stats.snapshot()["totals"]["generated"] > 0
    finally:
        broker.close()
