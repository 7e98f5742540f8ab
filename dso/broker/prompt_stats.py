"""Per-prompt verdict counts, so ``GET /v1/prompts/{id}`` can show a prompt's own stability rate.

Kept in Redis next to the run's other statistics (``<prefix>:stats:prompt:<id>``,
a hash of counts). The learner records each verdict once, when it ingests a sample id
for the first time, right where it calls ``broker.stats.record_labelled``::

    outcome = broker.stats.record_labelled(verdict, record.adapter_version)
    PromptStats.for_broker(broker).record(record.prompt_id, outcome)

The broker owns these keys; the API reads them through this class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dso.sim.verdict import COUNTED_CLASSES

OUTCOMES = COUNTED_CLASSES  # stable, unstable, invalid (Outcome.counted_as)


class PromptStats:
    """Verdict counts per prompt id."""

    def __init__(self, client: Any, keys: Any) -> None:
        self.client = client
        self.keys = keys

    @classmethod
    def for_broker(cls, broker: Any) -> PromptStats:
        return cls(broker.prompts.client, broker.prompts.keys)

    def _key(self, prompt_id: str) -> str:
        return self.keys.stats("prompt", prompt_id)

    def record(self, prompt_id: str, outcome: str, count: int = 1) -> None:
        """Count ``count`` verdicts of class ``outcome`` (stable / unstable / invalid) for a prompt."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self._key(prompt_id), outcome, count)
        pipe.hincrby(self._key(prompt_id), "labelled", count)
        pipe.execute()

    def get(self, prompt_id: str) -> dict[str, Any]:
        return self.get_many([prompt_id])[0]

    def get_many(self, prompt_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``{labelled, stable, unstable, invalid, stability_rate}`` per id (rate None before both classes)."""
        pipe = self.client.pipeline(transaction=False)
        for prompt_id in prompt_ids:
            pipe.hgetall(self._key(prompt_id))
        out = []
        for raw in pipe.execute():
            counts = {name: int(raw.get(name.encode(), 0)) for name in (*OUTCOMES, "labelled")}
            judged = counts["stable"] + counts["unstable"]
            counts["stability_rate"] = counts["stable"] / judged if judged else None
            out.append(counts)
        return out
