"""De-duplication of Meta's webhook redeliveries by message id (wamid), in Redis.

Meta delivers a webhook at least once: after a timeout or a non-200 answer it sends the same
message again, for up to seven days. The web tier claims each wamid with ``SET key 1 NX EX
<7 days>`` before it enqueues the message, so only the first delivery is processed. The key is
prefixed by the phone number id, so agents sharing a Redis never collide. When enqueueing fails
after the claim, :func:`release` deletes the key so that Meta's next redelivery is processed.
"""

from __future__ import annotations

from redis.asyncio import Redis

#: How long a wamid is remembered: Meta retries a webhook for up to seven days.
DEDUP_TTL_SECONDS = 7 * 24 * 3600
KEY_PREFIX = "released:seen"


def dedup_key(phone_number_id: str, wamid: str) -> str:
    """The Redis key that marks ``wamid`` as seen for ``phone_number_id``."""
    return f"{KEY_PREFIX}:{phone_number_id}:{wamid}"


async def first_seen(
    redis: Redis,
    phone_number_id: str,
    wamid: str,
    *,
    ttl_seconds: int = DEDUP_TTL_SECONDS,
) -> bool:
    """True when this is the first time ``wamid`` is seen (and claim it); False for duplicates."""
    claimed = await redis.set(dedup_key(phone_number_id, wamid), "1", ex=ttl_seconds, nx=True)
    return bool(claimed)


async def release(redis: Redis, phone_number_id: str, wamid: str) -> None:
    """Forget ``wamid``, so a redelivery is processed (used when enqueueing failed)."""
    await redis.delete(dedup_key(phone_number_id, wamid))
