"""The loop every role runs: call ``step`` until told to stop, riding out broker outages.

A Redis restart (or a network blip) must not kill an actor: connection errors
are logged and retried with capped exponential backoff; redis-py reconnects on
the next command once the server is back. Nothing is lost meanwhile: a worker
acks only after its output is stored, so an interrupted item is redelivered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dso.broker.errors import BROKER_UNAVAILABLE

log = logging.getLogger(__name__)

BROKER_ERRORS = BROKER_UNAVAILABLE  # a restarting server or a blip: ride it out
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0


def run_until_stopped(
    step: Callable[[], bool],
    stop: threading.Event,
    idle_sleep_s: float,
    name: str,
    deadline: float | None = None,
) -> int:
    """Call ``step`` (True = did work) until ``stop`` is set or ``time.monotonic()`` passes ``deadline``.

    Idles ``idle_sleep_s`` after a step that found nothing to do. Returns how many
    broker outages were ridden out.
    """
    backoff = BACKOFF_START_S
    outages = 0
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        try:
            busy = step()
        except BROKER_ERRORS as exc:
            outages += 1
            log.warning("%s: broker unavailable (%s); retrying in %.1f s", name, exc, backoff)
            stop.wait(backoff)
            backoff = min(2 * backoff, BACKOFF_MAX_S)
            continue
        backoff = BACKOFF_START_S
        if not busy and idle_sleep_s > 0:
            stop.wait(idle_sleep_s)
    return outages
