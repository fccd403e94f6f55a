"""Redis token buckets: one per agent for its OpenAI rate limit, one per user for fairness.

Every worker process of an agent shares one bucket, keyed by the agent's phone number id, so
``OPENAI_RATE_LIMIT_PER_SECOND`` holds for the agent as a whole however many workers run. The
bucket lives in a small Lua script, atomic in Redis, with Redis' own clock (workers' clocks may
disagree). A caller that finds the bucket empty *reserves* its token (the count goes negative)
and sleeps until it is due, so waiters are served in order and never poll; a wait longer than
``max_wait`` reserves nothing and raises :class:`RateLimitTimeout`, which the task turns into a
later retry instead of holding a worker.

When OpenAI answers 429 anyway, :meth:`TokenBucket.penalize` pushes the agent's whole bucket
back by the server's ``Retry-After``: every queued answer waits its turn behind the pause
instead of each one calling, failing and spending a retry of its own.

The per-user bucket (:func:`user_bucket`: ``USER_RATE_LIMIT_PER_MINUTE`` with bursts of
``USER_RATE_LIMIT_BURST``, keyed by the user's conversation) is taken *before* the agent's: a
user over it gets a reservation for a later slot and their answer is put back until then
without holding a worker or an agent token, so one user flooding the bot delays the others by
at most their burst.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bot.core.config import Settings

# Both scripts first read the bucket (``key``) and refill it at ``rate`` up to ``capacity``,
# with Redis's clock: ``now``, ``tokens`` and ``ts`` are then current.
_REFILL = """local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
  ts = now
end
"""

# KEYS[1]: bucket key. ARGV: rate (tokens/s), capacity, tokens requested, max wait (s).
# Returns {granted (0/1), wait seconds as a string}.
BUCKET_SCRIPT = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
""" + _REFILL + """local wait = 0
if tokens < requested then
  wait = (requested - tokens) / rate
end
if wait > max_wait then
  return {0, tostring(wait)}
end
tokens = tokens - requested
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', key, math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {1, tostring(wait)}
"""

# KEYS[1]: bucket key. ARGV: rate, capacity, pause (s). Leaves the bucket empty with a debt of
# ``pause`` seconds, unless it already owes more. Returns the seconds until the next token.
PENALTY_SCRIPT = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local pause = tonumber(ARGV[3])
""" + _REFILL + """tokens = math.min(tokens, -pause * rate)
redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', key, math.ceil((capacity - tokens) / rate * 1000) + 1000)
return tostring((1 - tokens) / rate)
"""

#: Waiting longer than this for a token gives up (the task retries later instead).
DEFAULT_MAX_WAIT = 30.0
#: How long the agent pauses after a 429 that came without ``Retry-After``.
DEFAULT_PENALTY = 2.0


class RateLimitTimeout(Exception):
    """No token within the allowed wait; ``retry_after`` says when one would be free."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit: next token in {retry_after:.1f}s")
        self.retry_after = retry_after


def bucket_key(phone_number_id: str, name: str = "openai") -> str:
    """The Redis key of an agent's bucket."""
    return f"released:ratelimit:{name}:{phone_number_id}"


class TokenBucket:
    """A token bucket of ``rate`` tokens per second holding at most ``capacity`` (the burst;
    default ``max(1, rate)``), stored in Redis under ``key``.

    ``redis`` is a ``redis.asyncio.Redis`` client (of the event loop that uses the bucket).
    """

    def __init__(
        self,
        redis: Any,
        key: str,
        rate: float,
        capacity: float | None = None,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.redis = redis
        self.key = key
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(1.0, rate))
        self.max_wait = max_wait
        self._script = redis.register_script(BUCKET_SCRIPT)
        self._penalty = redis.register_script(PENALTY_SCRIPT)

    async def reserve(self, tokens: float = 1.0, max_wait: float | None = None) -> float:
        """Reserve ``tokens`` and return how long to wait before using them (0: now).

        Raises :class:`RateLimitTimeout` (reserving nothing) when that wait exceeds
        ``max_wait``.
        """
        limit = self.max_wait if max_wait is None else max_wait
        granted, wait = await self._script(
            keys=[self.key], args=[self.rate, self.capacity, tokens, limit]
        )
        seconds = float(wait.decode() if isinstance(wait, bytes) else wait)
        if not int(granted):
            raise RateLimitTimeout(seconds)
        return seconds

    async def acquire(self, tokens: float = 1.0, max_wait: float | None = None) -> float:
        """Wait until ``tokens`` are available and take them; return the seconds waited."""
        wait = await self.reserve(tokens, max_wait)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


    async def penalize(self, seconds: float | None = None) -> float:
        """Pause the bucket: nobody gets a token for ``seconds`` (default
        :data:`DEFAULT_PENALTY`) from now. Returns the seconds until the next token."""
        pause = DEFAULT_PENALTY if seconds is None or seconds <= 0 else float(seconds)
        wait = await self._penalty(keys=[self.key], args=[self.rate, self.capacity, pause])
        return float(wait.decode() if isinstance(wait, bytes) else wait)


def openai_bucket(settings: Settings, redis: Any) -> TokenBucket:
    """The agent's OpenAI bucket: ``OPENAI_RATE_LIMIT_PER_SECOND`` for its phone number id."""
    return TokenBucket(
        redis,
        bucket_key(settings.phone_number_id),
        settings.openai_rate_limit_per_second,
    )


def user_bucket(settings: Settings, redis: Any, user_key: str | int) -> TokenBucket:
    """One user's bucket (``user_key``: their conversation id): ``USER_RATE_LIMIT_PER_MINUTE``
    with bursts of ``USER_RATE_LIMIT_BURST``."""
    return TokenBucket(
        redis,
        bucket_key(f"{settings.phone_number_id}:{user_key}", "user"),
        settings.user_rate_limit_per_minute / 60.0,
        float(settings.user_rate_limit_burst),
    )
