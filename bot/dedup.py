"""De-duplication of Meta's webhook redeliveries by message id (wamid), in Redis.

Meta delivers a webhook at least once: after a timeout or a non-200 answer it sends the same
message again, for up to seven days. The web tier claims each wamid with ``SET key 1 NX EX
<7 days>`` before it enqueues the message, so only the first delivery is processed. The key is
prefixed by the phone number id, so agents sharing a Redis never collide. When enqueueing fails
after the claim, :func:`release` deletes the key so that Meta's next redelivery is processed.

A claim says whether its message is still being handled (``1``) or finished (:data:`DONE`): the
worker marks it once it has deleted the message's inbox row for good (:func:`mark_done`). A
redelivery that arrives after that stores the row again, and the web tier deletes it again only
for claims that say so (:func:`finished`). A redelivery that arrives while the message is still
queued, or while a copy of the same delivery is being claimed by another request, leaves the row
to the worker: deleting it then would lose the message.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

#: How long a wamid is remembered: Meta retries a webhook for up to seven days.
DEDUP_TTL_SECONDS = 7 * 24 * 3600
KEY_PREFIX = "released:seen"
#: The value of a claim whose message was handled and whose inbox row is gone.
DONE = "done"


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


async def mark_done(redis: Redis, phone_number_id: str, wamids: Iterable[str]) -> None:
    """Mark the claims of ``wamids`` finished (their inbox rows are deleted for good); keeps
    each claim's expiry, and creates no claim that does not exist."""
    keys = [dedup_key(phone_number_id, wamid) for wamid in wamids]
    if not keys:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.set(key, DONE, xx=True, keepttl=True)
        await pipe.execute()


async def finished(redis: Redis, claims: Iterable[tuple[str, str]]) -> set[str]:
    """The wamids among ``claims`` (phone number id, wamid) whose message is finished
    (:func:`mark_done`); a message still queued or being handled is not among them."""
    pairs = list(claims)
    if not pairs:
        return set()
    values = await redis.mget([dedup_key(phone, wamid) for phone, wamid in pairs])
    return {
        wamid
        for (_, wamid), value in zip(pairs, values, strict=True)
        if value in (DONE, DONE.encode())
    }
