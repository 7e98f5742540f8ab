"""Key names: one place that knows how every Redis key of a run is spelled.

All keys share ``<prefix>:`` so several runs can share one server and a run can be
listed or wiped with one pattern.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpace:
    """Builds the Redis key names of one run from its prefix."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or ":" in self.prefix or " " in self.prefix:
            raise ValueError(f"key prefix must be a non-empty word without ':' or spaces, got {self.prefix!r}")

    def key(self, *parts: str | int) -> str:
        return ":".join([self.prefix, *(str(p) for p in parts)])

    # streams
    def stream(self, name: str) -> str:
        return self.key("stream", name)

    # replay buffer
    def replay(self, part: str) -> str:
        return self.key("replay", part)

    def seen(self, sample_id: str) -> str:
        return self.key("seen", sample_id)

    # prompts
    def prompt(self, prompt_id: str) -> str:
        return self.key("prompt", prompt_id)

    def prompts_active(self) -> str:
        return self.key("prompts", "active")

    def prompts_all(self) -> str:
        return self.key("prompts", "all")

    # adapters
    def adapter_manifests(self) -> str:
        return self.key("adapters", "manifests")

    def adapter_latest(self) -> str:
        return self.key("adapters", "latest")

    def adapter_channel(self) -> str:
        return self.key("adapters", "channel")

    # promotion (canary scores, the promoted pointer)
    def adapter_promoted(self) -> str:
        return self.key("adapters", "promoted")

    def adapter_canary(self) -> str:
        return self.key("adapters", "canary")

    def promoted_channel(self) -> str:
        return self.key("adapters", "promoted", "channel")

    # metrics scrape targets (dso.broker.metrics_targets)
    def metrics_targets(self) -> str:
        return self.key("metrics", "targets")

    # stats
    def stats(self, *parts: str | int) -> str:
        return self.key("stats", *parts)
