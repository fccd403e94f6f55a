"""What people do with conversations, over the database: the body of the admin API.

``bot.api.admin`` (the web tier's ``/admin/`` routes) calls these functions; they are kept out
of the web tier's module so that its webhook path never loads SQLAlchemy and the ORM models
(tests/unit/test_web_imports.py): the first admin request loads them.

Every function returns plain JSON-ready dicts (camelCase keys, ISO 8601 UTC times) or raises
:class:`AdminError` with the HTTP status and a sentence for the person.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog

from bot.core.config import Settings
from bot.core.metrics import HANDOVERS
from bot.handover import Reason
from bot.storage import holds
from bot.storage.db import session_scope
from bot.storage.models import Conversation, Message, MessageStatus, utcnow
from bot.storage.repository import user_identities
from released.providers.meta import MAX_TEXT_LENGTH, SERVICE_WINDOW_SECONDS

log = structlog.get_logger(__name__)

#: The longest hold a person may set through the API (``HANDOVER_HOLD_SECONDS``' bound too).
MAX_HOLD_SECONDS = 366 * 86400


class AdminError(Exception):
    """A request the API refuses: ``status`` and a sentence saying why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def conversation_json(
    conversation: Conversation,
    *,
    messages: int | None = None,
    last_message_at: datetime | None = None,
    last_inbound_at: datetime | None = None,
) -> dict[str, Any]:
    """A conversation as the API shows it."""
    now = utcnow()
    held = holds.is_held(conversation, now)
    out: dict[str, Any] = {
        "id": conversation.id,
        "user": conversation.wa_id,
        "name": conversation.contact_name,
        "state": "held" if held else "bot",
        "heldUntil": _iso(conversation.held_until) if held else None,
        "heldSince": _iso(conversation.held_since) if held else None,
        "heldReason": conversation.held_reason if held else None,
        "heldBy": conversation.held_by if held else None,
        "heldMessages": conversation.held_messages if held else 0,
        "releasedAt": _iso(conversation.released_at),
        "consecutiveFallbacks": conversation.consecutive_fallbacks,
        "updatedAt": _iso(conversation.updated_at),
    }
    if messages is not None:
        out["messages"] = messages
    if last_message_at is not None or last_inbound_at is not None:
        out["lastMessageAt"] = _iso(last_message_at)
        out["lastInboundAt"] = _iso(last_inbound_at)
    if last_inbound_at is not None:
        window_ends = last_inbound_at + timedelta(seconds=SERVICE_WINDOW_SECONDS)
        out["windowOpenUntil"] = _iso(window_ends) if window_ends > now else None
    return out


def message_json(message: Message) -> dict[str, Any]:
    """A stored message as the API shows it."""
    return {
        "id": message.id,
        "direction": message.direction,
        "kind": message.kind,
        "text": message.text,
        "source": message.source,
        "status": message.status,
        "wamid": message.wamid,
        "replyTo": message.reply_to,
        "errorCode": message.error_code,
        "errorTitle": message.error_title,
        "at": _iso(message.created_at),
    }


async def list_conversations(
    settings: Settings, state: holds.StateFilter, limit: int
) -> dict[str, Any]:
    """``GET /admin/conversations``."""
    async with session_scope(settings) as session:
        rows = await holds.list_conversations(
            session, state, limit, retention_days=settings.retention_days
        )
    return {
        "conversations": [
            conversation_json(
                row.conversation,
                messages=row.messages,
                last_message_at=row.last_message_at,
                last_inbound_at=row.last_inbound_at,
            )
            for row in rows
        ]
    }


async def _conversation(session: Any, conversation_id: int) -> Conversation:
    conversation = await session.get(Conversation, conversation_id, populate_existing=True)
    if conversation is None:
        raise AdminError(404, f"no conversation {conversation_id} (or it was purged)")
    return conversation  # type: ignore[no-any-return]


async def show_conversation(
    settings: Settings, conversation_id: int, limit: int = 200
) -> dict[str, Any]:
    """``GET /admin/conversations/{id}``: the conversation and its stored messages."""
    async with session_scope(settings) as session:
        conversation = await _conversation(session, conversation_id)
        messages = await holds.messages_of(
            session, conversation_id, limit, retention_days=settings.retention_days
        )
        last_in = await holds.last_inbound_at(session, conversation_id)
        names = await user_identities(session, conversation_id)
    out = conversation_json(
        conversation,
        messages=len(messages),
        last_message_at=messages[-1].created_at if messages else None,
        last_inbound_at=last_in,
    )
    out["identities"] = [{"kind": kind.value, "value": value} for kind, value in names]
    out["messages"] = [message_json(m) for m in messages]
    return out


async def hold_conversation(
    settings: Settings, conversation_id: int, seconds: int | None, reason: str | None
) -> dict[str, Any]:
    """``POST /admin/conversations/{id}/hold``: a person takes the conversation over for
    ``seconds`` (default ``HANDOVER_HOLD_SECONDS``)."""
    seconds = settings.handover_hold_seconds if seconds is None else seconds
    if not 1 <= seconds <= MAX_HOLD_SECONDS:
        raise AdminError(422, f"seconds must be between 1 and {MAX_HOLD_SECONDS}")
    until = utcnow() + timedelta(seconds=seconds)
    async with session_scope(settings) as session:
        await _conversation(session, conversation_id)
        started = await holds.hold(
            session, conversation_id, reason=Reason.ADMIN.value, until=until,
            by=(reason or "").strip()[:256] or None,
        )
        if not started:  # held already: a person asking for a time sets that time
            await holds.set_until(session, conversation_id, until)
        conversation = await _conversation(session, conversation_id)
    if started:
        HANDOVERS.labels(reason=Reason.ADMIN.value).inc()
    log.info("admin.hold", conversation=conversation_id, seconds=seconds, started=started)
    return conversation_json(conversation)


async def release_conversation(settings: Settings, conversation_id: int) -> dict[str, Any]:
    """``POST /admin/conversations/{id}/release``: the bot answers again from now on."""
    async with session_scope(settings) as session:
        await _conversation(session, conversation_id)
        was_held = await holds.release(session, conversation_id)
        conversation = await _conversation(session, conversation_id)
    log.info("admin.release", conversation=conversation_id, was_held=was_held)
    return conversation_json(conversation) | {"wasHeld": was_held}


async def store_reply(settings: Settings, conversation_id: int, text: str) -> int:
    """``POST /admin/conversations/{id}/reply``, first half: check that WhatsApp lets free
    text through (a user message within 24 hours), store the reply as pending and hold the
    conversation (a person is talking). Returns the message id for the worker to send."""
    text = text.strip()
    if not text:
        raise AdminError(422, "text is empty")
    if len(text) > MAX_TEXT_LENGTH:
        raise AdminError(422, f"text is longer than WhatsApp's {MAX_TEXT_LENGTH} characters")
    now = utcnow()
    async with session_scope(settings) as session:
        conversation = await _conversation(session, conversation_id)
        if not conversation.wa_id:
            raise AdminError(409, "the user has no address to write to")
        last_in = await holds.last_inbound_at(session, conversation_id)
        if last_in is None or (now - last_in).total_seconds() > SERVICE_WINDOW_SECONDS:
            raise AdminError(
                409,
                "more than 24 hours since the user's last message: WhatsApp only lets an "
                "approved template through now (error 131047), not free text",
            )
        message = await holds.record_staff_message(session, conversation_id, text)
        started = await holds.hold(
            session, conversation_id, reason=Reason.ADMIN.value,
            until=now + timedelta(seconds=settings.handover_hold_seconds), by="admin reply",
        )
        assert message.id is not None
        message_id = message.id
    if started:
        HANDOVERS.labels(reason=Reason.ADMIN.value).inc()
    log.info("admin.reply", conversation=conversation_id, message=message_id, held=started)
    return message_id


async def message_state(settings: Settings, message_id: int) -> dict[str, Any]:
    """A stored message (the reply being sent)."""
    async with session_scope(settings) as session:
        message = await session.get(Message, message_id, populate_existing=True)
    if message is None:
        raise AdminError(404, f"no message {message_id}")
    return message_json(message)


async def fail_reply(settings: Settings, message_id: int, title: str) -> None:
    """Record that a stored reply could not be handed to the worker."""
    async with session_scope(settings) as session:
        message = await session.get(Message, message_id, populate_existing=True)
        if message is not None and message.status == MessageStatus.PENDING.value:
            message.status = MessageStatus.FAILED.value
            message.error_title = title[:512]
            message.updated_at = utcnow()
            session.add(message)
