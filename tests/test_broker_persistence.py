"""The embedded server: append-only persistence across restarts, ownership, connection errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest_broker import make_labelled, make_settings

from dso.broker import Broker, BrokerServerError, EmbeddedValkey, IngestResult, connect
from dso.broker.server import read_server_info


def test_restart_on_the_same_dir_loses_no_labelled_sample(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, replay_capacity=64)
    records = [make_labelled(stable=i % 2 == 0, adapter_version=1, seed=i) for i in range(6)]
    with Broker.open(settings) as broker:
        assert broker.connection.server is not None  # no URL: embedded server in the run dir
        for record in records:
            broker.labelled.put(record.sample_id, record.to_bytes())
        delivered = broker.labelled.read("learner", count=4)
        for delivery in delivered[:3]:  # 3 ingested; 1 pending (learner died); 2 never delivered
            assert broker.replay.ingest(delivery, broker.labelled) is IngestResult.INSERTED
        broker.prompts.add(b"image bytes", {"name": "chair"})
        broker.registry.announce({"version": 1, "step": 10})
    assert read_server_info(settings.embedded_data_dir) is None  # stopped cleanly
    assert (settings.embedded_data_dir / "appendonlydir").is_dir()

    with Broker.open(settings) as broker:
        depth = broker.labelled.depth()
        assert (depth.pending, depth.lag) == (1, 2)
        assert len(broker.replay) == 3
        leftovers = broker.labelled.reclaim("learner-2", min_idle_ms=0) + broker.labelled.read("learner-2", count=10)
        for delivery in leftovers:
            broker.replay.ingest(delivery, broker.labelled)
        assert {r.sample_id for r in records} == {
            r.sample_id for r in records if broker.replay.get(r.sample_id) is not None
        }
        assert broker.labelled.backlog() == 0
        assert broker.prompts.active() and broker.registry.latest() == 1


def test_a_crash_after_the_fsync_interval_keeps_acknowledged_writes(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, replay_capacity=64)
    server = EmbeddedValkey(settings.embedded_data_dir).start()
    try:
        broker = Broker.over(connect(settings.model_copy(update={"redis_url": server.url})), settings)
        record = make_labelled(stable=True, seed=11)
        assert broker.replay.add(record) is IngestResult.INSERTED
        broker.connection.close()
        time.sleep(1.2)  # appendfsync everysec: at most one second of writes is at risk
    finally:
        server.kill()
    with Broker.open(settings) as broker:
        assert broker.replay.get(record.sample_id) is not None


def test_second_owner_of_a_data_dir_is_refused(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path / "valkey") as first:
        info = read_server_info(tmp_path / "valkey")
        assert info is not None and info["url"] == first.url
        with pytest.raises(BrokerServerError, match="already served"):
            EmbeddedValkey(tmp_path / "valkey").start()
    with EmbeddedValkey(tmp_path / "valkey") as again:  # lock released on stop
        assert again.running


def test_unreachable_url_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerServerError, match="cannot reach Redis"):
        connect(make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0"))


def test_settings_refuse_a_maxlen_that_could_trim_unprocessed_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stream_maxlen"):
        make_settings(tmp_path, stream_maxlen=10, max_backlog=10)
