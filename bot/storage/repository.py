"""What the bot stores and asks of the database, as small async functions over a session.

Every function takes an ``AsyncSession`` and leaves committing to the caller
(``bot.storage.db.session_scope``), except that the upserts below are single statements that
are safe when two workers race: inserts use ``ON CONFLICT DO NOTHING`` (PostgreSQL and SQLite
both have it), so a second insert of the same wamid is a no-op that reports itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, exists, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.storage.models import (
    STATUS_RANK,
    Conversation,
    Direction,
    Message,
    MessageStatus,
    QuarantinedEvent,
    utcnow,
)
from bot.whatsapp.events import EchoMessage, InboundMessage, StatusUpdate

#: Outbound statuses after which a reply must never be sent again.
FINAL_REPLY_STATUSES = frozenset(
    {MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ, MessageStatus.FAILED}
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _insert(session: AsyncSession, table: Any) -> Any:
    """A dialect-specific INSERT that supports ``on_conflict_do_nothing``."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect: {dialect}")


@dataclass(frozen=True, slots=True)
class InboundRecord:
    """The result of :func:`record_inbound`: the stored message and whether this call stored
    it (``False``: the wamid was already there, a redelivery)."""

    message: Message
    conversation: Conversation
    created: bool


async def get_or_create_conversation(
    session: AsyncSession,
    phone_number_id: str,
    wa_id: str,
    contact_name: str | None = None,
) -> Conversation:
    """The conversation of (``phone_number_id``, ``wa_id``), created when new; the contact
    name is refreshed when WhatsApp reports one."""
    now = utcnow()
    stmt = (
        _insert(session, Conversation)
        .values(
            phone_number_id=phone_number_id,
            wa_id=wa_id,
            contact_name=contact_name,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["phone_number_id", "wa_id"])
    )
    await session.execute(stmt)
    result = await session.exec(
        select(Conversation).where(
            col(Conversation.phone_number_id) == phone_number_id,
            col(Conversation.wa_id) == wa_id,
        )
    )
    conversation = result.one()
    if contact_name and conversation.contact_name != contact_name:
        conversation.contact_name = contact_name
    conversation.updated_at = now
    session.add(conversation)
    await session.flush()
    return conversation


async def get_message(session: AsyncSession, wamid: str) -> Message | None:
    """The message stored under Meta's id ``wamid``, if any."""
    result = await session.exec(select(Message).where(Message.wamid == wamid))
    return result.one_or_none()


async def record_inbound(session: AsyncSession, msg: InboundMessage) -> InboundRecord:
    """Store an inbound message once: a second call with the same wamid stores nothing and
    returns ``created=False`` with the message stored the first time."""
    conversation = await get_or_create_conversation(
        session, msg.phone_number_id, msg.address, msg.contact_name
    )
    now = utcnow()
    stmt = (
        _insert(session, Message)
        .values(
            conversation_id=conversation.id,
            direction=Direction.INBOUND.value,
            wamid=msg.wamid,
            kind=msg.kind,
            text=msg.text,
            status=MessageStatus.RECEIVED.value,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["wamid"])
    )
    result = await session.execute(stmt)
    created = bool(getattr(result, "rowcount", 0))
    message = await get_message(session, msg.wamid)
    assert message is not None
    return InboundRecord(message=message, conversation=conversation, created=created)


async def record_echo(session: AsyncSession, echo: EchoMessage) -> bool:
    """Store a message the business sent from the WhatsApp Business app (an echo) in the user's
    conversation, as an outbound message with ``source="echo"``, once per wamid; returns
    whether this call stored it."""
    conversation = await get_or_create_conversation(session, echo.phone_number_id, echo.address)
    now = utcnow()
    stmt = (
        _insert(session, Message)
        .values(
            conversation_id=conversation.id,
            direction=Direction.OUTBOUND.value,
            wamid=echo.wamid,
            kind=echo.kind,
            text=echo.text,
            source="echo",
            status=MessageStatus.SENT.value,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["wamid"])
    )
    result = await session.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


async def history(
    session: AsyncSession,
    conversation_id: int,
    turns: int,
    *,
    before_message_id: int | None = None,
) -> list[Message]:
    """The last ``turns`` messages of a conversation with text, oldest first.

    ``before_message_id`` excludes that message and later ones (the message being answered);
    failed replies are left out: the user never saw them.
    """
    if turns <= 0:
        return []
    stmt = select(Message).where(
        col(Message.conversation_id) == conversation_id,
        col(Message.text).is_not(None),
        col(Message.status) != MessageStatus.FAILED.value,
    )
    if before_message_id is not None:
        stmt = stmt.where(col(Message.id) < before_message_id)
    stmt = stmt.order_by(col(Message.created_at).desc(), col(Message.id).desc()).limit(turns)
    result = await session.exec(stmt)
    return list(reversed(result.all()))


async def find_reply(session: AsyncSession, inbound_wamid: str) -> Message | None:
    """The outbound message answering ``inbound_wamid``, whatever its status."""
    result = await session.exec(
        select(Message).where(
            col(Message.reply_to) == inbound_wamid,
            col(Message.direction) == Direction.OUTBOUND.value,
        )
    )
    return result.one_or_none()


async def reply_already_sent(session: AsyncSession, inbound_wamid: str) -> bool:
    """Whether the reply to ``inbound_wamid`` has been sent (or has failed for good): the
    exactly-once guard of the worker."""
    reply = await find_reply(session, inbound_wamid)
    return reply is not None and reply.status in FINAL_REPLY_STATUSES


async def record_outbound_pending(
    session: AsyncSession,
    conversation_id: int,
    reply_to: str,
    text: str,
    *,
    source: str | None = None,
    kind: str = "text",
    claimed_by: str | None = None,
) -> tuple[Message, bool]:
    """Claim the reply to ``reply_to``: store it as ``pending`` before it is sent.

    Only one reply per inbound message can exist (a unique key): when one is already stored
    (a retry, or a racing worker), it is returned with ``False`` and nothing changes.
    ``claimed_by`` names the sender (the task id), see :func:`take_over_reply`.
    """
    now = utcnow()
    stmt = (
        _insert(session, Message)
        .values(
            conversation_id=conversation_id,
            direction=Direction.OUTBOUND.value,
            reply_to=reply_to,
            kind=kind,
            text=text,
            source=source,
            claimed_by=claimed_by,
            status=MessageStatus.PENDING.value,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["reply_to"])
    )
    result = await session.execute(stmt)
    created = bool(getattr(result, "rowcount", 0))
    message = await find_reply(session, reply_to)
    assert message is not None
    return message, created


async def take_over_reply(
    session: AsyncSession,
    message: Message,
    claimed_by: str | None,
    stale_after: timedelta,
) -> bool:
    """May ``claimed_by`` send the pending reply ``message``?

    Yes when it holds the claim (a retry or a redelivery of the same task), when nobody does,
    or when the holder's claim is older than ``stale_after`` (its worker died): the claim then
    moves to ``claimed_by``, atomically, so that only one of several contenders wins it.
    """
    if message.status != MessageStatus.PENDING.value:
        return False
    if claimed_by is None or message.claimed_by in (None, claimed_by):
        return True
    now = utcnow()
    result = await session.execute(
        update(Message)
        .where(
            col(Message.id) == message.id,
            col(Message.status) == MessageStatus.PENDING.value,
            col(Message.claimed_by) == message.claimed_by,
            col(Message.updated_at) < now - stale_after,
        )
        .values(claimed_by=claimed_by, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return False
    message.claimed_by = claimed_by
    message.updated_at = now
    return True


async def mark_sent(session: AsyncSession, message: Message, wamid: str) -> Message:
    """Record that Meta accepted ``message`` under ``wamid``. A status event that raced ahead
    of this (already ``delivered``/``read``) is kept."""
    message.wamid = wamid
    if STATUS_RANK.get(message.status, -1) < STATUS_RANK[MessageStatus.SENT]:
        message.status = MessageStatus.SENT.value
    message.error_code = None
    message.error_title = None
    message.updated_at = utcnow()
    session.add(message)
    await session.flush()
    return message


async def mark_failed(
    session: AsyncSession, message: Message, code: int | None, title: str | None
) -> Message:
    """Record that ``message`` could not be sent (for good) and why."""
    message.status = MessageStatus.FAILED.value
    message.error_code = code
    message.error_title = (title or "")[:512] or None
    message.updated_at = utcnow()
    session.add(message)
    await session.flush()
    return message


class StatusOutcome(StrEnum):
    """What :func:`apply_status` did."""

    APPLIED = "applied"
    STALE = "stale"  # older than what is stored (statuses only move forward)
    IGNORED = "ignored"  # a status kind we do not track (deleted, warning)
    UNKNOWN = "unknown"  # no outbound message with this wamid (yet)


async def apply_status(session: AsyncSession, update_: StatusUpdate) -> StatusOutcome:
    """Apply a delivery status to the stored outbound message with that wamid.

    ``sent`` < ``delivered`` < ``read``: a late ``sent`` after ``read`` changes nothing.
    ``failed`` is recorded with Meta's error code and title unless the user already has the
    message (delivered or read); a failed message stays failed.
    """
    if update_.status not in ("sent", "delivered", "read", "failed"):
        return StatusOutcome.IGNORED
    # One conditional UPDATE, so two workers applying "delivered" and "read" of the same reply
    # at the same moment cannot overwrite the more advanced status with the older one.
    values: dict[str, Any] = {"updated_at": utcnow()}
    if update_.status == MessageStatus.FAILED.value:
        rank_limit = STATUS_RANK[MessageStatus.DELIVERED]
        values |= {
            "status": MessageStatus.FAILED.value,
            "error_code": update_.error_code,
            "error_title": (update_.error_title or "")[:512] or None,
        }
    else:
        rank_limit = STATUS_RANK[update_.status]
        values["status"] = update_.status
    behind = [status for status, rank in STATUS_RANK.items() if rank < rank_limit]
    result = await session.execute(
        update(Message)
        .where(
            col(Message.wamid) == update_.wamid,
            col(Message.direction) == Direction.OUTBOUND.value,
            col(Message.status).in_(behind),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0):
        return StatusOutcome.APPLIED
    message = await get_message(session, update_.wamid)
    if message is None or message.direction != Direction.OUTBOUND.value:
        return StatusOutcome.UNKNOWN
    return StatusOutcome.STALE


async def purge_older_than(session: AsyncSession, days: int, *, now: datetime | None = None) -> int:
    """Delete messages (and quarantined webhook elements) created more than ``days`` days ago,
    then conversations left empty and idle as long; return the number of messages deleted."""
    cutoff = _utc(now or utcnow()) - timedelta(days=days)
    await session.execute(
        delete(QuarantinedEvent).where(col(QuarantinedEvent.created_at) < cutoff)
    )
    result = await session.execute(delete(Message).where(col(Message.created_at) < cutoff))
    deleted = int(getattr(result, "rowcount", 0) or 0)
    has_messages = exists().where(col(Message.conversation_id) == col(Conversation.id))
    await session.execute(
        delete(Conversation).where(
            col(Conversation.updated_at) < cutoff,
            ~has_messages,
        )
    )
    return deleted
