"""Conversations held by a person: the state ``bot.handover`` and the admin API change.

A conversation is held while ``held_until`` lies in the future: the bot stores what the user
sends (counted in ``held_messages``) and answers nothing. Every change here is one conditional
``UPDATE``, so a worker recording an echo, another answering a message and the admin API can
act on one conversation at the same moment without losing a hold or a count (PostgreSQL
re-checks the condition of a row another transaction changed meanwhile; SQLite writes one at
a time).

The functions take an ``AsyncSession`` and leave committing to the caller, as
``bot.storage.repository`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, or_, true, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.storage.models import Conversation, Direction, Message, MessageStatus, utcnow
from bot.storage.repository import retention_cutoff

#: ``state`` filter of :func:`list_conversations`.
StateFilter = Literal["held", "bot", "all"]


def is_held(conversation: Conversation, now: datetime | None = None) -> bool:
    """Whether a person holds ``conversation`` now."""
    until = conversation.held_until
    return until is not None and until > (now or utcnow())


async def hold(
    session: AsyncSession,
    conversation_id: int,
    *,
    reason: str,
    until: datetime,
    by: str | None = None,
    event_at: datetime | None = None,
) -> bool:
    """Hold the conversation until ``until`` (a hold in force is only ever lengthened).

    ``event_at``: when what asks for the hold happened (an echo, a status); one from before a
    person last released the conversation holds nothing. Returns ``True`` when the
    conversation was answered by the bot until now (a handover), ``False`` when it was held
    already or nothing changed.
    """
    now = utcnow()
    if until <= now:
        return False
    conditions: list[Any] = [col(Conversation.id) == conversation_id]
    if event_at is not None:
        conditions.append(
            or_(col(Conversation.released_at).is_(None), col(Conversation.released_at) < event_at)
        )
    taken = await session.execute(
        update(Conversation)
        .where(
            *conditions,
            or_(col(Conversation.held_until).is_(None), col(Conversation.held_until) <= now),
        )
        .values(
            held_until=until,
            held_since=now,
            held_reason=reason,
            held_by=by,
            held_messages=0,
            consecutive_fallbacks=0,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(taken, "rowcount", 0):
        return True
    values: dict[str, Any] = {"held_until": until}
    if by:
        values["held_by"] = by
    await session.execute(
        update(Conversation)
        .where(*conditions, col(Conversation.held_until) > now,
               col(Conversation.held_until) < until)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return False


async def set_until(session: AsyncSession, conversation_id: int, until: datetime) -> None:
    """Set the end of a hold in force (a person chose it: shorter is allowed)."""
    await session.execute(
        update(Conversation)
        .where(col(Conversation.id) == conversation_id, col(Conversation.held_until) > utcnow())
        .values(held_until=until)
        .execution_options(synchronize_session=False)
    )


async def release(session: AsyncSession, conversation_id: int) -> bool:
    """Give the conversation back to the bot now; ``True`` when it was held."""
    now = utcnow()
    conversation = await session.get(Conversation, conversation_id, populate_existing=True)
    if conversation is None:
        return False
    was_held = is_held(conversation, now)
    await session.execute(
        update(Conversation)
        .where(col(Conversation.id) == conversation_id)
        .values(held_until=None, released_at=now, consecutive_fallbacks=0)
        .execution_options(synchronize_session=False)
    )
    return was_held


async def note_held_message(session: AsyncSession, conversation_id: int) -> bool:
    """Count a message the user sent to a held conversation; ``False`` when it is not held
    (the bot answers it)."""
    result = await session.execute(
        update(Conversation)
        .where(col(Conversation.id) == conversation_id, col(Conversation.held_until) > utcnow())
        .values(held_messages=col(Conversation.held_messages) + 1)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


async def held_now(session: AsyncSession, conversation_id: int) -> bool:
    """Whether the conversation is held now (read from the database, not a cached row)."""
    result = await session.exec(
        select(Conversation.id).where(
            col(Conversation.id) == conversation_id, col(Conversation.held_until) > utcnow()
        )
    )
    return result.first() is not None


async def count_fallback(session: AsyncSession, conversation_id: int, fallback: bool) -> int:
    """Record one more answer: a fallback adds to the fallbacks in a row, anything else resets
    them. Returns the fallbacks in a row now."""
    if not fallback:
        await session.execute(
            update(Conversation)
            .where(col(Conversation.id) == conversation_id,
                   col(Conversation.consecutive_fallbacks) != 0)
            .values(consecutive_fallbacks=0)
            .execution_options(synchronize_session=False)
        )
        return 0
    result = await session.execute(
        update(Conversation)
        .where(col(Conversation.id) == conversation_id)
        .values(consecutive_fallbacks=col(Conversation.consecutive_fallbacks) + 1)
        .returning(col(Conversation.consecutive_fallbacks))
        .execution_options(synchronize_session=False)
    )
    return int(result.scalar_one_or_none() or 0)


async def count_held(session: AsyncSession) -> int:
    """How many conversations are held now."""
    result = await session.exec(
        select(func.count()).select_from(Conversation).where(
            col(Conversation.held_until) > utcnow()
        )
    )
    return int(result.one())


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation as people see it in ``released conversations list``."""

    conversation: Conversation
    messages: int
    last_message_at: datetime | None
    last_inbound_at: datetime | None


async def list_conversations(
    session: AsyncSession,
    state: StateFilter = "all",
    limit: int = 100,
    *,
    retention_days: int | None = None,
) -> list[ConversationSummary]:
    """Conversations, the most recently active first; ``held``: held now, ``bot``: not. With
    ``retention_days`` the counts and times cover only the messages within retention."""
    now = utcnow()
    kept = (
        col(Message.created_at) >= retention_cutoff(retention_days)
        if retention_days is not None
        else true()
    )
    stats = (
        select(
            col(Message.conversation_id).label("cid"),
            func.count().label("messages"),
            func.max(Message.created_at).label("last_at"),
        )
        .where(kept)
        .group_by(col(Message.conversation_id))
        .subquery()
    )
    inbound = (
        select(
            col(Message.conversation_id).label("cid"),
            func.max(Message.created_at).label("last_in"),
        )
        .where(col(Message.direction) == Direction.INBOUND.value, kept)
        .group_by(col(Message.conversation_id))
        .subquery()
    )
    stmt = (
        select(Conversation, stats.c.messages, stats.c.last_at, inbound.c.last_in)
        .outerjoin(stats, stats.c.cid == col(Conversation.id))
        .outerjoin(inbound, inbound.c.cid == col(Conversation.id))
    )
    if state == "held":
        stmt = stmt.where(col(Conversation.held_until) > now)
    elif state == "bot":
        stmt = stmt.where(
            or_(col(Conversation.held_until).is_(None), col(Conversation.held_until) <= now)
        )
    stmt = stmt.order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc())
    rows = (await session.execute(stmt.limit(limit))).all()
    return [
        ConversationSummary(row[0], int(row[1] or 0), _aware(row[2]), _aware(row[3]))
        for row in rows
    ]


def _aware(value: Any) -> datetime | None:
    """A datetime from an aggregate (SQLite hands back text or naive values) as aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def messages_of(
    session: AsyncSession, conversation_id: int, limit: int = 200, *, retention_days: int
) -> list[Message]:
    """The conversation's messages within retention (``retention_days``, ``RETENTION_DAYS``),
    oldest first; at most the last ``limit``. One past retention is left out though the hourly
    purge has not deleted it yet."""
    result = await session.exec(
        select(Message)
        .where(
            col(Message.conversation_id) == conversation_id,
            col(Message.created_at) >= retention_cutoff(retention_days),
        )
        .order_by(col(Message.created_at).desc(), col(Message.id).desc())
        .limit(limit)
    )
    return list(reversed(result.all()))


async def last_inbound_at(session: AsyncSession, conversation_id: int) -> datetime | None:
    """When the user's last stored message arrived (the 24-hour window counts from it)."""
    result = await session.exec(
        select(func.max(Message.created_at)).where(
            col(Message.conversation_id) == conversation_id,
            col(Message.direction) == Direction.INBOUND.value,
        )
    )
    return _aware(result.one())


async def record_staff_message(
    session: AsyncSession, conversation_id: int, text: str
) -> Message:
    """Store a reply a person writes through the admin API as a pending outbound message
    (``source="staff"``); the worker sends it (``bot.tasks.send_staff_reply``)."""
    now = utcnow()
    message = Message(
        conversation_id=conversation_id,
        direction=Direction.OUTBOUND.value,
        kind="text",
        text=text,
        source="staff",
        status=MessageStatus.PENDING.value,
        created_at=now,
        updated_at=now,
    )
    session.add(message)
    await session.flush()
    return message


async def claim_staff_message(
    session: AsyncSession, message_id: int, claimed_by: str, stale_after: timedelta
) -> Message | None:
    """The pending staff message ``message_id`` for ``claimed_by`` to send, or ``None`` when it
    was sent already or another live task is sending it."""
    now = utcnow()
    result = await session.execute(
        update(Message)
        .where(
            col(Message.id) == message_id,
            col(Message.status) == MessageStatus.PENDING.value,
            or_(
                col(Message.claimed_by).is_(None),
                col(Message.claimed_by) == claimed_by,
                col(Message.updated_at) < now - stale_after,
            ),
        )
        .values(claimed_by=claimed_by, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return None
    return await session.get(Message, message_id, populate_existing=True)


async def has_unsent_reply(session: AsyncSession, conversation_id: int) -> bool:
    """Whether the conversation has an outbound message of ours that Meta has not confirmed
    yet (pending, no wamid stored): a status nobody recognises may be about it."""
    result = await session.exec(
        select(Message.id).where(
            col(Message.conversation_id) == conversation_id,
            col(Message.direction) == Direction.OUTBOUND.value,
            col(Message.status) == MessageStatus.PENDING.value,
            col(Message.wamid).is_(None),
        ).limit(1)
    )
    return result.first() is not None
