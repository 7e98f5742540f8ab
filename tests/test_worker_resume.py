"""A worker restarted under its own name takes back at once what it held when it died (found by the chaos bench:
a simulator killed near the end left its item pending for claim_idle_ms, so the drain gave up and the run exited 1)."""

from __future__ import annotations

import redis

from dso.broker import KeySpace, WorkQueue
from dso.config import BrokerSettings


def queue(client: redis.Redis, settings: BrokerSettings) -> WorkQueue:
    """A fresh queue object: what a restarted worker process opens."""
    return WorkQueue(client, KeySpace(settings.key_prefix), "samples", "simulators", settings)


def test_a_restarted_consumer_takes_back_its_own_pending_entries_at_once(
    redis_client: redis.Redis, broker_settings: BrokerSettings
) -> None:
    settings = broker_settings.model_copy(update={"claim_idle_ms": 3_600_000})  # nobody else may take them for an hour
    producer = queue(redis_client, settings)
    for i in range(3):
        producer.put(f"s{i}", b"grid")
    first_life = queue(redis_client, settings)
    assert first_life.reclaim("simulator-0") == []
    held = first_life.read("simulator-0", count=2)  # then SIGKILL: no ack
    assert queue(redis_client, settings).reclaim("simulator-1") == [], "another consumer still waits claim_idle_ms"
    second_life = queue(redis_client, settings)
    back = second_life.reclaim("simulator-0", count=1) + second_life.reclaim("simulator-0", count=1)
    assert [d.item_id for d in back] == [d.item_id for d in held] and all(d.deliveries == 2 for d in back)
    assert second_life.reclaim("simulator-0") == [], "only once per life: afterwards the idle rule again"
    second_life.ack(d.entry_id for d in back)
    rest = second_life.read("simulator-0", count=5)
    assert [d.item_id for d in rest] == ["s2"]
    second_life.ack(d.entry_id for d in rest)
    assert producer.backlog() == 0


def test_what_a_process_holds_now_is_not_handed_to_it_again(redis_client: redis.Redis, broker_settings: BrokerSettings) -> None:
    settings = broker_settings.model_copy(update={"claim_idle_ms": 3_600_000})
    work = queue(redis_client, settings)
    work.put("s0", b"grid")
    assert work.reclaim("simulator-0") == [] and len(work.read("simulator-0")) == 1
    assert work.reclaim("simulator-0") == [], "in progress in this very process"


def test_an_entry_that_kills_every_life_of_its_worker_is_dead_lettered(
    redis_client: redis.Redis, broker_settings: BrokerSettings
) -> None:
    settings = broker_settings.model_copy(update={"claim_idle_ms": 3_600_000, "max_deliveries": 3})
    queue(redis_client, settings).put("poison", b"crashes the process")
    first = queue(redis_client, settings)
    first.reclaim("simulator-0")
    assert len(first.read("simulator-0")) == 1  # delivery 1, then the process dies
    for delivery in (2, 3):
        assert [d.deliveries for d in queue(redis_client, settings).reclaim("simulator-0")] == [delivery]
    last = queue(redis_client, settings)
    assert last.reclaim("simulator-0") == []
    dead = last.dead_letters()
    assert [d["id"] for d in dead] == ["poison"] and "delivered 4 times" in dead[0]["reason"]
    assert last.backlog() == 0


def test_an_entry_left_pending_under_a_live_consumer_comes_back_after_a_short_idle(
    redis_client: redis.Redis, broker_settings: BrokerSettings
) -> None:
    """An ack lost to a Valkey restart (the end of its append-only file) leaves an entry pending under a worker that
    is alive and asking for more; found by the Valkey-kill test: the drain waited on one such entry."""
    import time

    settings = broker_settings.model_copy(update={"claim_idle_ms": 3_600_000, "own_reclaim_idle_ms": 200})
    work = queue(redis_client, settings)
    work.put("s0", b"grid")
    assert work.reclaim("simulator-0") == [] and len(work.read("simulator-0")) == 1  # its ack is then lost
    assert work.reclaim("simulator-0") == [], "not before own_reclaim_idle_ms"
    time.sleep(0.3)
    back = work.reclaim("simulator-0")
    assert [d.item_id for d in back] == ["s0"] and back[0].deliveries == 2
    work.ack(d.entry_id for d in back)
    assert work.backlog() == 0
