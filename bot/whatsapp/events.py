"""The normalized events that the web tier queues and the worker consumes.

Meta's webhook payload (``bot.whatsapp.payload``) is deep and varied; the web tier turns it into
these flat, JSON-serializable events, one per message or status. They are the only contract
between the web tier and the Celery tasks (``model_dump(mode="json")`` in, ``model_validate``
out), so either side can change its internals freely.
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
    "unsupported",
    "unknown",
]

StatusKind = Literal["sent", "delivered", "read", "failed", "deleted", "warning"]


class InboundMessage(BaseModel):
    """One message a WhatsApp user sent to the agent's phone number."""

    wamid: str = Field(min_length=1, max_length=256)
    phone_number_id: str
    wa_id: str = Field(description="The sender's WhatsApp ID (their phone number, digits).")
    contact_name: str | None = None
    kind: MessageKind
    #: What the user said, as text: the body of a text message, the title of a button or list
    #: reply, a media caption; ``None`` when the message carries no text at all.
    text: str | None = None
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    #: Small, non-secret details of non-text messages (media id and mime type, coordinates...).
    details: dict[str, Any] = Field(default_factory=dict)


class StatusUpdate(BaseModel):
    """A delivery status of a message the agent sent (sent, delivered, read, failed)."""

    wamid: str = Field(min_length=1, max_length=256)
    phone_number_id: str
    recipient_id: str | None = None
    status: StatusKind
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    error_code: int | None = None
    error_title: str | None = None
