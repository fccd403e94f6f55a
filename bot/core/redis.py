"""The one way the bot opens an async Redis client (web tier, publisher, worker).

Pooled connections go stale when Redis restarts; without a retry the first command on each of
them fails. Clients made here retry a command on connection errors and timeouts a few times
with a short exponential backoff, and check idle connections before use.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def connect_redis(url: str) -> Redis:
    """An async client for ``url`` (nothing connects until the first command)."""
    return Redis.from_url(
        url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )
