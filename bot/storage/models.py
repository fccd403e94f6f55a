"""SQLModel tables: one ``Conversation`` per (agent phone number, WhatsApp user), the user's
identities (``UserIdentity``: phone number, BSUID, parent BSUID), the ``Message``s, the
webhook elements kept aside (``QuarantinedEvent``) and the ``InboxEvent``s the worker has not
finished with.

A user is one person whether Meta names them by phone number, business-scoped user ID (BSUID)
or parent BSUID: each name is a row of ``user_identities`` pointing at the one conversation,
unique per agent phone number, so a message under any of them finds the same history.

Timestamps are timezone-aware UTC. Column names, lengths and indexes here must match the
Alembic revisions in ``bot/migrations/versions``: production never creates tables from these
classes, only tests and the embedded ``released run`` path go through the migrations too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always hands back aware UTC datetimes, also on SQLite
    (which stores no zone): values are converted to UTC on the way in."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value  # type: ignore[no-any-return]


class Direction(StrEnum):
    """Who sent a message: the WhatsApp user (inbound) or the agent (outbound)."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageStatus(StrEnum):
    """Lifecycle of a message. Inbound messages are ``received``; outbound ones move forward
    ``pending`` → ``sent`` → ``delivered`` → ``read``, or end ``failed``."""

    RECEIVED = "received"
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


#: Rank of outbound statuses: a status event only applies when it moves the message forward.
STATUS_RANK: dict[str, int] = {
    MessageStatus.PENDING: 0,
    MessageStatus.SENT: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
}


#: Longest identity stored: a BSUID is a two-letter prefix, a dot and up to 128 characters.
MAX_IDENTITY_LENGTH = 256


class IdentityKind(StrEnum):
    """How Meta names a user: phone number (``wa_id``/``from``), BSUID (``user_id``), parent
    BSUID (``parent_user_id``, shared across a business's linked portfolios)."""

    PHONE = "phone"
    USER_ID = "user_id"
    PARENT_USER_ID = "parent_user_id"


class Conversation(SQLModel, table=True):
    """The thread between one agent phone number and one WhatsApp user (one person, however
    many identities: see :class:`UserIdentity`)."""

    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_phone_wa", "phone_number_id", "wa_id"),
        Index("ix_conversations_held_until", "held_until"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    phone_number_id: str = Field(sa_column=Column(String(64), nullable=False))
    #: Where the user was last reached: their phone number, else their BSUID.
    wa_id: str = Field(sa_column=Column(String(MAX_IDENTITY_LENGTH), nullable=False))
    contact_name: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    #: Held by a person until then: the bot stores the user's messages and does not answer
    #: (``bot.handover``). ``None`` or past: the bot answers.
    held_until: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    #: When the current (or last) hold started, and why (``bot.handover.Reason``).
    held_since: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    held_reason: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    #: Who holds it or a note from them (the admin API's ``reason``), for people to read.
    held_by: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    #: Messages the user sent while held (not answered by the bot), since ``held_since``.
    held_messages: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )
    #: When a person last released it: echoes and statuses older than that hold nothing.
    released_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    #: Fallback answers in a row (``HANDOVER_AFTER_FALLBACKS``); a real answer resets it.
    consecutive_fallbacks: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )


class UserIdentity(SQLModel, table=True):
    """One name of a user (``kind``: :class:`IdentityKind`) for one agent phone number, and the
    conversation it belongs to. Unique per (phone number id, kind, value)."""

    __tablename__ = "user_identities"
    __table_args__ = (
        UniqueConstraint("phone_number_id", "kind", "value", name="uq_user_identities_value"),
        Index("ix_user_identities_conversation", "conversation_id"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    conversation_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey(
                "conversations.id", ondelete="CASCADE", name="fk_user_identities_conversation_id"
            ),
            nullable=False,
        )
    )
    phone_number_id: str = Field(sa_column=Column(String(64), nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    value: str = Field(sa_column=Column(String(MAX_IDENTITY_LENGTH), nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class Message(SQLModel, table=True):
    """One WhatsApp message, either way. ``wamid`` is Meta's message id (unique; ``None`` for an
    outbound message not sent yet); ``reply_to`` is the inbound wamid an outbound message answers
    (unique, which makes "one reply per inbound message" a database guarantee)."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("wamid", name="uq_messages_wamid"),
        UniqueConstraint("reply_to", name="uq_messages_reply_to"),
        Index("ix_messages_created_at", "created_at"),
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    conversation_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("conversations.id", ondelete="CASCADE", name="fk_messages_conversation_id"),
            nullable=False,
        )
    )
    direction: str = Field(sa_column=Column(String(16), nullable=False))
    wamid: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    reply_to: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    kind: str = Field(default="text", sa_column=Column(String(32), nullable=False))
    text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: Where an outbound answer came from: model, faq, fallback, canned (a fixed reply for a
    #: kind of message, ``bot.replies``), template (outside the 24-hour window).
    source: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    #: Who is sending a pending reply (the Celery task id): a retry of the same task resends,
    #: another task leaves it alone until the claim goes stale.
    claimed_by: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    error_code: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    error_title: str | None = Field(default=None, sa_column=Column(String(512), nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class QuarantinedEvent(SQLModel, table=True):
    """An element of a signed webhook delivery that was kept aside instead of processed: it did
    not parse, Meta sent a status value the bot does not know, or the delivery held more
    elements than one may queue (``bot.whatsapp.payload.Quarantined``). ``raw`` is the
    element's JSON for a person to look at; ``reason`` names field paths, never values.
    ``fingerprint`` makes a redelivered delivery store nothing twice. Purged with the messages
    after ``RETENTION_DAYS``."""

    __tablename__ = "quarantined_events"
    __table_args__ = (
        UniqueConstraint("fingerprint", name="uq_quarantined_events_fingerprint"),
        Index("ix_quarantined_events_created_at", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    fingerprint: str = Field(sa_column=Column(String(64), nullable=False))
    phone_number_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    field: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    element: str = Field(sa_column=Column(String(16), nullable=False))
    cause: str = Field(sa_column=Column(String(16), nullable=False))
    path: str = Field(sa_column=Column(String(256), nullable=False))
    wamid: str | None = Field(default=None, sa_column=Column(String(256), nullable=True))
    reason: str = Field(sa_column=Column(String(512), nullable=False))
    raw: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )


class InboxEvent(SQLModel, table=True):
    """A message or echo the web tier received, waiting for its task (``bot.storage.inbox``):
    the Celery queue carries only its wamid, so no message text reaches Redis. ``event`` is
    ``message`` or ``echo``, ``payload`` the event's JSON (``bot.whatsapp.events``). Deleted
    when the task is done, else with the messages after ``RETENTION_DAYS``. The web tier writes
    it without SQLAlchemy (``bot.storage.ingest``)."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_created_at", "created_at"),)

    wamid: str = Field(sa_column=Column(String(256), primary_key=True))
    event: str = Field(sa_column=Column(String(16), nullable=False))
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
