"""Promotion: which published adapter the fleet runs, and the canary's scores behind each decision.

The learner *publishes* candidates (``AdapterStore`` + ``AdapterRegistry``); the canary scores them
and *decides*; generators and ``GET /v1/adapters/latest`` follow the *promoted* version only. All of
it lives in Redis (AOF on the embedded server), so a restarted API, generator or learner reads the
same promoted version.

Keys (``KeySpace``)::

    <p>:adapters:promoted            "7"   the promoted version (absent: the base model, version 0)
    <p>:adapters:canary              hash  version -> CanaryRecord json (scores + decision)
    <p>:stream:promotions            stream of decisions (version, decision, reason), replayable
    <p>:adapters:promoted:channel    pub/sub: the version number of each new promotion

A decision is recorded and the pointer moved in one Lua script, so a reader never sees a promoted
version without its scores. The pointer only moves forward (a late decision on an older candidate
cannot demote a newer promoted one).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field

from dso.broker.keys import KeySpace
from dso.evaluate.gate import Decision  # defined with the gate (pure); re-exported here for the broker's readers

__all__ = ["CanaryRecord", "Decision", "PromotionStore"]

PROMOTIONS_STREAM = "promotions"
PROMOTIONS_MAXLEN = 1000

_RECORD = """
-- KEYS: canary hash, promoted pointer, promotions stream; ARGV: version, record json, decision, reason, channel, maxlen
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local moved = 0
if ARGV[3] == 'promoted' then
  local current = redis.call('GET', KEYS[2])
  if (not current) or tonumber(current) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[2], ARGV[1])
    moved = 1
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'version', ARGV[1], 'decision', ARGV[3], 'reason', ARGV[4])
if moved == 1 then
  redis.call('PUBLISH', ARGV[5], ARGV[1])
end
return moved
"""


class CanaryRecord(BaseModel):
    """The canary's scores of one version and the gate's decision on it."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=0)
    decision: Decision
    reasons: list[str] = Field(default_factory=list)  # why refused (one line per bound broken), or why promoted
    scores: dict[str, float] = Field(default_factory=dict)  # stable_rate, paired_drift, chamfer, fscore, ...
    samples: int = 0  # probe samples scored
    seconds: float = 0.0  # wall time the canary spent on it
    decided_at: float = Field(default_factory=time.time)  # unix time


class PromotionStore:
    """The promoted pointer, the canary records and the decision stream of one run."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self.client = client
        self.keys = keys
        self.pointer_key = keys.adapter_promoted()
        self.records_key = keys.adapter_canary()
        self.stream_key = keys.stream(PROMOTIONS_STREAM)
        self.channel = keys.promoted_channel()
        self._record = client.register_script(_RECORD)

    # --- writing (the canary, or the learner when there is no canary) -------------------

    def record(self, record: CanaryRecord) -> bool:
        """Store a decision; returns whether the promoted pointer moved to ``record.version``."""
        moved = self._record(
            keys=[self.records_key, self.pointer_key, self.stream_key],
            args=[
                record.version,
                record.model_dump_json(),
                record.decision.value,
                "; ".join(record.reasons),
                self.channel,
                PROMOTIONS_MAXLEN,
            ],
        )
        return bool(moved)

    # --- reading --------------------------------------------------------------------------

    def promoted(self) -> int:
        """The promoted version; 0 (the base model) before any promotion."""
        value = self.client.get(self.pointer_key)
        return int(value) if value is not None else 0

    def get(self, version: int) -> CanaryRecord | None:
        raw = self.client.hget(self.records_key, str(version))
        return CanaryRecord.model_validate_json(raw) if raw is not None else None

    def all(self) -> dict[int, CanaryRecord]:
        """Every recorded version's record, by version (ascending)."""
        raw = self.client.hgetall(self.records_key)
        records = {int(k): CanaryRecord.model_validate_json(v) for k, v in raw.items()}
        return dict(sorted(records.items()))

    def counts(self) -> dict[str, int]:
        """Decisions so far, by kind (every kind present, zeros included)."""
        out = {d.value: 0 for d in Decision}
        for record in self.all().values():
            out[record.decision.value] += 1
        return out

    def last_refused(self) -> int | None:
        """The newest refused version (the learner rolls back when this moves)."""
        refused = [v for v, r in self.all().items() if r.decision == Decision.refused]
        return max(refused) if refused else None

    def decisions(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` decisions, oldest first (from the stream)."""
        entries = self.client.xrevrange(self.stream_key, count=count)
        out = []
        for entry_id, fields in reversed(entries):
            out.append(
                {
                    "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                    "version": int(fields[b"version"]),
                    "decision": fields[b"decision"].decode(),
                    "reason": fields[b"reason"].decode(),
                }
            )
        return out

    def decisions_after(self, last_id: str = "0-0", count: int = PROMOTIONS_MAXLEN) -> tuple[str, list[dict[str, Any]]]:
        """Decisions recorded after stream id ``last_id`` (oldest first) and the id to pass next time.

        A cheap poll for followers such as the learner (one XRANGE, usually empty).
        """
        entries = self.client.xrange(self.stream_key, min=f"({last_id}", count=count)
        out = []
        for entry_id, fields in entries:
            last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            out.append({"id": last_id, "version": int(fields[b"version"]), "decision": fields[b"decision"].decode()})
        return last_id, out

    def wait_for_promoted(self, than: int, timeout_s: float) -> int | None:
        """Block up to ``timeout_s`` for a promoted version newer than ``than``; returns it, or None.

        Reads the decision stream from its current end before checking the pointer, so a promotion
        between the two cannot be missed.
        """
        tail = self.client.xrevrange(self.stream_key, count=1)
        last_id: bytes | str = tail[0][0] if tail else "0-0"
        current = self.promoted()
        if current > than:
            return current
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return None
            reply = self.client.xread({self.stream_key: last_id}, block=remaining_ms, count=100)
            for _stream, entries in reply or []:
                for entry_id, _fields in entries:
                    last_id = entry_id
            current = self.promoted()
            if current > than:
                return current

    def to_json(self) -> str:
        """Everything, for summaries and debugging."""
        return json.dumps({"promoted": self.promoted(), "records": {v: r.model_dump(mode="json") for v, r in self.all().items()}})
