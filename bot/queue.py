"""Publishing the worker's Celery tasks from the async web tier, without blocking its loop.

The web tier never imports ``bot.tasks`` (the worker's Celery app and its dependencies). It
publishes three tasks by name, each with one positional argument as JSON:

- ``bot.tasks.process_message({"inbox": wamid})`` (``InboxRef``): the message itself was stored
  in the database's inbox first (``bot.storage.ingest``), so its text never reaches Redis;
- ``bot.tasks.record_status(StatusUpdate.model_dump(mode="json"))``;
- ``bot.tasks.process_echo({"inbox": wamid})``: a message the business sent from the WhatsApp
  Business app (``smb_message_echoes``), stored and de-duplicated by wamid like messages.

How: for a Redis broker (``redis://``, ``rediss://``, ``unix://``; the normal case) the message
is written with the async Redis client exactly as Celery's ``send_task`` and kombu's Redis
transport write it: one ``LPUSH`` of kombu's JSON envelope onto the list named after the queue
(``celery``), whose base64 body is Celery's task protocol v2 ``[args, kwargs, embed]`` and whose
``headers`` carry the task name and id. This is one non-blocking round trip, where
``send_task`` would block the event loop on a synchronous connection (or cost a thread hop per
message). The envelope was read from a real ``Celery.send_task`` on Celery/kombu 5.7 (see
``celery.app.amqp.AMQP.as_task_v2`` and ``kombu.transport.redis.Channel._put``), and the tests
check that a real Celery worker consumes it. Priority 0 maps to the plain list name, as in
kombu. Not supported on this path: kombu's ``global_keyprefix`` transport option (unused here).

:func:`enqueue_message_once` also de-duplicates by wamid (:mod:`bot.dedup`): when the broker
is the de-duplication Redis (one Redis per agent, the normal deployment), the ``SET NX EX``
claim and the ``LPUSH`` run in one Lua script, so a crash between them can neither lose a
message (claimed but never queued, then dropped as a duplicate on Meta's retry) nor queue it
twice.

For any other broker URL (amqp, sentinel...) :class:`TaskPublisher` falls back to a minimal
producer-only ``Celery("released")`` app and ``send_task`` in a worker thread
(``anyio.to_thread``); Celery is imported only then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import uuid
import weakref
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio.to_thread
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from bot.core.redis import connect_redis
from bot.dedup import DEDUP_TTL_SECONDS, dedup_key, first_seen, release
from bot.whatsapp.events import EchoMessage, InboundMessage, InboxRef, StatusUpdate

if TYPE_CHECKING:  # imported on first use only: the web tier with a Redis broker never needs it
    from celery import Celery

#: Celery's default queue, which the worker (``released-worker``) consumes.
CELERY_QUEUE = "celery"
PROCESS_MESSAGE_TASK = "bot.tasks.process_message"
RECORD_STATUS_TASK = "bot.tasks.record_status"
PROCESS_ECHO_TASK = "bot.tasks.process_echo"

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

#: Claim a wamid and queue its task in one atomic step: KEYS = (claim key, queue list),
#: ARGV = (TTL seconds, task message). Returns 1 when queued, 0 for a duplicate. Redis does not
#: roll a script back on error, so a failed push deletes the claim before returning the error.
_CLAIM_AND_PUSH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local pushed = redis.pcall('LPUSH', KEYS[2], ARGV[2])
if type(pushed) == 'table' and pushed.err then
  redis.call('DEL', KEYS[1])
  return pushed
end
return 1
"""
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"

#: One message waiting to be claimed and pushed: claim key, TTL, envelope, the caller's future.
_PendingClaim = tuple[str, int, str, "asyncio.Future[int]"]


def build_task_message(
    name: str,
    args: list[Any] | tuple[Any, ...],
    *,
    task_id: str | None = None,
    queue: str = CELERY_QUEUE,
    argsrepr: str | None = None,
) -> dict[str, Any]:
    """The kombu envelope of a Celery task message (protocol v2), as the Redis list holds it.

    ``argsrepr`` is what Celery shows for the arguments in events and monitoring tools; by
    default a short summary rather than the message text, so user content stays out of them.
    """
    task_id = task_id or str(uuid.uuid4())
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([list(args), {}, embed]).encode("utf-8")
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr if argsrepr is not None else f"<{len(args)} args>",
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


class TaskPublisher:
    """Publishes Celery tasks by name to the broker at ``broker_url`` (see the module doc).

    Pass ``redis`` to reuse an existing async client for a Redis broker; the publisher then
    does not close it. Create one per event loop (the web app keeps one in its lifespan).
    """

    def __init__(
        self, broker_url: str, *, redis: Redis | None = None, queue: str = CELERY_QUEUE
    ) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self._is_redis = urlsplit(broker_url).scheme in _REDIS_SCHEMES
        self._owns_redis = redis is None and self._is_redis
        self._redis = redis
        if self._is_redis and redis is None:
            self._redis = connect_redis(broker_url)
        # Claims waiting for the next pipelined round trip, the flushes under way, and the
        # SHA of the claim-and-push script once Redis has it (EVALSHA).
        self._pending: list[_PendingClaim] = []
        self._flushes: set[asyncio.Future[None]] = set()
        self._script_sha: str | None = None

    @property
    def redis(self) -> Redis | None:
        """The async Redis client of a Redis broker (``None`` for other brokers)."""
        return self._redis

    @property
    def uses_redis(self) -> bool:
        """Whether tasks go out with the async Redis client (else through Celery in a thread)."""
        return self._redis is not None

    @cached_property
    def _celery(self) -> Celery:
        from celery import Celery

        return Celery("released", broker=self.broker_url, set_as_current=False)

    async def send_task(
        self, name: str, args: list[Any] | tuple[Any, ...], *, argsrepr: str | None = None
    ) -> str:
        """Publish task ``name`` with positional ``args``; returns the task id."""
        task_id = str(uuid.uuid4())
        if self._redis is not None:
            message = build_task_message(
                name, args, task_id=task_id, queue=self.queue, argsrepr=argsrepr
            )
            await self._redis.lpush(self.queue, json.dumps(message))
            return task_id
        send = partial(
            self._celery.send_task, name, args=list(args), task_id=task_id, queue=self.queue
        )
        await anyio.to_thread.run_sync(send)
        return task_id

    async def send_task_once(
        self,
        name: str,
        args: list[Any] | tuple[Any, ...],
        *,
        claim_key: str,
        ttl_seconds: int,
        argsrepr: str | None = None,
    ) -> str | None:
        """Publish unless ``claim_key`` exists, claiming it in the same atomic step (a Lua
        script: ``SET NX EX`` then ``LPUSH``). Returns the task id, or ``None`` for a duplicate.
        Redis brokers only."""
        if self._redis is None:
            raise RuntimeError("send_task_once needs a Redis broker")
        task_id = str(uuid.uuid4())
        message = build_task_message(
            name, args, task_id=task_id, queue=self.queue, argsrepr=argsrepr
        )
        pushed = await self._claim_and_push_batched(claim_key, ttl_seconds, json.dumps(message))
        return task_id if pushed == 1 else None

    async def _claim_and_push_batched(self, claim_key: str, ttl_seconds: int, body: str) -> int:
        """Run the claim-and-push script for one message, sharing one pipelined round trip with
        the other webhooks this event loop is handling at the same moment.

        A webhook alone goes out on the next loop iteration by itself; under load dozens share
        a write and a read, which is where the web tier's time went (tests/bench/README.md).
        Each message is still its own atomic script run.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._pending.append((claim_key, ttl_seconds, body, future))
        if len(self._pending) == 1:
            # After the handlers that are ready in this iteration have queued theirs too.
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_PendingClaim]) -> None:
        assert self._redis is not None
        try:
            results = await self._run_claims(batch)
        except Exception as exc:  # the connection failed: every caller sees it (and answers 503)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(int(result))

    async def _run_claims(self, batch: list[_PendingClaim]) -> list[Any]:
        assert self._redis is not None
        for attempt in range(2):
            if self._script_sha is None:
                self._script_sha = str(await self._redis.script_load(_CLAIM_AND_PUSH))
            pipe = self._redis.pipeline(transaction=False)
            for claim_key, ttl_seconds, body, _ in batch:
                pipe.evalsha(self._script_sha, 2, claim_key, self.queue, ttl_seconds, body)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                # Redis restarted and forgot the script; nothing ran for those: load, run again.
                self._script_sha = None
                retry = [item for item, r in zip(batch, results, strict=True)
                         if isinstance(r, NoScriptError)]
                again = iter(await self._run_claims(retry))
                return [next(again) if isinstance(r, NoScriptError) else r for r in results]
            return results
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close what this publisher opened."""
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()
        if "_celery" in self.__dict__:
            await anyio.to_thread.run_sync(self._celery.close)


_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TaskPublisher] = (
    weakref.WeakKeyDictionary()
)


def default_publisher() -> TaskPublisher:
    """A publisher for ``get_settings().broker_url``, one per running event loop."""
    from bot.core.config import get_settings

    loop = asyncio.get_running_loop()
    publisher = _defaults.get(loop)
    if publisher is None:
        publisher = _defaults[loop] = TaskPublisher(get_settings().broker_url)
    return publisher


def inbox_ref(wamid: str) -> dict[str, str]:
    """The argument of a message's or an echo's task: the wamid of its inbox row."""
    return InboxRef(inbox=wamid).model_dump()


async def enqueue_message(msg: InboundMessage, publisher: TaskPublisher | None = None) -> str:
    """Queue ``bot.tasks.process_message`` for ``msg``, stored in the inbox already; returns
    the Celery task id."""
    publisher = publisher or default_publisher()
    return await publisher.send_task(
        PROCESS_MESSAGE_TASK,
        [inbox_ref(msg.wamid)],
        argsrepr=f"(<InboundMessage {msg.wamid} kind={msg.kind}>,)",
    )


async def enqueue_message_once(
    msg: InboundMessage,
    publisher: TaskPublisher | None = None,
    *,
    dedup_redis: Redis | None = None,
    ttl_seconds: int = DEDUP_TTL_SECONDS,
) -> str | None:
    """Queue ``bot.tasks.process_message`` for ``msg`` (stored in the inbox already) unless its
    wamid was already seen.

    Returns the task id, or ``None`` for a redelivery (see :mod:`bot.dedup`). When the
    de-duplication Redis is the broker's own client (the default deployment: one Redis, and
    ``dedup_redis`` omitted or the same client), the claim and the push are one atomic Lua
    script, so a crash can neither lose a message nor queue it twice. Otherwise the wamid is
    claimed first and the claim released again if publishing fails.
    """
    return await _enqueue_once(
        PROCESS_MESSAGE_TASK, msg.phone_number_id, msg.wamid, [inbox_ref(msg.wamid)],
        f"(<InboundMessage {msg.wamid} kind={msg.kind}>,)",
        publisher, dedup_redis, ttl_seconds,
    )


async def enqueue_echo_once(
    echo: EchoMessage,
    publisher: TaskPublisher | None = None,
    *,
    dedup_redis: Redis | None = None,
    ttl_seconds: int = DEDUP_TTL_SECONDS,
) -> str | None:
    """Queue ``bot.tasks.process_echo`` for ``echo`` unless its wamid was already seen (as
    :func:`enqueue_message_once`)."""
    return await _enqueue_once(
        PROCESS_ECHO_TASK, echo.phone_number_id, echo.wamid, [inbox_ref(echo.wamid)],
        f"(<EchoMessage {echo.wamid} kind={echo.kind}>,)",
        publisher, dedup_redis, ttl_seconds,
    )


async def _enqueue_once(
    task: str,
    phone_number_id: str,
    wamid: str,
    args: list[Any],
    argsrepr: str,
    publisher: TaskPublisher | None,
    dedup_redis: Redis | None,
    ttl_seconds: int,
) -> str | None:
    publisher = publisher or default_publisher()
    if publisher.redis is not None and dedup_redis in (None, publisher.redis):
        return await publisher.send_task_once(
            task,
            args,
            claim_key=dedup_key(phone_number_id, wamid),
            ttl_seconds=ttl_seconds,
            argsrepr=argsrepr,
        )
    if dedup_redis is None:
        raise ValueError("dedup_redis is required when the broker is not Redis")
    if not await first_seen(dedup_redis, phone_number_id, wamid, ttl_seconds=ttl_seconds):
        return None
    try:
        return await publisher.send_task(task, args, argsrepr=argsrepr)
    except BaseException:
        with contextlib.suppress(Exception):
            await release(dedup_redis, phone_number_id, wamid)
        raise


async def enqueue_status(s: StatusUpdate, publisher: TaskPublisher | None = None) -> str:
    """Queue ``bot.tasks.record_status`` for ``s``; returns the Celery task id."""
    publisher = publisher or default_publisher()
    return await publisher.send_task(
        RECORD_STATUS_TASK,
        [s.model_dump(mode="json")],
        argsrepr=f"(<StatusUpdate {s.wamid} {s.status}>,)",
    )
