"""Adapter registry in Redis: published versions, the latest pointer, and notifications.

The adapter *files* live in the adapter store (``adapter_store.py``); this registry
tells the fleet about them and is the one source of truth for the newest *published*
version (``latest()``; the store keeps no pointer of its own). Which version generators
*serve* is the promotion store's (``promotion.py``: the canary's decision).
``Broker.open`` announces any version whose files are in the store but not here
(a publisher killed between its rename and its announcement, a registry that lost
its data).

Two channels: pub/sub for instant push, and the ``adapters`` stream, which a
generator that was down or missed a message can read (or just ask ``latest()``):
pub/sub alone drops messages nobody is listening to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from dso.broker.keys import KeySpace
from dso.config import BrokerSettings

_ANNOUNCE = """
-- KEYS: manifests hash, latest, adapters stream; ARGV: version, manifest json, maxlen, channel
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local current = redis.call('GET', KEYS[2])
local moved = 0
if (not current) or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
  moved = 1
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'version', ARGV[1], 'manifest', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return moved
"""


def _manifest_dict(manifest: Mapping[str, Any] | Any) -> dict[str, Any]:
    if hasattr(manifest, "model_dump"):
        return manifest.model_dump(mode="json")
    if isinstance(manifest, Mapping):
        return dict(manifest)
    raise TypeError(f"manifest must be a mapping or a pydantic model, got {type(manifest).__name__}")


class AdapterRegistry:
    """Which adapter versions exist, which is latest, and who should hear about a new one."""

    def __init__(self, client: redis.Redis, keys: KeySpace, settings: BrokerSettings) -> None:
        self.client = client
        self.keys = keys
        self.stream_key = keys.stream(settings.adapters_stream)
        self.channel = keys.adapter_channel()
        self.maxlen = settings.adapters_maxlen
        self._announce = client.register_script(_ANNOUNCE)

    def announce(self, manifest: Mapping[str, Any] | Any) -> bool:
        """Record a published version; returns whether the latest pointer moved (newer version)."""
        data = _manifest_dict(manifest)
        version = data.get("version")
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"manifest needs a non-negative integer 'version', got {version!r}")
        moved = self._announce(
            keys=[self.keys.adapter_manifests(), self.keys.adapter_latest(), self.stream_key],
            args=[version, json.dumps(data, sort_keys=True), self.maxlen, self.channel],
        )
        return bool(moved)

    def latest(self) -> int | None:
        value = self.client.get(self.keys.adapter_latest())
        return int(value) if value is not None else None

    def manifest(self, version: int) -> dict[str, Any] | None:
        raw = self.client.hget(self.keys.adapter_manifests(), str(version))
        return json.loads(raw) if raw is not None else None

    def versions(self) -> list[int]:
        return sorted(int(v) for v in self.client.hkeys(self.keys.adapter_manifests()))

    def manifests(self) -> dict[int, dict[str, Any]]:
        """Every announced version's manifest, by version (unreadable entries are skipped)."""
        out = {}
        for version, raw in self.client.hgetall(self.keys.adapter_manifests()).items():
            try:
                out[int(version)] = json.loads(raw)
            except ValueError:
                continue
        return dict(sorted(out.items()))

    def subscribe(self) -> redis.client.PubSub:
        """A pub/sub handle on the announcement channel (messages carry the version number)."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel)
        return pubsub

    def wait_for_newer(self, than: int, timeout_s: float) -> int | None:
        """Block until a version newer than ``than`` is announced; returns it, or None on timeout.

        Reads the stream from its current end *before* checking ``latest()``, so an
        announcement between the two cannot be missed.
        """
        tail = self.client.xrevrange(self.stream_key, count=1)
        last_id: bytes | str = tail[0][0] if tail else "0-0"
        current = self.latest()
        if current is not None and current > than:
            return current
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return None
            reply = self.client.xread({self.stream_key: last_id}, block=remaining_ms, count=100)
            best = None
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    version = int(fields[b"version"])
                    if version > than and (best is None or version > best):
                        best = version
            if best is not None:
                return max(best, self.latest() or best)
