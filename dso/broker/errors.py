"""The broker's failures, named once so that no caller outside ``dso.broker`` imports redis-py.

``BrokerError`` is any failure of a broker command (the API answers it with 503);
``BROKER_UNAVAILABLE`` are the ones a role rides out by retrying (the server is
restarting, a network blip): redis-py reconnects on the next command.
"""

from __future__ import annotations

import redis

BrokerError = redis.RedisError
BROKER_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
)

__all__ = ["BROKER_UNAVAILABLE", "BrokerError"]
