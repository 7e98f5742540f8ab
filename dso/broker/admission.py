"""Admission control: generators pause while the unlabelled backlog is too deep.

The backlog is everything enqueued but not yet acked (undelivered lag + pending)
summed over the queues given, by default ``samples`` and ``labelled``: counting the
learner's queue too means a slow learner also slows the generators, so neither
stream can grow past ``stream_maxlen`` and lose entries to trimming.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from dso.broker.streams import WorkQueue


class AdmissionControl:
    """Answers "may a generator enqueue k more samples now?"."""

    def __init__(self, queues: Sequence[WorkQueue], max_backlog: int) -> None:
        if not queues:
            raise ValueError("admission control needs at least one queue to watch")
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be >= 1, got {max_backlog}")
        self.queues = list(queues)
        self.max_backlog = max_backlog

    def backlog(self) -> int:
        """Entries enqueued but not yet acked, over all watched queues."""
        return sum(queue.backlog() for queue in self.queues)

    def admit(self, k: int = 1) -> bool:
        """True when ``k`` more entries keep the backlog within ``max_backlog``."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if k > self.max_backlog:
            raise ValueError(f"k={k} can never be admitted: it exceeds max_backlog={self.max_backlog}")
        return self.backlog() + k <= self.max_backlog

    def wait(self, k: int = 1, timeout_s: float = 60.0, poll_s: float = 0.25) -> bool:
        """Block until ``admit(k)`` or the timeout; returns whether admission was granted."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.admit(k):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
