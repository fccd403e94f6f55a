"""The normalized events that the web tier queues and the worker consumes.

Meta's webhook payload (``bot.whatsapp.payload``) is deep and varied; the web tier turns it into
these flat, JSON-serializable events, one per message, status or echo. They are the only
contract between the web tier and the Celery tasks (``model_dump(mode="json")`` in,
``model_validate`` out), so either side can change its internals freely. Messages and echoes
carry text, so they travel through the database's inbox (``bot.storage.ingest``, then
``bot.storage.inbox``) and the task gets an :class:`InboxRef`: nothing a user wrote is ever
written to Redis (its queue, its append-only file, its snapshots). Statuses go as they are.

- :class:`InboundMessage` -> ``bot.tasks.process_message``: what a WhatsApp user sent (field
  ``messages``), including edits, deletions (revoke), the welcome request, group messages and
  identity-change ``system`` messages (:class:`IdentityChange`);
- :class:`StatusUpdate` -> ``bot.tasks.record_status``: the delivery status of a message the
  agent sent (field ``messages``, ``statuses[]``);
- :class:`EchoMessage` -> ``bot.tasks.process_echo``: a message the business itself sent from
  the WhatsApp Business app or a linked device (field ``smb_message_echoes``): a person is
  talking to the user, which is what a handover needs to know.

Identities (Meta, 2026): a user is named by a phone number (``wa_id``/``from``, may be absent
or empty), a business-scoped user ID (BSUID, ``user_id``/``from_user_id``, always present on
current payloads, up to 256 characters) and sometimes a parent BSUID. The events carry each
one separately: ``wa_id`` is the phone number (``""`` when Meta did not share it), ``user_id``
the BSUID, ``parent_user_id`` the parent BSUID; ``address`` is where a reply goes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

MessageKind = Literal[
    "text",
    "button",
    "interactive",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "reaction",
    "order",
    "system",
    "edit",
    "revoke",
    "request_welcome",
    "unsupported",
    "unknown",
]

StatusKind = Literal["sent", "delivered", "read", "failed", "deleted", "warning"]


#: A business-scoped user ID: a two-letter prefix, a dot and up to 128 characters; stored up to
#: 256 in case Meta lengthens it.
MAX_USER_ID_LENGTH = 256


class IdentityChange(BaseModel):
    """A ``system`` message saying that a user's identity changed.

    ``type`` is ``user_changed_number`` (a new phone number, and with it a new BSUID) or
    ``user_changed_user_id`` (a new BSUID only). ``wa_id``/``user_id``/``parent_user_id`` are
    the new values, ``previous_*`` the old ones (the message's sender names the user by them).
    """

    type: str
    wa_id: str | None = None
    user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)
    parent_user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)
    previous_wa_id: str | None = None
    previous_user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)
    previous_parent_user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)


class InboundMessage(BaseModel):
    """One message a WhatsApp user sent to the agent's phone number.

    The sender is named by phone number (``wa_id``), business-scoped user ID (``user_id``,
    always present since April 2026) and, for some users, a parent BSUID; a user who adopted a
    username may come with ``user_id`` only. :attr:`address` is how a reply reaches them.
    """

    wamid: str = Field(min_length=1, max_length=256)
    phone_number_id: str
    wa_id: str = Field(
        default="",
        description="The sender's phone number (digits); empty when Meta did not share it.",
    )
    user_id: str | None = Field(
        default=None,
        max_length=MAX_USER_ID_LENGTH,
        description="The sender's business-scoped user ID (BSUID).",
    )
    parent_user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)
    contact_name: str | None = None
    kind: MessageKind
    #: What the user said, as text: the body of a text message, the title of a button or list
    #: reply, a media caption; ``None`` when the message carries no text at all.
    text: str | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: Small, non-secret details of non-text messages (media id and mime type, coordinates...).
    details: dict[str, Any] = Field(default_factory=dict)
    #: The group the message was sent in (group messages get no private reply).
    group_id: str | None = None
    #: ``edit`` and ``revoke``: the wamid of the message that was edited or deleted.
    original_wamid: str | None = Field(default=None, max_length=256)
    #: ``system`` messages that change the user's phone number or BSUID.
    identity_change: IdentityChange | None = None

    @property
    def address(self) -> str:
        """Where a reply goes: the phone number when Meta shared one, else the BSUID."""
        return self.wa_id or self.user_id or ""


class InboxRef(BaseModel):
    """What the queue carries for a message or an echo: the wamid of its inbox row."""

    inbox: str = Field(min_length=1, max_length=256)


class StatusUpdate(BaseModel):
    """A delivery status of a message the agent sent (sent, delivered, read, failed)."""

    wamid: str = Field(min_length=1, max_length=256)
    phone_number_id: str
    #: The recipient's phone number (``recipient_id``), when Meta shared it.
    recipient_id: str | None = None
    #: The recipient's business-scoped user ID (``recipient_user_id``).
    recipient_user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)
    status: StatusKind
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    error_code: int | None = None
    error_title: str | None = None


class EchoMessage(BaseModel):
    """A message the business sent from the WhatsApp Business app or a linked device
    (``smb_message_echoes``), edits and deletions of such messages included.

    Not a question to answer: a person at the business is talking to the user, named as in
    :class:`InboundMessage` (``wa_id`` from the echo's ``to``, ``user_id`` from ``to_user_id``).
    """

    wamid: str = Field(min_length=1, max_length=256)
    phone_number_id: str
    wa_id: str = Field(default="", description="The user's phone number; empty when not shared.")
    user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)
    parent_user_id: str | None = Field(default=None, max_length=MAX_USER_ID_LENGTH)
    kind: MessageKind
    text: str | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    details: dict[str, Any] = Field(default_factory=dict)
    #: ``edit`` and ``revoke``: the wamid of the message that was edited or deleted.
    original_wamid: str | None = Field(default=None, max_length=256)

    @property
    def address(self) -> str:
        """The user it went to: the phone number when Meta shared one, else the BSUID."""
        return self.wa_id or self.user_id or ""
