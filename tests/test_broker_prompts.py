"""Prompt store on a real Valkey: content-hash ids, idempotent uploads, retire and reactivate."""

from __future__ import annotations

import hashlib

import pytest
import redis

from dso.broker import KeySpace, PromptStore, UnknownPromptError
from dso.config import BrokerSettings


@pytest.fixture()
def prompts(redis_client: redis.Redis, broker_settings: BrokerSettings) -> PromptStore:
    return PromptStore(redis_client, KeySpace(broker_settings.key_prefix), broker_settings)


def test_id_is_the_sha256_and_uploads_are_idempotent(prompts: PromptStore) -> None:
    image = b"\x89PNG fake image bytes"
    first = prompts.add(image, {"name": "chair", "views": 2})
    assert first.prompt_id == hashlib.sha256(image).hexdigest() and first.created
    second = prompts.add(image, {"name": "other name"})
    assert second.prompt_id == first.prompt_id and not second.created
    stored = prompts.get(first.prompt_id)
    assert stored.image == image and stored.active
    assert stored.metadata == {"name": "chair", "views": 2}  # first upload's metadata wins
    assert prompts.active() == prompts.all() == [first.prompt_id]


def test_retire_and_reactivate(prompts: PromptStore) -> None:
    a = prompts.add(b"image a").prompt_id
    b = prompts.add(b"image b").prompt_id
    assert prompts.active() == [a, b]
    assert prompts.retire(a) is True
    assert prompts.retire(a) is False  # already retired
    assert prompts.active() == [b] and prompts.all() == [a, b]
    retired = prompts.get(a)
    assert not retired.active and retired.image == b"image a"  # bytes kept for old samples
    again = prompts.add(b"image a")
    assert not again.created and prompts.get(a).active
    assert prompts.active() == [a, b]  # ordered by first upload


def test_bad_input(prompts: PromptStore, broker_settings: BrokerSettings) -> None:
    with pytest.raises(ValueError, match="empty"):
        prompts.add(b"")
    with pytest.raises(ValueError, match="above the limit"):
        prompts.add(b"x" * (broker_settings.prompt_max_bytes + 1))
    with pytest.raises(ValueError, match="JSON"):
        prompts.add(b"ok", {"bad": object()})
    with pytest.raises(TypeError):
        prompts.add("a string, not bytes")  # type: ignore[arg-type]
    with pytest.raises(UnknownPromptError):
        prompts.get("0" * 64)
    with pytest.raises(UnknownPromptError):
        prompts.retire("0" * 64)
    assert not prompts.exists("0" * 64)
