"""What the bot does with one message: store it, answer it once, send the answer, store that.

:func:`handle_message` is the body of the ``bot.tasks.process_message`` task, written as async
code over a :class:`Runtime` (the clients of one event loop). It never retries by itself: when
an API asks to slow down or fails transiently it raises :class:`RetryLater`, and the task
schedules a retry with backoff. Guarantees:

- **Once.** The inbound message is stored idempotently (by wamid). Its reply is claimed in the
  database (one outbound row per inbound wamid) before it is sent, and a reply already sent (or
  failed for good) is never sent again, so a redelivered task or a duplicate webhook sends
  nothing. A retry after a failed send re-sends the stored text without asking the model again.
  The one window left is a crash between Meta accepting the message and the database recording
  it: the retry then sends again (at least once beats never).
- **Never silent.** When the model keeps failing (``model_fallback``), or fails in a way
  retrying cannot fix, the answer comes from the FAQs or ``FALLBACK_MESSAGE``. Messages without
  text (images, audio, stickers, unknown types) get a polite "text only" answer without the
  model. Reactions and system notices are stored and not answered.
- **Failures recorded.** A send that fails for good (131047 outside the 24-hour window, a bad
  number...) or still fails on the last attempt is stored as ``failed`` with Meta's code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from openai import AsyncOpenAI
from redis.exceptions import RedisError

from bot.core.config import Settings
from bot.core.redis import connect_redis
from bot.llm.client import Answer, ModelError, Turn, answer, fallback_answer, make_client
from bot.llm.faqs import FAQ, FAQError, faqs_for
from bot.llm.ratelimit import RateLimitTimeout, TokenBucket, openai_bucket
from bot.storage import repository as repo
from bot.storage.db import session_scope
from bot.storage.models import Direction, Message, MessageStatus
from bot.whatsapp.client import GraphClient, GraphError, GraphPermanentError, GraphRetryableError
from bot.whatsapp.events import EchoMessage, InboundMessage, StatusUpdate

log = logging.getLogger(__name__)

#: Kinds whose text (body, button title, list reply) is a question for the model.
TEXT_KINDS = frozenset({"text", "button", "interactive"})
#: Kinds that are stored but never answered: a reply to a 👍 or a number change is noise.
SILENT_KINDS = frozenset({"reaction", "system"})

TEXT_ONLY_REPLIES = {
    "en": "Thanks! I can only read text messages for now. Please type your question and I'll "
    "be glad to help.",
    "es": "¡Gracias! Por ahora solo puedo leer mensajes de texto. Escribe tu pregunta y te "
    "ayudo con gusto.",
    "pt": "Obrigado! Por enquanto só consigo ler mensagens de texto. Escreva a sua pergunta e "
    "terei todo o gosto em ajudar.",
    "fr": "Merci ! Pour l'instant je ne lis que les messages texte. Écrivez votre question et "
    "je vous aiderai volontiers.",
}


def text_only_reply(language: str) -> str:
    """The polite answer to a message without text, in ``language`` when we have it."""
    key = language.lower().split("-")[0].split("_")[0]
    return TEXT_ONLY_REPLIES.get(key, TEXT_ONLY_REPLIES["en"])


class Outcome(StrEnum):
    """How :func:`handle_message` ended."""

    REPLIED = "replied"
    DUPLICATE = "duplicate"  # the reply was already sent (or is being sent by another worker)
    NOT_ANSWERED = "not_answered"  # reactions and system notices
    FAILED = "failed"  # the send failed for good; recorded


@dataclass(frozen=True, slots=True)
class MessageResult:
    """The outcome, and for replies where the answer came from and Meta's wamid."""

    outcome: Outcome
    source: str | None = None
    reply_wamid: str | None = None
    error_code: int | None = None


class RetryLater(Exception):
    """A transient failure: the task should run again later (``retry_after`` seconds when the
    server said so). ``api`` is ``openai``, ``graph`` or ``ratelimit``."""

    def __init__(self, api: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{api}: {reason}")
        self.api = api
        self.retry_after = retry_after


@dataclass
class Runtime:
    """The clients one event loop uses (HTTP connection pools and Redis connections belong to
    the loop that opened them, so each worker process builds one in its own loop)."""

    settings: Settings
    graph: GraphClient
    openai: AsyncOpenAI
    redis: Any
    bucket: TokenBucket

    async def aclose(self) -> None:
        """Close every client."""
        await self.graph.aclose()
        await self.openai.close()
        await self.redis.aclose()


def create_runtime(
    settings: Settings,
    *,
    graph: GraphClient | None = None,
    openai_client: AsyncOpenAI | None = None,
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
    )


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


async def compose_answer(
    msg: InboundMessage, history: list[Message], rt: Runtime, *, model_fallback: bool
) -> Answer:
    """The reply to ``msg``: the polite text-only answer, the model's, or a fallback.

    Raises :class:`RetryLater` for transient model or rate-limit failures unless
    ``model_fallback`` (then the FAQs or the fallback message answer).
    """
    settings = rt.settings
    question = (msg.text or "").strip()
    if not question:
        return Answer(text_only_reply(settings.language), "unsupported")
    faqs = _faqs(settings)

    async def take_token() -> None:
        try:
            await rt.bucket.acquire()
        except RedisError as exc:  # the limiter must not silence the bot
            log.warning("rate limiter unavailable, calling OpenAI without it: %s", exc)

    try:
        return await answer(
            question,
            _turns(history),
            faqs,
            settings,
            client=rt.openai,
            fallback_on_error=model_fallback,
            before_request=take_token,
        )
    except ModelError as exc:
        raise RetryLater("openai", str(exc), exc.retry_after) from exc
    except RateLimitTimeout as exc:
        if model_fallback:
            return fallback_answer(question, faqs, settings)
        raise RetryLater("ratelimit", str(exc), exc.retry_after) from exc


async def _mark_read(rt: Runtime, wamid: str) -> None:
    try:
        await rt.graph.mark_read(wamid)
    except GraphError as exc:  # blue ticks are nice to have, never worth a retry
        log.info("mark as read failed for %s: %s", wamid, exc)


async def handle_message(
    msg: InboundMessage,
    rt: Runtime,
    *,
    model_fallback: bool = False,
    final_attempt: bool = False,
    claim_id: str | None = None,
) -> MessageResult:
    """Store ``msg``, answer it once and send the answer quoting it; see the module doc.

    ``model_fallback``: do not wait for the model any more (answer from the FAQs on failure).
    ``final_attempt``: a transient send failure is recorded as failed instead of retried.
    ``claim_id``: who is answering (the Celery task id, stable across its retries and
    redeliveries); a reply pending under another claim is left to its owner until the claim is
    older than ``CELERY_VISIBILITY_TIMEOUT``.
    Raises :class:`RetryLater` otherwise on transient failures.
    """
    settings = rt.settings
    async with session_scope(settings) as session:
        record = await repo.record_inbound(session, msg)
        reply = await repo.find_reply(session, msg.wamid)
        if reply is not None and reply.status in repo.FINAL_REPLY_STATUSES:
            return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid, reply.error_code)
        history: list[Message] = []
        if reply is None and msg.kind not in SILENT_KINDS:
            history = await repo.history(
                session,
                record.conversation.id or 0,
                settings.history_turns,
                before_message_id=record.message.id,
            )
    conversation_id = record.conversation.id or 0

    if reply is None:
        await _mark_read(rt, msg.wamid)
        if msg.kind in SILENT_KINDS:
            return MessageResult(Outcome.NOT_ANSWERED)
        result = await compose_answer(msg, history, rt, model_fallback=model_fallback)
        async with session_scope(settings) as session:
            reply, claimed = await repo.record_outbound_pending(
                session,
                conversation_id,
                msg.wamid,
                result.text,
                source=result.source,
                claimed_by=claim_id,
            )
        if not claimed:  # another worker is answering this very message right now
            return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid)
    else:  # pending: an earlier attempt stored the answer but did not get it sent
        async with session_scope(settings) as session:
            mine = await repo.take_over_reply(
                session, reply, claim_id, timedelta(seconds=settings.celery_visibility_timeout)
            )
        if not mine:
            return MessageResult(Outcome.DUPLICATE, reply.source, reply.wamid)

    try:
        sent = await rt.graph.send_text(msg.address, reply.text or "", reply_to=msg.wamid)
    except GraphRetryableError as exc:
        if not final_attempt:
            raise RetryLater("graph", str(exc), exc.retry_after) from exc
        await _record_failed(settings, reply, exc)
        return MessageResult(Outcome.FAILED, reply.source, error_code=exc.code)
    except GraphPermanentError as exc:
        await _record_failed(settings, reply, exc)
        return MessageResult(Outcome.FAILED, reply.source, error_code=exc.code)
    async with session_scope(settings) as session:
        await repo.mark_sent(session, reply, sent.wamid)
    return MessageResult(Outcome.REPLIED, reply.source, sent.wamid)


async def _record_failed(settings: Settings, reply: Message, exc: GraphError) -> None:
    log.warning("reply to %s failed for good: %s", reply.reply_to, exc)
    async with session_scope(settings) as session:
        await repo.mark_failed(session, reply, exc.code, exc.title or str(exc))


async def record_echo(echo: EchoMessage, settings: Settings) -> bool:
    """Store what a person at the business sent from the WhatsApp Business app (an echo) in
    the user's history, so that answers see it; nothing is sent."""
    async with session_scope(settings) as session:
        return await repo.record_echo(session, echo)


async def record_status(update: StatusUpdate, settings: Settings) -> repo.StatusOutcome:
    """Store a delivery status on the outbound message it is about."""
    async with session_scope(settings) as session:
        outcome = await repo.apply_status(session, update)
    if update.status == MessageStatus.FAILED.value and outcome == repo.StatusOutcome.APPLIED:
        log.warning("message %s failed: %s %s", update.wamid, update.error_code, update.error_title)
    return outcome


async def purge_old_messages(settings: Settings, days: int | None = None) -> int:
    """Delete messages older than ``RETENTION_DAYS`` (or ``days``); return how many."""
    async with session_scope(settings) as session:
        return await repo.purge_older_than(session, days or settings.retention_days)
