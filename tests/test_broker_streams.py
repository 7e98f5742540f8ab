"""Work queues on a real Valkey: group round trip, reclaim of dead consumers, dead letters,
exactly-once landing in the replay buffer, admission control."""

from __future__ import annotations

import time

import pytest
import redis
from conftest_broker import make_labelled, make_sample, verdict_of

from dso.broker import AdmissionControl, IngestResult, KeySpace, LabelledRecord, ReplayBuffer, SampleRecord, WorkQueue
from dso.config import BrokerSettings


@pytest.fixture()
def keys(broker_settings: BrokerSettings) -> KeySpace:
    return KeySpace(broker_settings.key_prefix)


@pytest.fixture()
def samples(redis_client: redis.Redis, keys: KeySpace, broker_settings: BrokerSettings) -> WorkQueue:
    return WorkQueue(redis_client, keys, "samples", "simulators", broker_settings)


@pytest.fixture()
def labelled(redis_client: redis.Redis, keys: KeySpace, broker_settings: BrokerSettings) -> WorkQueue:
    return WorkQueue(redis_client, keys, "labelled", "learner", broker_settings)


@pytest.fixture()
def replay(redis_client: redis.Redis, keys: KeySpace, broker_settings: BrokerSettings) -> ReplayBuffer:
    return ReplayBuffer(redis_client, keys, broker_settings)


def idle_past_claim(settings: BrokerSettings) -> None:
    time.sleep(settings.claim_idle_ms / 1000 * 1.5)


def test_round_trip_through_consumer_group(samples: WorkQueue) -> None:
    sent = [make_sample(seed=i) for i in range(3)]
    for s in sent:
        samples.put(s.sample_id, s.to_bytes())
    assert samples.depth().lag == 3
    got = samples.read("sim-a", count=10)
    assert [d.item_id for d in got] == [s.sample_id for s in sent]
    assert all(d.deliveries == 1 for d in got)
    decoded = SampleRecord.from_bytes(got[1].payload)
    assert decoded.sample_id == sent[1].sample_id and decoded.seed == 1
    depth = samples.depth()
    assert (depth.lag, depth.pending) == (0, 3)
    assert samples.ack(d.entry_id for d in got) == 3
    depth = samples.depth()
    assert (depth.length, depth.lag, depth.pending, depth.backlog) == (0, 0, 0, 0)  # acked entries deleted


def test_two_consumers_split_the_work(samples: WorkQueue) -> None:
    for i in range(4):
        samples.put(f"id{i}", b"x")
    a = samples.read("sim-a", count=2)
    b = samples.read("sim-b", count=5)
    assert {d.item_id for d in a} | {d.item_id for d in b} == {f"id{i}" for i in range(4)}
    assert not {d.entry_id for d in a} & {d.entry_id for d in b}


def test_dead_consumer_is_reclaimed_and_the_sample_lands_once(
    labelled: WorkQueue, replay: ReplayBuffer, broker_settings: BrokerSettings
) -> None:
    record = make_labelled(stable=True, seed=7)
    labelled.put(record.sample_id, record.to_bytes())
    first = labelled.read("learner-a", count=1)
    assert len(first) == 1
    # learner-a "dies" here: no ack. Before the idle time nobody may take its work.
    assert labelled.reclaim("learner-b") == []
    idle_past_claim(broker_settings)
    taken = labelled.reclaim("learner-b")
    assert [d.item_id for d in taken] == [record.sample_id]
    assert taken[0].deliveries == 2
    # both consumers finish processing: the slow one wakes up, the reclaimer too
    assert replay.ingest(taken[0], labelled) is IngestResult.INSERTED
    assert replay.ingest(first[0], labelled) is IngestResult.DUPLICATE
    assert len(replay) == 1
    assert replay.get(record.sample_id) is not None
    assert labelled.depth().backlog == 0


def test_same_sample_enqueued_twice_is_stored_once(labelled: WorkQueue, replay: ReplayBuffer) -> None:
    record = make_labelled(stable=False, seed=3)
    for _ in range(2):  # e.g. two simulators both labelled it after a reclaim
        labelled.put(record.sample_id, record.to_bytes())
    results = [replay.ingest(d, labelled) for d in labelled.read("learner", count=5)]
    assert results == [IngestResult.INSERTED, IngestResult.DUPLICATE]
    assert replay.counts() == {"stable": 0, "unstable": 1}
    assert labelled.backlog() == 0


def test_poison_entry_is_dead_lettered_after_max_deliveries(samples: WorkQueue, broker_settings: BrokerSettings) -> None:
    samples.put("poison", b"crashes every simulator")
    assert len(samples.read("sim-a")) == 1  # delivery 1, then the worker crashes
    for delivery_number in range(2, broker_settings.max_deliveries + 1):
        idle_past_claim(broker_settings)
        again = samples.reclaim(f"sim-{delivery_number}")
        assert [(d.item_id, d.deliveries) for d in again] == [("poison", delivery_number)]
    idle_past_claim(broker_settings)
    assert samples.reclaim("sim-last") == []
    dead = samples.dead_letters()
    assert len(dead) == 1
    assert dead[0]["id"] == "poison" and dead[0]["data"] == b"crashes every simulator"
    assert "delivered 4 times" in dead[0]["reason"] and dead[0]["source"] == "samples"
    assert samples.depth().backlog == 0


def test_undecodable_labelled_payload_goes_to_dead_letters(labelled: WorkQueue, replay: ReplayBuffer) -> None:
    labelled.put("garbage", b"not a record")
    (delivery,) = labelled.read("learner")
    assert replay.ingest(delivery, labelled) is IngestResult.DEAD
    assert "undecodable" in labelled.dead_letters()[0]["reason"]
    assert labelled.backlog() == 0 and len(replay) == 0


def test_admission_control_counts_undelivered_and_pending(
    samples: WorkQueue, labelled: WorkQueue, broker_settings: BrokerSettings
) -> None:
    gate = AdmissionControl([samples, labelled], max_backlog=broker_settings.max_backlog)  # 6
    for i in range(4):
        samples.put(f"s{i}", b"x")
    assert gate.backlog() == 4
    assert gate.admit(2) and not gate.admit(3)
    taken = samples.read("sim", count=4)
    assert gate.backlog() == 4  # delivered but not acked still counts
    samples.ack([taken[0].entry_id, taken[1].entry_id])
    labelled.put("l0", b"y")  # labelled but not yet in the replay buffer: counts too
    assert gate.backlog() == 3
    assert gate.admit(3) and not gate.admit(4)
    assert gate.wait(4, timeout_s=0.05, poll_s=0.01) is False
    with pytest.raises(ValueError, match="exceeds max_backlog"):
        gate.admit(broker_settings.max_backlog + 1)


def test_generator_to_simulator_to_learner_pipeline(
    samples: WorkQueue, labelled: WorkQueue, redis_client: redis.Redis, keys: KeySpace, broker_settings: BrokerSettings
) -> None:
    """A sample travels the whole data plane; the verdict is computed from its occupancy."""
    replay = ReplayBuffer(redis_client, keys, broker_settings.model_copy(update={"replay_capacity": 64}))
    sent = [make_sample(adapter_version=1, seed=i) for i in range(6)]
    for s in sent:
        samples.put(s.sample_id, s.to_bytes())
    for delivery in samples.read("sim", count=10):
        sample = SampleRecord.from_bytes(delivery.payload)
        fill = float(sample.occupancy.mean())
        record = LabelledRecord.from_verdict(sample, verdict_of("stable" if fill > 0.5 else "unstable"))
        labelled.put(record.sample_id, record.to_bytes())
        samples.ack([delivery.entry_id])
    results = [replay.ingest(d, labelled) for d in labelled.read("learner", count=10)]
    assert results == [IngestResult.INSERTED] * 6
    expected_stable = sum(float(s.occupancy.mean()) > 0.5 for s in sent)
    assert replay.counts() == {"stable": expected_stable, "unstable": 6 - expected_stable}
    assert samples.backlog() == 0 and labelled.backlog() == 0
