"""Pydantic models of Meta's WhatsApp webhook payload and their normalization into events.

Meta posts ``{"object": "whatsapp_business_account", "entry": [{"changes": [{"field":
"messages", "value": {...}}]}]}`` where ``value`` holds ``metadata.phone_number_id``, the
senders' ``contacts``, inbound ``messages`` of many types, delivery ``statuses`` of messages we
sent, and value-level ``errors``. The models describe only what the bot reads; every model
ignores unknown fields, and every field Meta may omit is optional, so Meta adding fields or
message types never breaks the webhook. Unknown message types become ``kind="unknown"``.

:func:`extract_events` flattens a payload into the events of :mod:`bot.whatsapp.events`
(the web-tier/worker contract). Details of non-text messages carry media ids, mime types,
coordinates and similar small facts, never URLs with credentials or other secrets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, get_args

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.whatsapp.events import InboundMessage, MessageKind, StatusKind, StatusUpdate

log = structlog.get_logger(__name__)

#: ``object`` of WhatsApp Business Account webhooks; other objects are acknowledged and ignored.
WHATSAPP_OBJECT = "whatsapp_business_account"

_MESSAGE_KINDS: frozenset[str] = frozenset(get_args(MessageKind))
_STATUS_KINDS: frozenset[str] = frozenset(get_args(StatusKind))
_MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
_MAX_DETAIL_TEXT = 2000


class _Model(BaseModel):
    """Base of all payload models: unknown fields are ignored, never an error."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# --------------------------------------------------------------------------------------------
# Shared pieces


class ErrorData(_Model):
    details: str | None = None


class WebhookError(_Model):
    """An error object, as found in ``value.errors``, ``message.errors`` and ``status.errors``."""

    code: int | None = None
    title: str | None = None
    message: str | None = None
    error_data: ErrorData | None = None
    href: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "title": self.title}
        if self.error_data and self.error_data.details:
            out["details"] = self.error_data.details[:_MAX_DETAIL_TEXT]
        return out


class Metadata(_Model):
    display_phone_number: str | None = None
    phone_number_id: str


class Profile(_Model):
    name: str | None = None


class Contact(_Model):
    """A sender in ``value.contacts``; ``user_id`` is Meta's business-scoped user id (BSUID)."""

    profile: Profile | None = None
    wa_id: str | None = None
    user_id: str | None = None


# --------------------------------------------------------------------------------------------
# Message bodies


class Text(_Model):
    body: str = ""


class Button(_Model):
    """A quick-reply button of a template message."""

    payload: str | None = None
    text: str | None = None


class ButtonReply(_Model):
    id: str | None = None
    title: str | None = None


class ListReply(_Model):
    id: str | None = None
    title: str | None = None
    description: str | None = None


class FlowReply(_Model):
    """``interactive.nfm_reply``: the answer of a WhatsApp Flow."""

    name: str | None = None
    body: str | None = None
    response_json: str | None = None


class Interactive(_Model):
    type: str
    button_reply: ButtonReply | None = None
    list_reply: ListReply | None = None
    nfm_reply: FlowReply | None = None


class Media(_Model):
    """``image``, ``audio``, ``video``, ``document`` and ``sticker`` objects."""

    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None
    voice: bool | None = None
    animated: bool | None = None


class Location(_Model):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None
    url: str | None = None


class ContactName(_Model):
    formatted_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None


class ContactPhone(_Model):
    phone: str | None = None
    wa_id: str | None = None
    type: str | None = None


class SharedContact(_Model):
    """One contact card of a ``contacts`` message."""

    name: ContactName | None = None
    phones: list[ContactPhone] = Field(default_factory=list)


class Reaction(_Model):
    message_id: str | None = None
    emoji: str | None = None


class ProductItem(_Model):
    product_retailer_id: str | None = None
    quantity: int | None = None
    item_price: float | None = None
    currency: str | None = None


class Order(_Model):
    catalog_id: str | None = None
    text: str | None = None
    product_items: list[ProductItem] = Field(default_factory=list)


class System(_Model):
    body: str | None = None
    type: str | None = None
    new_wa_id: str | None = None
    wa_id: str | None = None
    customer: str | None = None


class Context(_Model):
    """What the message replies to or forwards."""

    from_: str | None = Field(default=None, alias="from")
    id: str | None = None
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None


class Referral(_Model):
    """A click-to-WhatsApp ad the user came from."""

    source_type: str | None = None
    source_id: str | None = None
    headline: str | None = None


class Message(_Model):
    """One inbound message in ``value.messages``."""

    from_: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    id: str = Field(min_length=1)
    timestamp: str | int | None = None
    type: str = "unknown"
    context: Context | None = None
    referral: Referral | None = None
    text: Text | None = None
    button: Button | None = None
    interactive: Interactive | None = None
    image: Media | None = None
    audio: Media | None = None
    video: Media | None = None
    document: Media | None = None
    sticker: Media | None = None
    location: Location | None = None
    contacts: list[SharedContact] | None = None
    reaction: Reaction | None = None
    order: Order | None = None
    system: System | None = None
    errors: list[WebhookError] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Statuses


class ConversationOrigin(_Model):
    type: str | None = None


class Conversation(_Model):
    id: str | None = None
    origin: ConversationOrigin | None = None
    expiration_timestamp: str | int | None = None


class Pricing(_Model):
    billable: bool | None = None
    pricing_model: str | None = None
    category: str | None = None
    type: str | None = None


class Status(_Model):
    """A delivery status in ``value.statuses`` of a message the business sent."""

    id: str = Field(min_length=1)
    status: str
    timestamp: str | int | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    errors: list[WebhookError] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Envelope


class Value(_Model):
    messaging_product: str | None = None
    metadata: Metadata | None = None
    contacts: list[Contact] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)
    statuses: list[Status] = Field(default_factory=list)
    errors: list[WebhookError] = Field(default_factory=list)


class Change(_Model):
    field: str = "messages"
    value: Value = Field(default_factory=Value)


class Entry(_Model):
    id: str | None = None
    changes: list[Change] = Field(default_factory=list)


class WebhookPayload(_Model):
    """The body of a webhook POST."""

    object: str
    entry: list[Entry] = Field(default_factory=list)


class PayloadError(ValueError):
    """The body is not JSON or not a webhook payload; ``reason`` is safe to return and log."""

    def __init__(self, reason: str, *, status_code: int = 422) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


def parse_payload(body: bytes | str | Mapping[str, Any]) -> WebhookPayload:
    """Parse a raw body (or decoded JSON) into a :class:`WebhookPayload`.

    Raises :class:`PayloadError` with ``status_code`` 400 for bodies that are not JSON objects
    and 422 for JSON that is not shaped like a webhook payload. The reason names the fields
    that are wrong but never echoes their values.
    """
    data: Any
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(
                f"body is not valid JSON: {_json_error(exc)}", status_code=400
            ) from None
        except RecursionError:
            raise PayloadError("body is nested too deeply", status_code=400) from None
    else:
        data = body
    if not isinstance(data, Mapping):
        raise PayloadError("body is not a JSON object", status_code=400)
    try:
        return WebhookPayload.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)[:5]
        ]
        raise PayloadError(
            "payload does not match the webhook schema: " + "; ".join(problems)
        ) from None


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return type(exc).__name__


# --------------------------------------------------------------------------------------------
# Normalization


def _timestamp(raw: str | int | None) -> datetime:
    if raw is not None:
        try:
            return datetime.fromtimestamp(int(raw), tz=UTC)
        except (ValueError, OverflowError, OSError):
            pass
    return datetime.now(UTC)


def _clip(text: str | None) -> str | None:
    return text[:_MAX_DETAIL_TEXT] if text else text


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _media_details(media: Media) -> dict[str, Any]:
    return _drop_none(
        {
            "media_id": media.id,
            "mime_type": media.mime_type,
            "sha256": media.sha256,
            "filename": media.filename,
            "voice": media.voice,
            "animated": media.animated,
        }
    )


def _content(msg: Message) -> tuple[MessageKind, str | None, dict[str, Any]]:
    """The kind, text and details of one message."""
    mtype = msg.type
    if mtype == "text" and msg.text is not None:
        return "text", msg.text.body, {}
    if mtype == "button" and msg.button is not None:
        return "button", msg.button.text, _drop_none({"payload": msg.button.payload})
    if mtype == "interactive" and msg.interactive is not None:
        inter = msg.interactive
        details: dict[str, Any] = {"interactive_type": inter.type}
        text: str | None = None
        if inter.button_reply is not None:
            text = inter.button_reply.title
            details["reply_id"] = inter.button_reply.id
        elif inter.list_reply is not None:
            text = inter.list_reply.title
            details["reply_id"] = inter.list_reply.id
            details["description"] = inter.list_reply.description
        elif inter.nfm_reply is not None:
            text = inter.nfm_reply.body
            details["flow_name"] = inter.nfm_reply.name
            details["response_json"] = _clip(inter.nfm_reply.response_json)
        return "interactive", text, _drop_none(details)
    if mtype in _MEDIA_KINDS:
        media: Media | None = getattr(msg, mtype)
        if media is not None:
            kind: MessageKind = mtype  # type: ignore[assignment]
            return kind, media.caption, _media_details(media)
    if mtype == "location" and msg.location is not None:
        loc = msg.location
        parts = [p for p in (loc.name, loc.address) if p]
        details = _drop_none(
            {
                "latitude": loc.latitude,
                "longitude": loc.longitude,
                "name": loc.name,
                "address": loc.address,
                "url": loc.url,
            }
        )
        return "location", ", ".join(parts) or None, details
    if mtype == "contacts" and msg.contacts is not None:
        cards = [
            _drop_none(
                {
                    "name": c.name.formatted_name if c.name else None,
                    "phones": [p.phone or p.wa_id for p in c.phones if p.phone or p.wa_id],
                }
            )
            for c in msg.contacts
        ]
        return "contacts", None, {"contacts": cards}
    if mtype == "reaction" and msg.reaction is not None:
        # An empty emoji means the user removed their reaction.
        return (
            "reaction",
            None,
            _drop_none({"message_id": msg.reaction.message_id, "emoji": msg.reaction.emoji}),
        )
    if mtype == "order" and msg.order is not None:
        items = [
            _drop_none(
                {
                    "product_retailer_id": i.product_retailer_id,
                    "quantity": i.quantity,
                    "item_price": i.item_price,
                    "currency": i.currency,
                }
            )
            for i in msg.order.product_items
        ]
        return (
            "order",
            msg.order.text,
            _drop_none({"catalog_id": msg.order.catalog_id, "items": items}),
        )
    if mtype == "system" and msg.system is not None:
        sysmsg = msg.system
        details = _drop_none(
            {"system_type": sysmsg.type, "new_wa_id": sysmsg.new_wa_id or sysmsg.wa_id}
        )
        return "system", sysmsg.body, details
    # Unsupported by the Cloud API, a type newer than these models, or a known type whose body
    # is missing: acknowledged and passed on so the worker can answer politely.
    details = {"type": mtype}
    if msg.errors:
        details["errors"] = [e.summary() for e in msg.errors]
    return ("unsupported" if mtype == "unsupported" else "unknown"), None, details


def _contact_name(contacts: list[Contact], sender: str | None) -> str | None:
    for contact in contacts:
        if sender is not None and sender in (contact.wa_id, contact.user_id):
            return contact.profile.name if contact.profile else None
    if len(contacts) == 1 and contacts[0].profile is not None:
        return contacts[0].profile.name
    return None


def _inbound(msg: Message, value: Value, phone_number_id: str) -> InboundMessage:
    kind, text, details = _content(msg)
    sender = msg.from_ or msg.from_user_id
    if sender is None and value.contacts:
        sender = value.contacts[0].wa_id or value.contacts[0].user_id
    if msg.from_ and msg.from_user_id:
        details["user_id"] = msg.from_user_id
    if msg.context is not None and msg.context.id:
        details["context_id"] = msg.context.id
    if msg.context is not None and msg.context.forwarded:
        details["forwarded"] = True
    if msg.referral is not None:
        details["referral"] = _drop_none(
            {"source_type": msg.referral.source_type, "source_id": msg.referral.source_id}
        )
    return InboundMessage(
        wamid=msg.id,
        phone_number_id=phone_number_id,
        wa_id=sender or "",
        contact_name=_contact_name(value.contacts, sender),
        kind=kind,
        text=text,
        timestamp=_timestamp(msg.timestamp),
        details=details,
    )


def _status(status: Status, phone_number_id: str) -> StatusUpdate | None:
    if status.status not in _STATUS_KINDS:
        log.info("webhook.status_unknown", status=status.status, wamid=status.id)
        return None
    error = status.errors[0] if status.errors else None
    return StatusUpdate.model_validate(
        {
            "wamid": status.id,
            "phone_number_id": phone_number_id,
            "recipient_id": status.recipient_id or status.recipient_user_id,
            "status": status.status,
            "timestamp": _timestamp(status.timestamp),
            "error_code": error.code if error else None,
            "error_title": (error.title or error.message) if error else None,
        }
    )


def extract_events(
    payload: WebhookPayload | Mapping[str, Any],
    phone_number_id: str | None = None,
) -> tuple[list[InboundMessage], list[StatusUpdate], list[str]]:
    """Flatten a webhook payload into ``(messages, statuses, foreign_phone_number_ids)``.

    With ``phone_number_id`` given, changes addressed to any other phone number id are left
    out and their ids returned (once each, in order) as the third element, so the caller can
    acknowledge and log them. Changes without metadata (not message events) are skipped.
    Value-level ``errors`` are logged. A mapping is validated first (:func:`parse_payload`).
    """
    if not isinstance(payload, WebhookPayload):
        payload = parse_payload(payload)
    messages: list[InboundMessage] = []
    statuses: list[StatusUpdate] = []
    foreign: list[str] = []
    if payload.object != WHATSAPP_OBJECT:
        return messages, statuses, foreign
    for entry in payload.entry:
        for change in entry.changes:
            value = change.value
            if value.metadata is None:
                continue
            pnid = value.metadata.phone_number_id
            if phone_number_id is not None and pnid != phone_number_id:
                if pnid not in foreign:
                    foreign.append(pnid)
                continue
            for error in value.errors:
                log.warning("webhook.value_error", phone_number_id=pnid, **error.summary())
            messages.extend(_inbound(m, value, pnid) for m in value.messages)
            for s in value.statuses:
                update = _status(s, pnid)
                if update is not None:
                    statuses.append(update)
    return messages, statuses, foreign
