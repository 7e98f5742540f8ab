"""Labelled replay buffer in Redis: bounded, class-balanced, staleness-aware, idempotent.

Layout (all under ``<prefix>:replay:``):
  ``data``                hash   sample id -> encoded LabelledRecord
  ``<cls>:arrival``       zset   sample id scored by arrival number (eviction order)
  ``<cls>:version``       zset   sample id scored by adapter version (staleness filter)
  ``seq``                 counter of arrivals
with ``<cls>`` in {stable, unstable}. Each class keeps its newest ``capacity // 2``
samples, so a flood of one class (late in training nearly everything stands) never
evicts the other class that balanced sampling needs.

Insertion is one Lua script: "seen" check (SET NX with a TTL on the sample id), insert,
evict, and the XACK of the stream entry it came from, all atomic. A redelivered or
twice-processed sample is therefore stored at most once, and an entry is never acked
without its sample being stored.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from dso.broker.keys import KeySpace
from dso.broker.records import LabelledRecord, RecordDecodeError
from dso.broker.streams import Delivery, WorkQueue
from dso.config import BrokerSettings
from dso.sim.verdict import Outcome

CLASSES = (Outcome.stable.value, Outcome.unstable.value)  # the judged outcomes, the only ones stored

_INSERT_AND_ACK = """
-- KEYS: seen, data, arrival zset, version zset, seq, stream
-- ARGV: sample_id, payload, version, per_class_capacity, seen_ttl_s, group ('' = no ack),
--       entry_id, delete_acked ('1'/'0'), insert ('1'/'0')
local result = 0
if ARGV[9] ~= '1' then
  -- no label to store, but remember the id so a redelivered copy reads as a duplicate
  if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[5])) then
    result = 2
  end
else
  if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[5])) then
    local seq = redis.call('INCR', KEYS[5])
    redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
    redis.call('ZADD', KEYS[3], seq, ARGV[1])
    redis.call('ZADD', KEYS[4], tonumber(ARGV[3]), ARGV[1])
    local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
    if excess > 0 then
      local old = redis.call('ZRANGE', KEYS[3], 0, excess - 1)
      redis.call('ZREMRANGEBYRANK', KEYS[3], 0, excess - 1)
      for _, id in ipairs(old) do
        redis.call('ZREM', KEYS[4], id)
        redis.call('HDEL', KEYS[2], id)
      end
    end
    result = 1
  end
end
if ARGV[6] ~= '' then
  redis.call('XACK', KEYS[6], ARGV[6], ARGV[7])
  if ARGV[8] == '1' then
    redis.call('XDEL', KEYS[6], ARGV[7])
  end
end
return result
"""


class IngestResult(enum.Enum):
    """What happened to one labelled record offered to the buffer."""

    INSERTED = "inserted"
    DUPLICATE = "duplicate"  # this sample id was ingested before (redelivery / double processing)
    SKIPPED = "skipped"  # verdict not ok (invalid input, sim error, timeout): no label to learn from
    DEAD = "dead"  # payload undecodable: dead-lettered


_RESULT_CODES = {1: IngestResult.INSERTED, 0: IngestResult.DUPLICATE, 2: IngestResult.SKIPPED}


@dataclass
class ReplayBatch:
    """A class-balanced draw: stable and unstable halves, each possibly with repeats when short."""

    stable: list[LabelledRecord] = field(default_factory=list)
    unstable: list[LabelledRecord] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        """Both classes present (what DRO's two-sided loss needs)."""
        return bool(self.stable) and bool(self.unstable)

    def __len__(self) -> int:
        return len(self.stable) + len(self.unstable)

    def __iter__(self) -> Iterator[LabelledRecord]:
        yield from self.stable
        yield from self.unstable

    @property
    def labels(self) -> list[bool]:
        return [True] * len(self.stable) + [False] * len(self.unstable)


class ReplayBuffer:
    """Bounded, persisted, class-balanced store of labelled samples."""

    def __init__(self, client: redis.Redis, keys: KeySpace, settings: BrokerSettings) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.per_class_capacity = settings.replay_capacity // 2
        self._insert = client.register_script(_INSERT_AND_ACK)

    # --- writing ---------------------------------------------------------------

    def add(self, record: LabelledRecord) -> IngestResult:
        """Store one record unless its sample id was stored before."""
        return self._run_insert(record, record.to_bytes(), ack=None)

    def ingest(self, delivery: Delivery, queue: WorkQueue) -> IngestResult:
        """Store a record delivered from the labelled queue and ack it, atomically.

        Undecodable payloads are dead-lettered with the decode error as the reason.
        """
        try:
            record = LabelledRecord.from_bytes(delivery.payload)
        except (RecordDecodeError, ValueError) as exc:
            queue.dead_letter(delivery, f"undecodable labelled record: {exc}")
            return IngestResult.DEAD
        return self._run_insert(record, delivery.payload, ack=(queue, delivery.entry_id))

    def _run_insert(
        self, record: LabelledRecord, payload: bytes, ack: tuple[WorkQueue, str] | None
    ) -> IngestResult:
        cls = "stable" if record.stable else "unstable"
        if ack is not None:
            queue, entry_id = ack
            stream_key, group, delete_acked = queue.stream_key, queue.group, queue.settings.delete_acked
        else:  # no ack: the stream key is a placeholder the script never touches
            stream_key, group, entry_id, delete_acked = self.keys.stream("none"), "", "", False
        code = self._insert(
            keys=[
                self.keys.seen(record.sample_id),
                self.keys.replay("data"),
                self._arrival(cls),
                self._version(cls),
                self.keys.replay("seq"),
                stream_key,
            ],
            args=[
                record.sample_id,
                payload,
                record.adapter_version,
                self.per_class_capacity,
                self.settings.seen_ttl_s,
                group,
                entry_id,
                "1" if delete_acked else "0",
                "1" if record.verdict.outcome.judged else "0",
            ],
        )
        return _RESULT_CODES[int(code)]

    # --- reading ---------------------------------------------------------------

    def sample(
        self,
        n: int,
        current_version: int,
        max_staleness: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> ReplayBatch:
        """Draw ``n`` records, half stable and half unstable (stable gets the odd one).

        Only samples made by adapter versions >= ``current_version - max_staleness`` are
        eligible. A class with fewer eligible samples than its share is drawn with
        replacement; a class with none comes back empty (check ``batch.balanced``).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        staleness = self.settings.max_staleness_versions if max_staleness is None else max_staleness
        if staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {staleness}")
        rng = rng if rng is not None else np.random.default_rng()
        min_version = current_version - staleness
        shares = {"stable": n - n // 2, "unstable": n // 2}
        batch = ReplayBatch()
        for cls in CLASSES:
            getattr(batch, cls).extend(self._draw(cls, shares[cls], min_version, rng))
        return batch

    def _draw(self, cls: str, k: int, min_version: int, rng: np.random.Generator) -> list[LabelledRecord]:
        if k == 0:
            return []
        # a record may be evicted between listing and fetching; retry with a fresh listing
        for _attempt in range(3):
            ids = self.client.zrangebyscore(self._version(cls), min_version, "+inf")
            if not ids:
                return []
            replace = len(ids) < k
            picks = rng.choice(len(ids), size=k, replace=replace)
            chosen = [ids[i] for i in picks]
            payloads = self.client.hmget(self.keys.replay("data"), chosen)
            if all(p is not None for p in payloads):
                return [LabelledRecord.from_bytes(p) for p in payloads]
        found = [p for p in payloads if p is not None]
        return [LabelledRecord.from_bytes(found[i % len(found)]) for i in range(k)] if found else []

    def newest_ids(self, classes: Sequence[str], scan: int) -> list[str]:
        """Up to ``scan`` sample ids of the given classes, newest arrival first."""
        pipe = self.client.pipeline(transaction=False)
        for cls in classes:
            pipe.zrevrange(self._arrival(cls), 0, scan - 1, withscores=True)
        merged = [(score, member) for rows in pipe.execute() for member, score in rows]
        merged.sort(key=lambda row: row[0], reverse=True)
        return [member.decode() for _score, member in merged[:scan]]

    def get_many(self, sample_ids: Sequence[str]) -> list[LabelledRecord | None]:
        """The records of ``sample_ids`` in one round trip, None where evicted or undecodable."""
        if not sample_ids:
            return []
        out: list[LabelledRecord | None] = []
        for payload in self.client.hmget(self.keys.replay("data"), list(sample_ids)):
            try:
                out.append(LabelledRecord.from_bytes(payload) if payload is not None else None)
            except RecordDecodeError:
                out.append(None)
        return out

    def get(self, sample_id: str) -> LabelledRecord | None:
        payload = self.client.hget(self.keys.replay("data"), sample_id)
        return LabelledRecord.from_bytes(payload) if payload is not None else None

    def counts(self, min_version: int | None = None) -> dict[str, int]:
        """Records per class (optionally only those with adapter version >= ``min_version``)."""
        out = {}
        for cls in CLASSES:
            if min_version is None:
                out[cls] = int(self.client.zcard(self._arrival(cls)))
            else:
                out[cls] = int(self.client.zcount(self._version(cls), min_version, "+inf"))
        return out

    def __len__(self) -> int:
        return sum(self.counts().values())

    def clear(self) -> None:
        """Drop every stored record (the seen markers stay, so old ids still dedup)."""
        class_keys = [key for cls in CLASSES for key in (self._arrival(cls), self._version(cls))]
        self.client.delete(self.keys.replay("data"), self.keys.replay("seq"), *class_keys)

    def _arrival(self, cls: str) -> str:
        return self.keys.replay(cls + ":arrival")

    def _version(self, cls: str) -> str:
        return self.keys.replay(cls + ":version")
