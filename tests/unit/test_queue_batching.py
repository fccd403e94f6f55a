"""Claim-and-push of many webhooks at once: one pipelined round trip, each still exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis as sync_redis

from bot.queue import CELERY_QUEUE, TaskPublisher, enqueue_message_once
from bot.whatsapp.events import InboundMessage

PN = "100000000000001"


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + "/12"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def message(i: int) -> InboundMessage:
    return InboundMessage(
        wamid=f"wamid.B{i}", phone_number_id=PN, wa_id="1", kind="text", text="hi"
    )


async def enqueue_all(url: str, ids: list[int]) -> list[str | None]:
    publisher = TaskPublisher(url)
    try:
        return await asyncio.gather(*(enqueue_message_once(message(i), publisher) for i in ids))
    finally:
        await publisher.aclose()


def test_concurrent_webhooks_share_round_trips_and_queue_each_message_once(url: str) -> None:
    ids = [i % 120 for i in range(300)]  # 120 messages, most delivered two or three times
    results = asyncio.run(enqueue_all(url, ids))
    queued = [r for r in results if r is not None]
    assert len(queued) == 120 == len(set(queued))
    assert sync_redis.Redis.from_url(url).llen(CELERY_QUEUE) == 120
    # Which delivery won does not matter; that every message won exactly once does.
    winners = {ids[n] for n, r in enumerate(results) if r is not None}
    assert winners == set(range(120))


def test_a_redis_that_forgot_the_script_still_queues(url: str) -> None:
    async def scenario() -> tuple[str | None, str | None]:
        publisher = TaskPublisher(url)
        try:
            first = await enqueue_message_once(message(1), publisher)
            await publisher.redis.script_flush()  # type: ignore[union-attr]  # as after a restart
            second = await enqueue_message_once(message(2), publisher)
            return first, second
        finally:
            await publisher.aclose()

    first, second = asyncio.run(scenario())
    assert first and second
    assert sync_redis.Redis.from_url(url).llen(CELERY_QUEUE) == 2


def test_a_broken_connection_fails_every_waiting_webhook(url: str) -> None:
    async def scenario() -> list[BaseException | str | None]:
        publisher = TaskPublisher("redis://127.0.0.1:1/0")  # nothing listens there
        try:
            return await asyncio.gather(
                *(enqueue_message_once(message(i), publisher) for i in range(5)),
                return_exceptions=True,
            )
        finally:
            await publisher.aclose()

    results = asyncio.run(scenario())
    assert all(isinstance(r, Exception) for r in results)
