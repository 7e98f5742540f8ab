"""Work queues on Redis streams with consumer groups: at-least-once delivery.

One stream, one consumer group: ``samples`` -> simulators, ``labelled`` -> learner.
A consumer reads new entries, processes them and acks. If it dies before the ack
the entry stays pending; another consumer takes it over with XAUTOCLAIM once it
has been idle longer than the slowest legitimate processing (``claim_idle_ms``).
An entry delivered more than ``max_deliveries`` times is poison: it moves to the
dead-letter stream with the reason and the original is acked. Consumers must be
idempotent (the replay buffer dedups by sample id), since a slow consumer and the
one that reclaimed its work may both finish.

A restarted worker keeps its consumer name, so what it held when it died is
pending under its own name: its first reclaim takes those entries back at once,
whatever their idle time (else they would wait ``claim_idle_ms``, and a drain at
shutdown would give up on them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from dso.broker.keys import KeySpace
from dso.config import BrokerSettings

ID_FIELD = b"id"
DATA_FIELD = b"data"


@dataclass(frozen=True)
class Delivery:
    """One entry handed to a consumer."""

    entry_id: str  # stream entry id, needed to ack
    item_id: str  # the producer's id (sample id): stable across redeliveries
    payload: bytes
    deliveries: int  # 1 on first delivery, more after reclaims


@dataclass(frozen=True)
class QueueDepth:
    """How much work is waiting in a queue."""

    stream: str
    length: int  # entries currently in the stream (acked ones too unless deleted)
    lag: int  # entries not yet delivered to the group
    pending: int  # delivered but not acked

    @property
    def backlog(self) -> int:
        return self.lag + self.pending

    def as_dict(self) -> dict[str, int]:
        return {"length": self.length, "lag": self.lag, "pending": self.pending, "backlog": self.backlog}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class WorkQueue:
    """A stream plus its one consumer group, with reclaim and dead-lettering."""

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        stream: str,
        group: str,
        settings: BrokerSettings,
    ) -> None:
        self.client = client
        self.name = stream
        self.stream_key = keys.stream(stream)
        self.dead_key = keys.stream(settings.dead_stream)
        self.group = group
        self.settings = settings
        self._group_ready = False
        self._resumed: set[str] = set()  # consumers whose own pending entries this process took back already
        self._resume_from: dict[str, str] = {}  # consumer -> the id after the last of them taken back so far

    # --- setup -----------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the stream and its group if missing (idempotent; every consumer may call it)."""
        if self._group_ready:
            return
        try:
            self.client.xgroup_create(self.stream_key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # --- producer ----------------------------------------------------------

    def put(self, item_id: str, payload: bytes, pipe: redis.client.Pipeline | None = None) -> str | None:
        """Append one item; returns the stream entry id. The stream is capped (MAXLEN ~).

        With ``pipe`` the append is only queued there (None returned): the caller executes it in
        one transaction with other writes, e.g. a batch and its count, so a crash leaves neither half.
        """
        if not item_id:
            raise ValueError("item_id must be a non-empty string")
        self.ensure_group()
        entry_id = (pipe if pipe is not None else self.client).xadd(
            self.stream_key,
            {ID_FIELD: item_id, DATA_FIELD: payload},
            maxlen=self.settings.stream_maxlen,
            approximate=True,
        )
        return None if pipe is not None else _s(entry_id)

    # --- consumer ------------------------------------------------------------

    def read(self, consumer: str, count: int = 1, block_ms: int | None = None) -> list[Delivery]:
        """New entries for ``consumer`` (blocks up to ``block_ms``; settings default; 0 = no wait)."""
        self.ensure_group()
        block = self.settings.read_block_ms if block_ms is None else block_ms
        reply = self.client.xreadgroup(
            self.group, consumer, {self.stream_key: ">"}, count=count, block=block if block > 0 else None
        )
        deliveries: list[Delivery] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                deliveries.append(self._delivery(entry_id, fields, deliveries=1))
        return deliveries

    def ack(self, entry_ids: Iterable[str]) -> int:
        """Acknowledge processed entries (and delete them when ``delete_acked``)."""
        ids = list(entry_ids)
        if not ids:
            return 0
        pipe = self.client.pipeline(transaction=True)
        pipe.xack(self.stream_key, self.group, *ids)
        if self.settings.delete_acked:
            pipe.xdel(self.stream_key, *ids)
        return int(pipe.execute()[0])

    def reclaim(self, consumer: str, count: int = 10, min_idle_ms: int | None = None) -> list[Delivery]:
        """Take over entries idle longer than ``claim_idle_ms`` whose consumer presumably died.

        A consumer's first calls in this process return its own pending entries first (see the
        module docstring). Entries past ``max_deliveries`` are dead-lettered instead of returned.
        """
        self.ensure_group()
        if consumer not in self._resumed:
            own = self._claim_own(consumer, count)
            if own:
                return self._deliveries(own)
        else:
            own = self._claim_stale_own(consumer, count)
            if own:
                return self._deliveries(own)
        idle = self.settings.claim_idle_ms if min_idle_ms is None else min_idle_ms
        claimed: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor: bytes | str = "0-0"
        while len(claimed) < count:
            reply = self.client.xautoclaim(
                self.stream_key, self.group, consumer, idle, start_id=cursor, count=count - len(claimed)
            )
            cursor, entries = reply[0], reply[1]
            # reply[2] (Redis >= 7) lists pending ids whose entries were trimmed away; XAUTOCLAIM
            # already dropped them from the pending list, nothing is left to process.
            claimed.extend((eid, fields) for eid, fields in entries if fields)
            if _s(cursor) == "0-0":
                break
        return self._deliveries(claimed)

    def _claim_own(self, consumer: str, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``count`` entries pending under ``consumer`` (a previous life of it), claimed again (counted as a delivery)."""
        start = self._resume_from.get(consumer, "-")
        rows = self.client.xpending_range(self.stream_key, self.group, min=start, max="+", count=count, consumername=consumer)
        if len(rows) < count:
            self._resumed.add(consumer)
        if not rows:
            return []
        ids = [row["message_id"] for row in rows]
        self._resume_from[consumer] = "(" + _s(ids[-1])  # claimed to itself they stay in its list: read on after them
        entries = self.client.xclaim(self.stream_key, self.group, consumer, 0, ids)
        return [(eid, fields) for eid, fields in entries if fields]

    def _claim_stale_own(self, consumer: str, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries pending under ``consumer`` for longer than ``own_reclaim_idle_ms``, claimed again.

        A worker acks what it took before it asks for more, so anything still pending under its own name at
        that point was lost on the way: typically an ack that a Valkey restart dropped from the end of its
        append-only file. Without this, such an entry would wait ``claim_idle_ms`` and a drain would give up.
        """
        rows = self.client.xpending_range(
            self.stream_key, self.group, min="-", max="+", count=count, consumername=consumer,
            idle=self.settings.own_reclaim_idle_ms,
        )
        if not rows:
            return []
        entries = self.client.xclaim(self.stream_key, self.group, consumer, 0, [row["message_id"] for row in rows])
        return [(eid, fields) for eid, fields in entries if fields]

    def _deliveries(self, claimed: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Delivery]:
        """Claimed entries as deliveries; those past ``max_deliveries`` go to the dead letters instead."""
        if not claimed:
            return []
        counts = self._delivery_counts([_s(eid) for eid, _ in claimed])
        out: list[Delivery] = []
        for entry_id, fields in claimed:
            delivery = self._delivery(entry_id, fields, deliveries=counts.get(_s(entry_id), 1))
            if delivery.deliveries > self.settings.max_deliveries:
                self.dead_letter(
                    delivery, f"delivered {delivery.deliveries} times without an ack (max {self.settings.max_deliveries})"
                )
            else:
                out.append(delivery)
        return out

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move an entry to the dead-letter stream with the reason, and ack the original (atomically)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(
            self.dead_key,
            {
                ID_FIELD: delivery.item_id,
                DATA_FIELD: delivery.payload,
                b"reason": reason,
                b"source": self.name,
                b"group": self.group,
                b"entry_id": delivery.entry_id,
                b"deliveries": delivery.deliveries,
                b"time": time.time(),
            },
            maxlen=self.settings.dead_maxlen,
            approximate=True,
        )
        pipe.xack(self.stream_key, self.group, delivery.entry_id)
        if self.settings.delete_acked:
            pipe.xdel(self.stream_key, delivery.entry_id)
        pipe.execute()

    # --- inspection ----------------------------------------------------------

    def depth(self) -> QueueDepth:
        """Stream length, undelivered lag and pending count of this queue's group."""
        self.ensure_group()
        length = int(self.client.xlen(self.stream_key))
        for info in self.client.xinfo_groups(self.stream_key):
            if _s(info["name"]) == self.group:
                pending = int(info["pending"])
                lag = info.get("lag")
                # lag is unknown (nil) after deletions in the undelivered range; fall back to an upper bound
                lag_value = int(lag) if lag is not None else max(length - pending, 0)
                return QueueDepth(self.name, length, lag_value, pending)
        raise RuntimeError(f"consumer group {self.group!r} vanished from stream {self.stream_key!r}")

    def backlog(self) -> int:
        """Entries not yet acked: undelivered plus pending."""
        return self.depth().backlog

    def memory_bytes(self) -> int:
        """Bytes the server holds for this queue's stream (MEMORY USAGE, every node sampled): capacity planning."""
        return int(self.client.memory_usage(self.stream_key, samples=0) or 0)

    def dead_letter_count(self) -> int:
        """Entries in the run's dead-letter stream (shared by every queue; capped, newest kept)."""
        return int(self.client.xlen(self.dead_key))

    def dead_letters(self, count: int = 100) -> list[dict[str, str | bytes]]:
        """This queue's most recent dead-lettered entries (newest first; the dead stream is shared)."""
        out = []
        for entry_id, fields in self.client.xrevrange(self.dead_key, count=count):
            item = {_s(k): (v if k == DATA_FIELD else _s(v)) for k, v in fields.items()}
            if item.get("source") == self.name:
                item["dead_entry_id"] = _s(entry_id)
                out.append(item)
        return out

    # --- helpers -------------------------------------------------------------

    def _delivery_counts(self, entry_ids: Sequence[str]) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for eid in entry_ids:
            pipe.xpending_range(self.stream_key, self.group, min=eid, max=eid, count=1)
        counts: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                counts[_s(row["message_id"])] = int(row["times_delivered"])
        return counts

    def _delivery(self, entry_id: bytes | str, fields: dict[bytes, bytes], deliveries: int) -> Delivery:
        return Delivery(
            entry_id=_s(entry_id),
            item_id=_s(fields.get(ID_FIELD, b"")),
            payload=fields.get(DATA_FIELD, b""),
            deliveries=deliveries,
        )
