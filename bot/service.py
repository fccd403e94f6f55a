"""What the bot does with one message: store it, answer it once, send the answer, store that.

:func:`handle_message` is the body of the ``bot.tasks.process_message`` task, written as async
code over a :class:`Runtime` (the clients of one event loop). It never retries by itself: when
an API asks to slow down or fails transiently it raises :class:`RetryLater`, and when the
sender is over their per-user rate it raises :class:`Deferred`; the task schedules the next
attempt. Guarantees:

- **One person, one conversation.** The message is stored under the user's conversation, found
  by any name Meta gives them (phone number, BSUID, parent BSUID; ``bot.storage.repository``);
  identity-change system messages are applied. The reply goes to the phone number the message
  came from, else to the BSUID (``recipient``).
- **Once.** The inbound message is stored idempotently (by wamid). Its reply is claimed in the
  database (one outbound row per inbound wamid) before it is sent, and a reply already sent (or
  failed for good) is never sent again, so a redelivered task or a duplicate webhook sends
  nothing. A retry after a failed send re-sends the stored text without asking the model again.
  Two runs of one task at once (Redis redelivers a task whose worker is still running it once
  the visibility timeout passes) hold the same claim: a short Redis lock per message lets one
  of them send. The one window left is a crash between Meta accepting the message and the
  database recording it: the retry then sends again (at least once beats never).
- **A sensible reply for every kind** (``bot.replies.plan_reply``, ``docs/messages.md``): text
  goes to the model, other kinds get a fixed reply or none. Messages older than Meta's 7-day
  redelivery window are not answered again (nor stored); older than WhatsApp's 24-hour
  customer-service window they get no free text (Meta would refuse it with 131047): the
  ``REENGAGEMENT_TEMPLATE`` when one is set, else a failed reply recording why.
- **Never silent.** When the model keeps failing (``model_fallback``), or fails in a way
  retrying cannot fix, or answers ``incomplete``, the answer comes from the FAQs or
  ``FALLBACK_MESSAGE``.
- **No model calls for answers that cannot be sent.** While Meta refuses the account (token,
  permission, policy; ``bot.account``) messages are held, not answered; they are answered when
  the account works again, or recorded as failed with the reason once their window closed.
- **Fair.** A user's model answers are paced by their own token bucket before they take one of
  the agent's, so one user flooding the bot delays the others by at most their burst.
- **Failures recorded.** A send that fails for good (a bad recipient...) or still fails on the
  last attempt is stored as ``failed`` with Meta's code.
- **Never over a person.** A conversation held by a person (``bot.handover``) gets no answer:
  the message is stored and counted, and a bot reply still waiting to be sent is dropped
  (recorded as failed with the reason). With ``HANDOVER_ENABLED`` the bot hands over itself on
  a user's request (phrases, no model call; or the model's tool), on its
  ``HANDOVER_AFTER_FALLBACKS``-th fallback in a row and on an order: it holds the conversation,
  sends ``HANDOVER_MESSAGE`` and the runtime's ``on_handover`` queues the notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import httpx2 as httpx
from redis.exceptions import RedisError

from bot import dedup
from bot.account import AccountHealth, AccountProblem
from bot.core.config import Settings
from bot.core.metrics import (
    ANSWERS_DEFERRED,
    HANDOVERS,
    MESSAGES_HELD,
    MESSAGES_UNANSWERED,
    META_ACCOUNT_UNHEALTHY,
)
from bot.core.redis import connect_redis
from bot.handover import (
    DELIVERY_HEADER,
    NOTIFY_MESSAGES,
    SIGNATURE_HEADER,
    Reason,
    asks_for_person,
    handover_text,
    message_entry,
    notification_body,
    signature,
)
from bot.llm.client import Answer, ModelError, Turn, answer, fallback_answer, make_client
from bot.llm.faqs import FAQ, FAQError, faqs_for
from bot.llm.ratelimit import RateLimitTimeout, TokenBucket, openai_bucket, user_bucket
from bot.llm.responses import ResponsesClient
from bot.replies import Plan, handover_on_order, plan_reply, text_only_reply
from bot.storage import holds, inbox
from bot.storage import repository as repo
from bot.storage.db import session_scope
from bot.storage.models import Conversation, Direction, Message, MessageStatus
from bot.whatsapp.client import GraphClient, GraphError, GraphPermanentError, GraphRetryableError
from bot.whatsapp.events import EchoMessage, InboundMessage, StatusUpdate
from released.providers.meta import (
    REDELIVERY_WINDOW_SECONDS,
    REENGAGEMENT_CODE,
    SERVICE_WINDOW_SECONDS,
    ErrorKind,
)

__all__ = [
    "Deferred",
    "MessageResult",
    "Outcome",
    "RetryLater",
    "Runtime",
    "countdown_cap",
    "create_runtime",
    "handle_message",
    "text_only_reply",
]

log = logging.getLogger(__name__)

#: A per-user wait up to this long is slept in place; longer ones put the answer back.
INLINE_USER_WAIT = 1.0
#: ``error_title`` of a message not answered because the 24-hour window had closed.
OUTSIDE_WINDOW_REASON = (
    "not answered: more than 24 hours since the user's message, only a template may be sent "
    "(set REENGAGEMENT_TEMPLATE)"
)


class Outcome(StrEnum):
    """How :func:`handle_message` ended."""

    REPLIED = "replied"
    DUPLICATE = "duplicate"  # the reply was already sent (or is being sent by another worker)
    NOT_ANSWERED = "not_answered"  # stickers, reactions, group messages... (``reason``)
    HELD = "held"  # Meta refuses the account: answered when it works again
    FAILED = "failed"  # the send failed for good, or could not be made; recorded


@dataclass(frozen=True, slots=True)
class MessageResult:
    """The outcome, and for replies where the answer came from and Meta's wamid."""

    outcome: Outcome
    source: str | None = None
    reply_wamid: str | None = None
    error_code: int | None = None
    reason: str | None = None
    #: Set when this message handed the conversation to a person.
    handover: Handover | None = None


@dataclass(frozen=True, slots=True)
class Handover:
    """A conversation the bot handed to a person: what the notification is about."""

    delivery_id: str
    conversation_id: int
    reason: str
    held_until: datetime


#: ``error_title`` of a bot reply not sent because a person took the conversation over.
TAKEN_OVER_REASON = "not sent: a person took the conversation over"
#: ``Message.source`` of the message the bot sends when it hands over.
HANDOVER_SOURCE: Literal["handover"] = "handover"


class RetryLater(Exception):
    """A transient failure: the task should run again later (``retry_after`` seconds when the
    server said so). ``api`` is ``openai``, ``graph`` or ``ratelimit``."""

    def __init__(self, api: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{api}: {reason}")
        self.api = api
        self.retry_after = retry_after


class Deferred(Exception):
    """The sender is over their per-user rate: a slot ``seconds`` from now is reserved for
    this answer; run the task again then (it does not count as a retry)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"per-user rate limit: answer in {seconds:.1f}s")
        self.seconds = seconds


@dataclass
class Runtime:
    """The clients one event loop uses (HTTP connection pools and Redis connections belong to
    the loop that opened them, so each worker process builds one in its own loop)."""

    settings: Settings
    graph: GraphClient
    openai: ResponsesClient
    redis: Any
    bucket: TokenBucket
    account: AccountHealth
    #: Called (awaited) when a message hands a conversation over: the worker queues the
    #: notification there. Its failures are logged, never the answer's.
    on_handover: Callable[[Handover], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        """Close every client."""
        await self.graph.aclose()
        await self.openai.close()
        await self.redis.aclose()


def create_runtime(
    settings: Settings,
    *,
    graph: GraphClient | None = None,
    openai_client: ResponsesClient | None = None,
    redis: Any = None,
) -> Runtime:
    """Build the clients for ``settings`` (call it inside the loop that will use them)."""
    redis = redis or connect_redis(settings.redis_url)
    return Runtime(
        settings=settings,
        graph=graph or GraphClient(settings),
        openai=openai_client or make_client(settings),
        redis=redis,
        bucket=openai_bucket(settings, redis),
        account=AccountHealth(redis, settings.phone_number_id),
    )


def countdown_cap(settings: Settings) -> float:
    """The longest a task may wait before its next run: an ETA task sits unacknowledged in
    Redis, so it stays under half the visibility timeout (and 5 minutes)."""
    return min(300.0, settings.celery_visibility_timeout * 0.5)


def safety_identifier(settings: Settings, conversation_id: int) -> str:
    """A stable, salted hash of the user (their conversation, which outlives changes of phone
    number or BSUID) for OpenAI's ``safety_identifier``: it tells users apart without naming
    them."""
    salt = (
        settings.safety_identifier_salt.get_secret_value()
        if settings.safety_identifier_salt is not None
        else settings.secret("openai_api_key")
    )
    digest = hmac.new(
        salt.encode("utf-8"),
        f"{settings.phone_number_id}:{conversation_id}".encode(),
        hashlib.sha256,
    )
    return digest.hexdigest()[:32]


def _faqs(settings: Settings) -> list[FAQ]:
    try:
        return faqs_for(settings)
    except FAQError as exc:
        log.error("cannot load FAQs, answering without them: %s", exc)
        return []


def _turns(history: list[Message]) -> list[Turn]:
    return [
        Turn("user" if m.direction == Direction.INBOUND.value else "assistant", m.text or "")
        for m in history
        if m.text
    ]


def _age(msg: InboundMessage) -> float:
    return (datetime.now(UTC) - msg.timestamp).total_seconds()


async def _take_user_token(rt: Runtime, conversation_id: int) -> bool:
    """Take the user's token; ``False`` when their backlog is too long (answer without the
    model). Raises :class:`Deferred` when their slot is later than :data:`INLINE_USER_WAIT`."""
    settings = rt.settings
    bucket = user_bucket(settings, rt.redis, conversation_id)
    limit = min(settings.user_max_defer_seconds, countdown_cap(settings))
    try:
        wait = await bucket.reserve(max_wait=limit)
    except RateLimitTimeout:
        return False
    except RedisError as exc:  # the limiter must not silence the bot
        log.warning("per-user rate limiter unavailable, answering without it: %s", exc)
        return True
    if wait > INLINE_USER_WAIT:
        ANSWERS_DEFERRED.inc()
        raise Deferred(wait)
    if wait > 0:
        await asyncio.sleep(wait)
    return True


async def compose_answer(
    question: str,
    history: list[Message],
    rt: Runtime,
    *,
    model_fallback: bool,
    conversation_id: int,
    user_slot: bool = False,
) -> Answer:
    """The model's reply to ``question``, or a fallback.

    Raises :class:`RetryLater` for transient model or rate-limit failures unless
    ``model_fallback`` (then the FAQs or the fallback message answer), and :class:`Deferred`
    when the user is over their rate (``user_slot``: this run already holds a reserved slot).
    """
    settings = rt.settings
    faqs = _faqs(settings)
    if not user_slot and not await _take_user_token(rt, conversation_id):
        log.info("conversation %s is over its rate with a long backlog: answering from the FAQs",
                 conversation_id)
        return fallback_answer(question, faqs, settings)

    async def take_token() -> None:
        try:
            await rt.bucket.acquire()
        except RedisError as exc:  # the limiter must not silence the bot
            log.warning("rate limiter unavailable, calling OpenAI without it: %s", exc)

    async def slow_down(retry_after: float | None) -> None:
        try:
            await rt.bucket.penalize(retry_after)
        except RedisError as exc:
            log.warning("rate limiter unavailable, cannot slow down: %s", exc)

    try:
        return await answer(
            question,
            _turns(history),
            faqs,
            settings,
            client=rt.openai,
            fallback_on_error=model_fallback,
            before_request=take_token,
            on_rate_limited=slow_down,
            safety_identifier=safety_identifier(settings, conversation_id),
        )
    except ModelError as exc:
        raise RetryLater("openai", str(exc), exc.retry_after) from exc
    except RateLimitTimeout as exc:
        if model_fallback:
            return fallback_answer(question, faqs, settings)
        raise RetryLater("ratelimit", str(exc), exc.retry_after) from exc


async def _mark_read(rt: Runtime, wamid: str, *, typing: bool) -> AccountProblem | None:
    """Mark ``wamid`` read (with the typing indicator when an answer is coming); returns the
    account problem when Meta refused the account for it."""
    try:
        await rt.graph.mark_read(wamid, typing=typing)
    except GraphError as exc:  # blue ticks are nice to have, never worth a retry
        log.info("mark as read failed for %s: %s", wamid, exc)
        if exc.account_problem:
            await _flag_account(rt, exc)
            return await _problem_or_none(rt)
    return None


async def _problem_or_none(rt: Runtime) -> AccountProblem | None:
    try:
        return await rt.account.problem()
    except RedisError:
        return None


async def _flag_account(rt: Runtime, exc: GraphError) -> None:
    META_ACCOUNT_UNHEALTHY.labels(kind=exc.kind.value).inc()
    try:
        if await rt.account.flag(exc.info):
            log.error("Meta refuses the account (%s): holding messages until it works again",
                      exc)
    except RedisError as err:
        log.warning("cannot record the account problem in Redis: %s", err)


async def account_problem(rt: Runtime) -> AccountProblem | None:
    """The account problem in force, after probing the account when it is this worker's turn
    (``None``: the account works, or Redis cannot tell)."""
    try:
        problem = await rt.account.problem()
        if problem is None:
            return None
        if not await rt.account.claim_probe(rt.settings.meta_health_probe_seconds):
            return problem
    except RedisError as exc:
        log.warning("cannot read the account health from Redis: %s", exc)
        return None
    if await probe_account(rt):
        return None
    return await rt.account.problem()


async def probe_account(rt: Runtime) -> bool:
    """Read the phone number with the token; lower the flag when that works. ``True`` when the
    account works."""
    try:
        await rt.graph.check_phone_number()
    except GraphError as exc:
        if exc.account_problem:
            await _flag_account(rt, exc)
            return False
        if exc.retryable:  # Meta is down, not the account: keep the flag as it is
            return await rt.account.problem() is None
        log.info("account probe answered %s; taking the account as working", exc)
    if await rt.account.clear():
        log.warning("Meta accepts the account again: held messages are answered now")
    return True


async def _hold(
    rt: Runtime, msg: InboundMessage, problem: AccountProblem, reply: Message | None = None
) -> MessageResult:
    """Hold ``msg`` until the account works; a stored ``reply`` is released from this task's
    claim, so that whichever task picks the message up then sends it."""
    if reply is not None:
        async with session_scope(rt.settings) as session:
            await repo.release_claim(session, reply)
    await rt.account.hold(msg)
    MESSAGES_HELD.labels(outcome="held").inc()
    log.info("message %s held: %s", msg.wamid, problem.reason())
    return MessageResult(Outcome.HELD, error_code=problem.code, reason="account_unhealthy")


async def handle_message(
    msg: InboundMessage,
    rt: Runtime,
    *,
    model_fallback: bool = False,
    final_attempt: bool = False,
    claim_id: str | None = None,
    user_slot: bool = False,
) -> MessageResult:
    """Store ``msg``, answer it once and send the answer quoting it; see the module doc.

    ``model_fallback``: do not wait for the model any more (answer from the FAQs on failure).
    ``final_attempt``: a transient send failure is recorded as failed instead of retried.
    ``claim_id``: who is answering (the Celery task id, stable across its retries and
    redeliveries); a reply pending under another claim is left to its owner until the claim is
    older than ``CELERY_VISIBILITY_TIMEOUT``.
    ``user_slot``: this run holds a slot of the user's bucket reserved by an earlier run.
    Raises :class:`RetryLater` on transient failures and :class:`Deferred` (see there).
    """
    settings = rt.settings
    age = _age(msg)
    if age > REDELIVERY_WINDOW_SECONDS:
        # Meta stopped redelivering this long ago: a replay, or a queue restored from an old
        # backup. Answering (or storing) it now would surprise the user.
        MESSAGES_UNANSWERED.labels(reason="too_old").inc()
        log.warning("message %s is %.0f days old: not answered", msg.wamid, age / 86400)
        return MessageResult(Outcome.NOT_ANSWERED, reason="too_old")
    if not msg.address:
        log.error("message %s names no sender: stored, not answered", msg.wamid)
    async with session_scope(settings) as session:
        record = await repo.record_inbound(session, msg)
        if msg.kind == "revoke" and msg.original_wamid:
            await repo.erase_text(session, msg.original_wamid)
        reply = await repo.find_reply(session, msg.wamid)
        if reply is not None and reply.status in repo.FINAL_REPLY_STATUSES:
            return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid, reply.error_code)
    conversation_id = record.conversation.id or 0
    if not msg.address:
        return MessageResult(Outcome.NOT_ANSWERED, reason="no_sender")
    if (reply is None or reply.source != HANDOVER_SOURCE) and await _held(
        settings, conversation_id, msg, reply, count=record.created
    ):
        return MessageResult(Outcome.NOT_ANSWERED, reason="held")

    handover: Handover | None = None
    if reply is None:
        plan = plan_reply(msg, settings)
        if plan.action == "none":
            MESSAGES_UNANSWERED.labels(reason=plan.reason).inc()
            if msg.kind == "sticker":  # blue ticks, no typing: nothing is coming
                await _mark_read(rt, msg.wamid, typing=False)
            return MessageResult(Outcome.NOT_ANSWERED, reason=plan.reason)
        if age > SERVICE_WINDOW_SECONDS:
            return await _outside_window(msg, rt, conversation_id, claim_id)
        problem = await account_problem(rt)
        if problem is not None:
            return await _hold(rt, msg, problem)
        problem = await _mark_read(rt, msg.wamid, typing=True)
        if problem is not None:
            return await _hold(rt, msg, problem)
        trigger = _trigger(msg, plan, settings)
        if trigger is not None:  # no model call: the user asked, or an order came
            text = plan.text if trigger is Reason.ORDER else handover_text(settings)
            result = Answer(text, HANDOVER_SOURCE)
        else:
            result = await _compose(msg, plan, rt, conversation_id, record.message.id,
                                    model_fallback=model_fallback, user_slot=user_slot)
            if result.source == HANDOVER_SOURCE:  # the model called its tool
                trigger = Reason.MODEL_REQUEST
                result = Answer(handover_text(settings), HANDOVER_SOURCE)
        async with session_scope(settings) as session:
            reply, claimed = await repo.record_outbound_pending(
                session,
                conversation_id,
                msg.wamid,
                result.text,
                source=result.source,
                claimed_by=claim_id,
            )
            taken_over = False
            if claimed and trigger is None and await holds.held_now(session, conversation_id):
                # A person took over while the answer was being composed (an echo came).
                await repo.mark_failed(session, reply, None, TAKEN_OVER_REASON)
                taken_over = True
            elif claimed:
                trigger, handover = await _after_answer(
                    session, settings, conversation_id, reply, trigger
                )
        if not claimed:  # another worker is answering this very message right now
            return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid)
        if taken_over:
            MESSAGES_UNANSWERED.labels(reason="held").inc()
            log.info("message %s: a person took the conversation over meanwhile; the answer "
                     "is not sent", msg.wamid)
            return MessageResult(Outcome.NOT_ANSWERED, reason="held")
        if handover is not None:
            await _handed_over(rt, handover)
    else:  # pending: an earlier attempt stored the answer but did not get it sent
        async with session_scope(settings) as session:
            mine = await repo.take_over_reply(
                session, reply, claim_id, timedelta(seconds=settings.celery_visibility_timeout)
            )
        if not mine:
            return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid)
        problem = await account_problem(rt)
        if problem is not None:
            if age > SERVICE_WINDOW_SECONDS:
                return await _fail_held(settings, reply, problem)
            return await _hold(rt, msg, problem, reply)

    sent = await _send(msg, reply, rt, final_attempt=final_attempt)
    if handover is not None:
        return MessageResult(sent.outcome, sent.source, sent.reply_wamid, sent.error_code,
                             sent.reason, handover)
    return sent


def _trigger(msg: InboundMessage, plan: Plan, settings: Settings) -> Reason | None:
    """A handover the message asks for without a model call (``HANDOVER_ENABLED`` only)."""
    if not settings.handover_enabled:
        return None
    if msg.kind == "order" and handover_on_order(settings):
        return Reason.ORDER
    if plan.action == "model" and asks_for_person(msg.text or plan.question, settings):
        return Reason.USER_REQUEST
    return None


async def _held(
    settings: Settings,
    conversation_id: int,
    msg: InboundMessage,
    reply: Message | None,
    *,
    count: bool,
) -> bool:
    """Whether a person holds the conversation: then the message is not answered (and
    counted when ``count``: stored by this run, not a redelivery), and a bot reply still
    pending is dropped (recorded as failed, with why)."""
    async with session_scope(settings) as session:
        if reply is None and count:
            held = await holds.note_held_message(session, conversation_id)
        elif reply is None:
            held = await holds.held_now(session, conversation_id)
        else:
            held = await holds.held_now(session, conversation_id)
            if held:
                await repo.mark_failed(session, reply, None, TAKEN_OVER_REASON)
    if held:
        MESSAGES_UNANSWERED.labels(reason="held").inc()
        log.info("message %s: the conversation is held by a person; not answered", msg.wamid)
    return held


async def _after_answer(
    session: Any,
    settings: Settings,
    conversation_id: int,
    reply: Message,
    trigger: Reason | None,
) -> tuple[Reason | None, Handover | None]:
    """Count fallbacks in a row (handing over instead of the N-th) and hold the conversation
    when the answer hands over; returns the trigger and the handover, if one started."""
    if trigger is None and reply.source in ("model", "faq", "fallback"):
        in_row = await holds.count_fallback(session, conversation_id, reply.source == "fallback")
        limit = settings.handover_after_fallbacks
        if reply.source == "fallback" and settings.handover_enabled and 0 < limit <= in_row:
            trigger = Reason.FALLBACKS
            reply.text = handover_text(settings)
            reply.source = HANDOVER_SOURCE
            session.add(reply)
            await session.flush()
    if trigger is None:
        return None, None
    until = datetime.now(UTC) + timedelta(seconds=settings.handover_hold_seconds)
    if not await holds.hold(session, conversation_id, reason=trigger.value, until=until):
        return trigger, None
    return trigger, Handover(uuid.uuid4().hex, conversation_id, trigger.value, until)


async def _handed_over(rt: Runtime, handover: Handover) -> None:
    """Count the handover and queue its notification (never failing the answer)."""
    HANDOVERS.labels(reason=handover.reason).inc()
    log.warning("conversation %s handed to a person (%s)", handover.conversation_id,
                handover.reason)
    if rt.on_handover is None:
        return
    try:
        await rt.on_handover(handover)
    except Exception as exc:
        log.error("cannot queue the handover notification of conversation %s: %r",
                  handover.conversation_id, exc)


async def _compose(
    msg: InboundMessage,
    plan: Plan,
    rt: Runtime,
    conversation_id: int,
    message_id: int | None,
    *,
    model_fallback: bool,
    user_slot: bool,
) -> Answer:
    if plan.action == "canned":
        return Answer(plan.text, "canned")
    async with session_scope(rt.settings) as session:
        history = await repo.history(
            session,
            conversation_id,
            rt.settings.history_turns,
            before_message_id=message_id,
            retention_days=rt.settings.retention_days,
        )
    return await compose_answer(
        plan.question,
        history,
        rt,
        model_fallback=model_fallback,
        conversation_id=conversation_id,
        user_slot=user_slot,
    )


#: Compare-and-delete: release the sending lock only when it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def _send(
    msg: InboundMessage, reply: Message, rt: Runtime, *, final_attempt: bool
) -> MessageResult:
    """Send the stored reply, one sender at a time.

    Two runs of one task can overlap: Redis hands an unacknowledged task to another worker
    once ``CELERY_VISIBILITY_TIMEOUT`` passes, also while a starved worker still runs it, and
    both runs hold the same claim. A short Redis lock per message makes the second run stand
    back (its copy ends as a duplicate); a sender that dies leaves the lock to expire, and its
    own redelivered task sends.
    """
    settings = rt.settings
    key = f"released:sending:{settings.phone_number_id}:{msg.wamid}"
    token = uuid.uuid4().hex
    ttl_ms = int((settings.graph_timeout_seconds + 10.0) * 1000)
    try:
        locked: bool | None = bool(await rt.redis.set(key, token, nx=True, px=ttl_ms))
    except RedisError as exc:  # the lock must not silence the bot
        log.warning("send lock unavailable, sending without it: %s", exc)
        locked = None
    if locked is False:
        log.info("reply to %s is being sent by another run of its task", msg.wamid)
        return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid)
    try:
        async with session_scope(settings) as session:
            current = await repo.find_reply(session, msg.wamid)
        if current is not None and current.status in repo.FINAL_REPLY_STATUSES:
            return MessageResult(Outcome.DUPLICATE, current.source, current.wamid)
        return await _send_now(msg, reply, rt, final_attempt=final_attempt)
    finally:
        if locked:
            with contextlib.suppress(RedisError):  # else it expires
                await rt.redis.register_script(_UNLOCK)(keys=[key], args=[token])


async def _send_now(
    msg: InboundMessage, reply: Message, rt: Runtime, *, final_attempt: bool
) -> MessageResult:
    settings = rt.settings
    try:
        if reply.kind == "template":
            sent = await rt.graph.send_template(
                msg.address,
                settings.reengagement_template or "",
                settings.reengagement_template_language or settings.language,
                reply_to=msg.wamid,
            )
        else:
            sent = await rt.graph.send_text(msg.address, reply.text or "", reply_to=msg.wamid)
    except GraphRetryableError as exc:
        if not final_attempt:
            raise RetryLater("graph", str(exc), exc.retry_after) from exc
        await _record_failed(settings, reply, exc)
        return MessageResult(Outcome.FAILED, reply.source, error_code=exc.code)
    except GraphPermanentError as exc:
        if exc.account_problem:
            await _flag_account(rt, exc)
            problem = await _problem_or_none(rt)
            if problem is not None:  # the stored answer is sent when the account works
                return await _hold(rt, msg, problem, reply)
        await _record_failed(settings, reply, exc)
        return MessageResult(Outcome.FAILED, reply.source, error_code=exc.code)
    async with session_scope(settings) as session:
        await repo.mark_sent(session, reply, sent.wamid)
    if await rt.account.clear():
        log.warning("Meta accepts the account again: held messages are answered now")
    return MessageResult(Outcome.REPLIED, reply.source, sent.wamid)


async def _outside_window(
    msg: InboundMessage, rt: Runtime, conversation_id: int, claim_id: str | None
) -> MessageResult:
    """More than 24 hours since the user wrote: a template, or a failed reply saying why."""
    settings = rt.settings
    template = settings.reengagement_template
    async with session_scope(settings) as session:
        reply, claimed = await repo.record_outbound_pending(
            session,
            conversation_id,
            msg.wamid,
            "",  # a template is not a turn of the conversation the model should see
            source="template" if template else None,
            kind="template" if template else "text",
            claimed_by=claim_id,
        )
        if not claimed:
            return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid)
        if not template:
            await repo.mark_failed(session, reply, REENGAGEMENT_CODE, OUTSIDE_WINDOW_REASON)
    if not template:
        MESSAGES_UNANSWERED.labels(reason="outside_window").inc()
        log.info("message %s is older than the 24-hour window: not answered", msg.wamid)
        return MessageResult(Outcome.NOT_ANSWERED, error_code=REENGAGEMENT_CODE,
                             reason="outside_window")
    problem = await account_problem(rt)
    if problem is not None:
        return await _fail_held(settings, reply, problem)
    return await _send(msg, reply, rt, final_attempt=False)


async def _fail_held(settings: Settings, reply: Message, problem: AccountProblem) -> MessageResult:
    async with session_scope(settings) as session:
        await repo.mark_failed(session, reply, problem.code, problem.reason())
    MESSAGES_UNANSWERED.labels(reason="account_unhealthy").inc()
    return MessageResult(Outcome.FAILED, reply.source, error_code=problem.code,
                         reason="account_unhealthy")


async def expire_held(rt: Runtime, now: float | None = None) -> int:
    """Record the held messages whose 24-hour window closed as failed replies with the reason;
    return how many."""
    problem = await rt.account.problem()
    expired = await rt.account.take_expired(now)
    for msg in expired:
        reason = problem or AccountProblem("account", None, None, time.time())
        async with session_scope(rt.settings) as session:
            record = await repo.record_inbound(session, msg)
            reply, _ = await repo.record_outbound_pending(
                session, record.conversation.id or 0, msg.wamid, "", source=None
            )
            if reply.status == MessageStatus.PENDING.value:
                await repo.mark_failed(
                    session, reply, reason.code,
                    "not answered within the 24-hour window: " + reason.reason(),
                )
            await inbox.discard(session, [msg.wamid])  # its task will not run again
        await mark_finished(rt, msg.phone_number_id, [msg.wamid])
        MESSAGES_HELD.labels(outcome="expired").inc()
        MESSAGES_UNANSWERED.labels(reason="account_unhealthy").inc()
        log.warning("held message %s expired: %s", msg.wamid, reason.reason())
    return len(expired)


async def mark_finished(rt: Runtime, phone_number_id: str, wamids: Sequence[str]) -> None:
    """Tell the web tier that the inbox rows of ``wamids`` are deleted for good (``bot.dedup``),
    so that a later redelivery's row is deleted again rather than kept until the retention purge.
    Call it once the transaction that deleted them has committed; a Redis failure costs no more
    than that, so it is logged, not raised."""
    try:
        await dedup.mark_done(rt.redis, phone_number_id, wamids)
    except RedisError as exc:
        log.warning("could not mark %d message(s) finished: %s", len(wamids), type(exc).__name__)


async def _record_failed(settings: Settings, reply: Message, exc: GraphError) -> None:
    log.warning("reply to %s failed for good: %s", reply.reply_to, exc)
    MESSAGES_UNANSWERED.labels(
        reason="outside_window" if exc.kind is ErrorKind.REENGAGEMENT else "send_failed"
    ).inc()
    async with session_scope(settings) as session:
        await repo.mark_failed(session, reply, exc.code, exc.title or str(exc))


async def record_echo(echo: EchoMessage, settings: Settings) -> bool:
    """Store what a person at the business sent from the WhatsApp Business app (an echo) in
    the user's history, so that answers see it, and hold the conversation for
    ``HANDOVER_HOLD_SECONDS`` from the echo (whatever ``HANDOVER_ENABLED`` says: the bot never
    talks over a person); nothing is sent. Returns whether the echo was new."""
    started = False
    async with session_scope(settings) as session:
        stored = await repo.record_echo(session, echo)
        message = await repo.get_message(session, echo.wamid) if stored else None
        if message is not None:
            until = _utc(echo.timestamp) + timedelta(seconds=settings.handover_hold_seconds)
            started = await holds.hold(
                session, message.conversation_id, reason=Reason.STAFF_ECHO.value, until=until,
                by="WhatsApp Business app", event_at=_utc(echo.timestamp),
            )
    if started:
        HANDOVERS.labels(reason=Reason.STAFF_ECHO.value).inc()
        log.warning("conversation %s held: staff wrote from the WhatsApp Business app",
                    message.conversation_id if message is not None else "?")
    return stored


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def record_status(
    update: StatusUpdate, settings: Settings, *, foreign_if_unknown: bool = False
) -> repo.StatusOutcome:
    """Store a delivery status on the outbound message it is about.

    ``foreign_if_unknown``: no message of the bot has this wamid, and waiting longer will not
    change that: someone else (another tool on the same number) wrote to the user, so the
    conversation is held (:func:`hold_for_foreign_status`).
    """
    async with session_scope(settings) as session:
        outcome = await repo.apply_status(session, update)
    if update.status == MessageStatus.FAILED.value and outcome == repo.StatusOutcome.APPLIED:
        log.warning("message %s failed: %s %s", update.wamid, update.error_code, update.error_title)
    if outcome == repo.StatusOutcome.UNKNOWN and foreign_if_unknown:
        await hold_for_foreign_status(update, settings)
    return outcome


async def hold_for_foreign_status(update: StatusUpdate, settings: Settings) -> bool:
    """Hold the recipient's conversation for ``HANDOVER_HOLD_SECONDS`` from the status: a
    message the bot did not send went to them. Not when the conversation has a bot reply
    whose wamid is not stored yet (the status may be its). Returns whether a hold started."""
    names = repo.identities(update.recipient_id, update.recipient_user_id)
    at = _utc(update.timestamp)
    until = at + timedelta(seconds=settings.handover_hold_seconds)
    if not names or until <= datetime.now(UTC):
        return False
    async with session_scope(settings) as session:
        conversation = await repo.resolve_conversation(
            session, update.phone_number_id, names,
            address=update.recipient_id or update.recipient_user_id,
        )
        assert conversation.id is not None
        if await holds.has_unsent_reply(session, conversation.id):
            return False
        started = await holds.hold(
            session, conversation.id, reason=Reason.FOREIGN_STATUS.value, until=until,
            by="another sender", event_at=at,
        )
    if started:
        HANDOVERS.labels(reason=Reason.FOREIGN_STATUS.value).inc()
        log.warning("conversation %s held: a message the bot did not send went to the user",
                    conversation.id)
    return started



# -- the handover notification and staff replies ------------------------------------------------

#: A notification delivered is remembered this long (Redis), so a redelivered task skips it.
NOTIFIED_TTL_SECONDS = 7 * 86400
NOTIFIED_KEY = "released:handover-notified:{}"
NOTIFY_TIMEOUT_SECONDS = 10.0


async def notify_handover(rt: Runtime, handover: Handover) -> str:
    """POST the signed notification of ``handover`` to ``HANDOVER_NOTIFY_URL``, once.

    Returns ``delivered``, ``duplicate`` (delivered before), ``off`` (no URL), ``gone`` (the
    conversation was purged) or ``refused`` (the receiver answered 4xx: retrying will not
    help). Raises :class:`RetryLater` when the receiver cannot be reached or answers 5xx, 408
    or 429. The body is built here from the database, so no message text goes through Redis.
    """
    settings = rt.settings
    if settings.handover_notify_url is None:
        return "off"
    key = NOTIFIED_KEY.format(handover.delivery_id)
    if await rt.redis.exists(key):
        return "duplicate"
    async with session_scope(settings) as session:
        conversation = await session.get(Conversation, handover.conversation_id)
        messages = await holds.messages_of(
            session,
            handover.conversation_id,
            NOTIFY_MESSAGES,
            retention_days=settings.retention_days,
        )
    if conversation is None:
        return "gone"
    body = notification_body(
        delivery_id=handover.delivery_id,
        conversation_id=handover.conversation_id,
        user=conversation.wa_id,
        reason=handover.reason,
        held_until=handover.held_until,
        messages=[
            message_entry(m.direction, m.kind, m.text, m.created_at, m.source) for m in messages
        ],
    )
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(settings.secret("handover_notify_secret"), body),
        DELIVERY_HEADER: handover.delivery_id,
        "User-Agent": "released-bot",
    }
    try:
        async with httpx.AsyncClient(timeout=NOTIFY_TIMEOUT_SECONDS) as client:
            response = await client.post(
                str(settings.handover_notify_url), content=body, headers=headers
            )
    except httpx.HTTPError as exc:
        raise RetryLater("notify", f"cannot reach the notification URL ({type(exc).__name__})"
                         ) from None
    if response.status_code >= 500 or response.status_code in (408, 429):
        retry_after = response.headers.get("retry-after", "")
        raise RetryLater("notify", f"the notification URL answered {response.status_code}",
                         float(retry_after) if retry_after.isdigit() else None)
    if response.status_code >= 300:
        log.error("the notification URL refused the handover notification %s: HTTP %s",
                  handover.delivery_id, response.status_code)
        return "refused"
    try:
        await rt.redis.set(key, "1", ex=NOTIFIED_TTL_SECONDS)
    except RedisError as exc:  # delivered; a redelivery would carry the same id
        log.warning("cannot remember the delivered notification: %s", exc)
    return "delivered"


async def send_staff_reply(
    rt: Runtime, message_id: int, claim_id: str, *, final_attempt: bool
) -> MessageResult:
    """Send a reply a person wrote through the admin API (stored pending by ``bot.admin``)
    as the business. Raises :class:`RetryLater` on transient Graph API failures."""
    settings = rt.settings
    stale = timedelta(seconds=settings.celery_visibility_timeout)
    async with session_scope(settings) as session:
        message = await holds.claim_staff_message(session, message_id, claim_id, stale)
        conversation = (
            await session.get(Conversation, message.conversation_id)
            if message is not None else None
        )
    if message is None or conversation is None:
        return MessageResult(Outcome.DUPLICATE, "staff")
    try:
        sent = await rt.graph.send_text(conversation.wa_id, message.text or "")
    except GraphRetryableError as exc:
        if not final_attempt:
            raise RetryLater("graph", str(exc), exc.retry_after) from exc
        await _fail_staff_reply(settings, message, exc)
        return MessageResult(Outcome.FAILED, "staff", error_code=exc.code)
    except GraphPermanentError as exc:
        if exc.account_problem:
            await _flag_account(rt, exc)
        await _fail_staff_reply(settings, message, exc)
        return MessageResult(Outcome.FAILED, "staff", error_code=exc.code)
    async with session_scope(settings) as session:
        await repo.mark_sent(session, message, sent.wamid)
    log.info("staff reply %s sent in conversation %s", message_id, conversation.id)
    return MessageResult(Outcome.REPLIED, "staff", sent.wamid)


async def _fail_staff_reply(settings: Settings, message: Message, exc: GraphError) -> None:
    log.warning("staff reply %s failed: %s", message.id, exc)
    async with session_scope(settings) as session:
        await repo.mark_failed(session, message, exc.code, exc.title or str(exc))
