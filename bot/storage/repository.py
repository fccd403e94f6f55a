"""What the bot stores and asks of the database, as small async functions over a session.

Every function takes an ``AsyncSession`` and leaves committing to the caller
(``bot.storage.db.session_scope``), except that the upserts below are single statements that
are safe when two workers race: inserts use ``ON CONFLICT DO NOTHING`` (PostgreSQL and SQLite
both have it), so a second insert of the same wamid is a no-op that reports itself.

One person, one conversation: :func:`resolve_conversation` finds a user's conversation by any
of the names a message gives them (phone number, BSUID, parent BSUID), records the names it did
not know yet, and merges conversations that turn out to be the same person (their messages move
to the oldest one). Identity-change system messages (:func:`apply_identity_change`) retire the
old names and add the new ones; delivery statuses add the names Meta reports for a recipient
(:func:`apply_status`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, exists, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.storage.models import (
    STATUS_RANK,
    Conversation,
    Direction,
    IdentityKind,
    InboxEvent,
    Message,
    MessageStatus,
    QuarantinedEvent,
    UserIdentity,
    utcnow,
)
from bot.whatsapp.events import EchoMessage, IdentityChange, InboundMessage, StatusUpdate
from released.providers.meta import is_phone_number

#: One name of a user: (kind, value).
Identity = tuple[IdentityKind, str]

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


def identities(
    phone: str | None = None, user_id: str | None = None, parent_user_id: str | None = None
) -> list[Identity]:
    """The names given, as identities. A ``phone`` that is not digits is taken for a BSUID
    (older producers put the BSUID where the phone number goes)."""
    out: list[Identity] = []
    if phone:
        out.append((IdentityKind.PHONE if is_phone_number(phone) else IdentityKind.USER_ID, phone))
    if user_id and (IdentityKind.USER_ID, user_id) not in out:
        out.append((IdentityKind.USER_ID, user_id))
    if parent_user_id:
        out.append((IdentityKind.PARENT_USER_ID, parent_user_id))
    return out


def message_identities(msg: InboundMessage) -> list[Identity]:
    """The names an inbound message gives its sender."""
    return identities(msg.wa_id, msg.user_id, msg.parent_user_id)


async def _owners(
    session: AsyncSession, phone_number_id: str, names: Sequence[Identity]
) -> dict[Identity, int]:
    """Which conversation each of ``names`` belongs to (names nobody has are left out)."""
    if not names:
        return {}
    result = await session.exec(
        select(UserIdentity).where(
            col(UserIdentity.phone_number_id) == phone_number_id,
            or_(
                *(
                    and_(col(UserIdentity.kind) == kind.value, col(UserIdentity.value) == value)
                    for kind, value in names
                )
            ),
        )
    )
    return {(IdentityKind(row.kind), row.value): row.conversation_id for row in result.all()}


async def _merge(session: AsyncSession, target: int, others: Iterable[int]) -> None:
    """Move the messages and identities of ``others`` to ``target`` and delete ``others``."""
    ids = sorted({o for o in others if o != target})
    if not ids:
        return
    for table in (Message, UserIdentity):
        await session.execute(
            update(table)
            .where(col(table.conversation_id).in_(ids))
            .values(conversation_id=target)
            .execution_options(synchronize_session=False)
        )
    await session.execute(
        delete(Conversation)
        .where(col(Conversation.id).in_(ids))
        .execution_options(synchronize_session=False)
    )


async def _claim(
    session: AsyncSession, phone_number_id: str, conversation_id: int, names: Sequence[Identity]
) -> dict[Identity, int]:
    """Record ``names`` for ``conversation_id`` where nobody holds them yet (one statement
    each, safe against racing workers); return who holds each of them afterwards."""
    now = utcnow()
    for kind, value in names:
        await session.execute(
            _insert(session, UserIdentity)
            .values(
                conversation_id=conversation_id,
                phone_number_id=phone_number_id,
                kind=kind.value,
                value=value,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["phone_number_id", "kind", "value"])
        )
    return await _owners(session, phone_number_id, names)


async def resolve_conversation(
    session: AsyncSession,
    phone_number_id: str,
    names: Sequence[Identity],
    *,
    address: str | None = None,
    contact_name: str | None = None,
    into: int | None = None,
) -> Conversation:
    """The one conversation of the user called ``names`` (created when none of the names is
    known; ``into``: the conversation known to be theirs). Names not recorded yet are added;
    conversations found under different names are merged into the oldest. ``address`` (where
    replies reach the user now) and ``contact_name`` are refreshed when given."""
    if not names:
        raise ValueError("a user needs at least one identity (phone number or BSUID)")
    owners = await _owners(session, phone_number_id, names)
    now = utcnow()
    if owners or into is not None:
        target = min([*owners.values(), *([into] if into is not None else [])])
    else:
        created = Conversation(
            phone_number_id=phone_number_id,
            wa_id=address or names[0][1],
            contact_name=contact_name,
            created_at=now,
            updated_at=now,
        )
        session.add(created)
        await session.flush()
        assert created.id is not None
        target = created.id
    for _ in range(3):  # a racing worker may have claimed a name meanwhile: merge, claim again
        owners = await _claim(session, phone_number_id, target, names)
        holders = set(owners.values())
        if holders == {target}:
            break
        oldest = min(holders)
        await _merge(session, oldest, holders)
        target = oldest
    conversation = await session.get(Conversation, target, populate_existing=True)
    assert conversation is not None
    if address:
        conversation.wa_id = address
    if contact_name and conversation.contact_name != contact_name:
        conversation.contact_name = contact_name
    conversation.updated_at = now
    session.add(conversation)
    await session.flush()
    return conversation


async def get_or_create_conversation(
    session: AsyncSession,
    phone_number_id: str,
    wa_id: str,
    contact_name: str | None = None,
) -> Conversation:
    """The conversation of the user named ``wa_id`` (a phone number or a BSUID)."""
    return await resolve_conversation(
        session, phone_number_id, identities(wa_id), address=wa_id, contact_name=contact_name
    )


async def user_identities(session: AsyncSession, conversation_id: int) -> list[Identity]:
    """Every name recorded for the user of ``conversation_id``."""
    result = await session.exec(
        select(UserIdentity)
        .where(col(UserIdentity.conversation_id) == conversation_id)
        .order_by(col(UserIdentity.id))
    )
    return [(IdentityKind(row.kind), row.value) for row in result.all()]


async def apply_identity_change(
    session: AsyncSession, phone_number_id: str, conversation: Conversation, change: IdentityChange
) -> Conversation:
    """Apply a ``user_changed_number`` / ``user_changed_user_id`` system message to the user's
    conversation: the previous names are retired (a phone number may later belong to someone
    else), the new ones added (merging a conversation already started under them), and
    replies go to the new phone number, else the new BSUID."""
    assert conversation.id is not None
    old = identities(change.previous_wa_id, change.previous_user_id, change.previous_parent_user_id)
    new = identities(change.wa_id, change.user_id, change.parent_user_id)
    retire = [name for name in old if name not in new]
    for kind, value in retire:
        await session.execute(
            delete(UserIdentity)
            .where(
                col(UserIdentity.phone_number_id) == phone_number_id,
                col(UserIdentity.conversation_id) == conversation.id,
                col(UserIdentity.kind) == kind.value,
                col(UserIdentity.value) == value,
            )
            .execution_options(synchronize_session=False)
        )
    if not new:
        return conversation
    address = change.wa_id or change.user_id or None
    # The conversation may be merged into an older one holding the new names.
    return await resolve_conversation(
        session, phone_number_id, new, address=address, into=conversation.id
    )


async def get_message(session: AsyncSession, wamid: str) -> Message | None:
    """The message stored under Meta's id ``wamid``, if any."""
    result = await session.exec(select(Message).where(Message.wamid == wamid))
    return result.one_or_none()


async def record_inbound(session: AsyncSession, msg: InboundMessage) -> InboundRecord:
    """Store an inbound message once: a second call with the same wamid stores nothing and
    returns ``created=False`` with the message stored the first time."""
    conversation = await resolve_conversation(
        session,
        msg.phone_number_id,
        message_identities(msg),
        address=msg.address,
        contact_name=msg.contact_name,
    )
    if msg.identity_change is not None:
        conversation = await apply_identity_change(
            session, msg.phone_number_id, conversation, msg.identity_change
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
    conversation = await resolve_conversation(
        session,
        echo.phone_number_id,
        identities(echo.wa_id, echo.user_id, echo.parent_user_id),
        address=echo.address,
    )
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
    retention_days: int | None = None,
) -> list[Message]:
    """The last ``turns`` messages of a conversation with text, oldest first.

    ``before_message_id`` excludes that message and later ones (the message being answered);
    failed replies are left out: the user never saw them. With ``retention_days`` a message
    past retention is left out too, though the hourly purge has not deleted it yet: the model
    never reads what should be gone.
    """
    if turns <= 0:
        return []
    stmt = select(Message).where(
        col(Message.conversation_id) == conversation_id,
        col(Message.text).is_not(None),
        col(Message.status) != MessageStatus.FAILED.value,
    )
    if retention_days is not None:
        stmt = stmt.where(col(Message.created_at) >= retention_cutoff(retention_days))
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


async def release_claim(session: AsyncSession, message: Message) -> None:
    """Let any task send the pending reply ``message`` (its sender is giving it up)."""
    await session.execute(
        update(Message)
        .where(col(Message.id) == message.id, col(Message.status) == MessageStatus.PENDING.value)
        .values(claimed_by=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    message.claimed_by = None


async def erase_text(session: AsyncSession, wamid: str) -> bool:
    """Forget the text of the inbound message ``wamid`` (the user deleted it); ``True`` when
    there was one."""
    result = await session.execute(
        update(Message)
        .where(
            col(Message.wamid) == wamid,
            col(Message.direction) == Direction.INBOUND.value,
            col(Message.text).is_not(None),
        )
        .values(text=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


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
    message (delivered or read); a failed message stays failed. The recipient's names in the
    status (``recipient_id``, ``recipient_user_id``) are recorded for the conversation the
    message belongs to (a reply sent to a phone number tells us the user's BSUID).
    """
    outcome = await _apply_status(session, update_)
    names = identities(update_.recipient_id, update_.recipient_user_id)
    if names and outcome in (StatusOutcome.APPLIED, StatusOutcome.STALE):
        message = await get_message(session, update_.wamid)
        if message is not None:
            owners = await _owners(session, update_.phone_number_id, names)
            if any(owner != message.conversation_id for owner in owners.values()) or len(
                owners
            ) < len(names):
                conversation = await session.get(Conversation, message.conversation_id)
                if conversation is not None:
                    known = await user_identities(session, message.conversation_id)
                    await resolve_conversation(
                        session, update_.phone_number_id, [*known, *names]
                    )
    return outcome


async def _apply_status(session: AsyncSession, update_: StatusUpdate) -> StatusOutcome:
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


def retention_cutoff(days: int, now: datetime | None = None) -> datetime:
    """The start of retention: what was created before this moment is past ``days`` days, to
    be deleted by the purge and, until it runs, shown to nobody (``holds.messages_of``)."""
    return _utc(now or utcnow()) - timedelta(days=days)


async def purge_older_than(session: AsyncSession, days: int, *, now: datetime | None = None) -> int:
    """Delete messages (and quarantined webhook elements, and inbox rows whose task never
    finished) created more than ``days`` days ago, then conversations left empty and idle as
    long; return the number of messages deleted."""
    cutoff = retention_cutoff(days, now)
    await session.execute(
        delete(QuarantinedEvent).where(col(QuarantinedEvent.created_at) < cutoff)
    )
    await session.execute(delete(InboxEvent).where(col(InboxEvent.created_at) < cutoff))
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
