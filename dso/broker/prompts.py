"""Prompt store: prompt images the generators sample from, keyed by content hash.

A prompt id is the sha256 of the image bytes, so pushing the same image twice is a
no-op that returns the same id (idempotent uploads, safe retries). Prompts are
active until retired; a retired prompt keeps its bytes (samples in the replay
buffer still point at it) and pushing it again reactivates it.

Keys: ``prompt:<id>`` hash {image, metadata (JSON), created_at, retired_at};
``prompts:active`` and ``prompts:all`` zsets scored by creation time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from dso.broker.keys import KeySpace
from dso.config import BrokerSettings


_ADD_PROMPT = """
-- KEYS: prompt hash, all zset, active zset; ARGV: id, image, metadata json, now
local created = redis.call('HSETNX', KEYS[1], 'created_at', ARGV[4])
if created == 1 then
  redis.call('HSET', KEYS[1], 'image', ARGV[2], 'metadata', ARGV[3])
end
local created_at = redis.call('HGET', KEYS[1], 'created_at')
redis.call('HDEL', KEYS[1], 'retired_at')
redis.call('ZADD', KEYS[2], created_at, ARGV[1])
redis.call('ZADD', KEYS[3], created_at, ARGV[1])
return created
"""


class UnknownPromptError(KeyError):
    """No prompt with this id was ever stored."""


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    image: bytes
    metadata: dict[str, Any]
    created_at: float
    active: bool


@dataclass(frozen=True)
class PromptSummary:
    """A prompt without its image bytes."""

    prompt_id: str
    metadata: dict[str, Any]
    created_at: float
    active: bool


@dataclass(frozen=True)
class PromptAdded:
    prompt_id: str
    created: bool  # False: these bytes were stored before (still reactivated if retired)


def prompt_id_for(image: bytes) -> str:
    """The content-hash id of an image: sha256 hex of its bytes."""
    return hashlib.sha256(image).hexdigest()


class PromptStore:
    """Prompt id -> image bytes + metadata, with an active set."""

    def __init__(self, client: redis.Redis, keys: KeySpace, settings: BrokerSettings) -> None:
        self.client = client
        self.keys = keys
        self.max_bytes = settings.prompt_max_bytes
        self._add = client.register_script(_ADD_PROMPT)

    def add(self, image: bytes, metadata: Mapping[str, Any] | None = None) -> PromptAdded:
        """Store (or reactivate) an image; metadata of a first upload wins, later ones are ignored."""
        if not isinstance(image, bytes | bytearray | memoryview):
            raise TypeError(f"image must be bytes, got {type(image).__name__}")
        image = bytes(image)
        if not image:
            raise ValueError("image is empty")
        if len(image) > self.max_bytes:
            raise ValueError(f"image is {len(image)} bytes, above the limit of {self.max_bytes}")
        try:
            meta_json = json.dumps(dict(metadata or {}), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"prompt metadata must be JSON-serialisable: {exc}") from exc
        prompt_id = prompt_id_for(image)
        created = self._add(
            keys=[self.keys.prompt(prompt_id), self.keys.prompts_all(), self.keys.prompts_active()],
            args=[prompt_id, image, meta_json, repr(time.time())],
        )
        return PromptAdded(prompt_id, bool(created))

    def get(self, prompt_id: str) -> Prompt:
        fields = self.client.hgetall(self.keys.prompt(prompt_id))
        if not fields or b"image" not in fields:
            raise UnknownPromptError(prompt_id)
        return Prompt(
            prompt_id=prompt_id,
            image=fields[b"image"],
            metadata=json.loads(fields.get(b"metadata", b"{}")),
            created_at=float(fields[b"created_at"]),
            active=b"retired_at" not in fields,
        )

    def summaries(self, prompt_ids: Sequence[str]) -> list[PromptSummary | None]:
        """Metadata, creation time and state of each prompt, in one round trip (None: never stored)."""
        pipe = self.client.pipeline(transaction=False)
        for prompt_id in prompt_ids:
            pipe.hmget(self.keys.prompt(prompt_id), "metadata", "created_at", "retired_at")
        out: list[PromptSummary | None] = []
        for prompt_id, (meta, created_at, retired_at) in zip(prompt_ids, pipe.execute(), strict=True):
            if created_at is None:
                out.append(None)
                continue
            out.append(PromptSummary(prompt_id, json.loads(meta or b"{}"), float(created_at), retired_at is None))
        return out

    def exists(self, prompt_id: str) -> bool:
        return bool(self.client.hexists(self.keys.prompt(prompt_id), "image"))

    def active(self) -> list[str]:
        """Active prompt ids, oldest first."""
        return [p.decode() for p in self.client.zrange(self.keys.prompts_active(), 0, -1)]

    def all(self) -> list[str]:
        """Every prompt id ever stored, oldest first."""
        return [p.decode() for p in self.client.zrange(self.keys.prompts_all(), 0, -1)]

    def retire(self, prompt_id: str) -> bool:
        """Stop sampling this prompt; returns False if it was not active."""
        if not self.exists(prompt_id):
            raise UnknownPromptError(prompt_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.zrem(self.keys.prompts_active(), prompt_id)
        pipe.hset(self.keys.prompt(prompt_id), "retired_at", repr(time.time()))
        removed, _ = pipe.execute()
        return bool(removed)
