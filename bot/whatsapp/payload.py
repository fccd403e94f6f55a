"""Meta's WhatsApp webhook payload, parsed element by element into the events of the bot.

Meta posts ``{"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes":
[{"field": F, "value": {...}}]}]}``, batched: several entries, changes and elements in one
delivery of up to 3 MB. What ``value`` holds depends on ``change.field``:

- ``messages``: ``metadata.phone_number_id``, the senders' ``contacts``, inbound ``messages``
  of many types, delivery ``statuses`` of messages the agent sent and value-level ``errors``;
- ``smb_message_echoes``: ``message_echoes``, messages the business sent itself from the
  WhatsApp Business app or a linked device;
- anything else (``calls``, ``account_update``, ``message_template_status_update``, ...): not
  messages and not statuses; acknowledged and counted, nothing queued.

:func:`parse_delivery` turns a signed body into a :class:`Delivery`. Each message, status and
echo is validated **on its own**: one odd element (an interactive message without ``type``, a
word where Meta sends a number, a wamid of 300 characters) becomes a :class:`Quarantined`
record with its reason and its raw JSON, while the others proceed. Elements beyond
``max_events`` per delivery are quarantined the same way, so one payload cannot enqueue
thousands of tasks. Only a body that is not a JSON object at all is refused
(:class:`PayloadError`, 400).

The element models describe only what the bot reads; unknown fields are ignored, every field
Meta may omit is optional, numbers sent where a string is expected (ids, phone numbers) are
taken as strings, and unknown message types become ``kind="unknown"``, so Meta adding fields
or types never breaks the webhook. Details of non-text messages carry media ids, mime types,
coordinates and similar small facts, never URLs with credentials or other secrets.

Reasons name field paths and pydantic's messages, never the values (which may hold anything).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.core.logging import redact
from bot.whatsapp.events import (
    EchoMessage,
    IdentityChange,
    InboundMessage,
    MessageKind,
    StatusKind,
    StatusUpdate,
)

log = structlog.get_logger(__name__)

#: ``object`` of WhatsApp Business Account webhooks; other objects are acknowledged and ignored.
WHATSAPP_OBJECT = "whatsapp_business_account"
#: ``change.field`` values whose elements the bot turns into events.
MESSAGES_FIELD = "messages"
ECHOES_FIELD = "smb_message_echoes"
#: Other fields Meta sends to a WhatsApp webhook; they are counted by name, anything else as
#: "other" (a label set that payloads cannot grow).
KNOWN_OTHER_FIELDS = frozenset(
    {
        "account_alerts",
        "account_review_update",
        "account_update",
        "business_capability_update",
        "calls",
        "flows",
        "history",
        "message_template_components_update",
        "message_template_quality_update",
        "message_template_status_update",
        "partner_solutions",
        "payment_configuration_update",
        "phone_number_name_update",
        "phone_number_quality_update",
        "security",
        "smb_app_state_sync",
        "template_category_update",
        "user_preferences",
    }
)
#: ``system.type`` values that change who the user is (applied by the worker).
IDENTITY_CHANGE_TYPES = frozenset({"user_changed_number", "user_changed_user_id"})
#: Elements (messages + statuses + echoes for this agent) queued per delivery, by default.
DEFAULT_MAX_EVENTS = 250

_MESSAGE_KINDS: frozenset[str] = frozenset(get_args(MessageKind))
_STATUS_KINDS: frozenset[str] = frozenset(get_args(StatusKind))
_MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
_MAX_DETAIL_TEXT = 2000
#: How much of a quarantined element's JSON is kept.
MAX_RAW_CHARS = 64 * 1024


class _Model(BaseModel):
    """Base of all payload models: unknown fields are ignored, never an error; a number where
    Meta documents a string (ids, phone numbers) is taken as its decimal string."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, coerce_numbers_to_str=True)


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
        """Code, title and details, the details redacted before they are cut short."""
        out: dict[str, Any] = {"code": self.code, "title": self.title}
        if self.error_data and self.error_data.details:
            out["details"] = redact(self.error_data.details)[:_MAX_DETAIL_TEXT]
        return out


class Metadata(_Model):
    display_phone_number: str | None = None
    phone_number_id: str = Field(min_length=1)


class Profile(_Model):
    name: str | None = None


class Contact(_Model):
    """A sender in ``value.contacts``: phone number (``wa_id``, may be absent or ``""``),
    business-scoped user id (``user_id``) and parent BSUID."""

    profile: Profile | None = None
    wa_id: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None


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
    """An interactive reply; ``type`` is inferred from the reply present when Meta omits it."""

    type: str | None = None
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
    """An identity-change notice: ``user_changed_number`` or ``user_changed_user_id``.

    The new phone number is ``wa_id`` (``new_wa_id`` on old Graph versions); BSUIDs come as
    ``user_id``/``parent_user_id`` with their ``previous_*`` values.
    """

    body: str | None = None
    type: str | None = None
    new_wa_id: str | None = None
    wa_id: str | None = None
    previous_wa_id: str | None = None
    customer: str | None = None
    user_id: str | None = None
    parent_user_id: str | None = None
    previous_user_id: str | None = None
    previous_parent_user_id: str | None = None


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


class Revoke(_Model):
    original_message_id: str | None = None


class Content(_Model):
    """What a message says: the type and its body object (shared by inbound messages, echoes
    and the new version inside an edit)."""

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


class Edit(_Model):
    original_message_id: str | None = None
    message: Content | None = None


class Message(Content):
    """One inbound message in ``value.messages``."""

    from_: str | None = Field(default=None, alias="from")
    from_user_id: str | None = None
    from_parent_user_id: str | None = None
    group_id: str | None = None
    id: str = Field(min_length=1)
    timestamp: str | None = None
    edit: Edit | None = None
    revoke: Revoke | None = None


class Echo(Content):
    """One message in ``value.message_echoes``: ``from`` is the business, ``to`` the user."""

    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    to_user_id: str | None = None
    to_parent_user_id: str | None = None
    id: str = Field(min_length=1)
    timestamp: str | None = None
    edit: Edit | None = None
    revoke: Revoke | None = None


# --------------------------------------------------------------------------------------------
# Statuses


class ConversationOrigin(_Model):
    type: str | None = None


class Conversation(_Model):
    id: str | None = None
    origin: ConversationOrigin | None = None
    expiration_timestamp: str | None = None


class Pricing(_Model):
    billable: bool | None = None
    pricing_model: str | None = None
    category: str | None = None
    type: str | None = None


class Status(_Model):
    """A delivery status in ``value.statuses`` of a message the business sent."""

    id: str = Field(min_length=1)
    status: str
    timestamp: str | None = None
    recipient_id: str | None = None
    recipient_user_id: str | None = None
    recipient_parent_user_id: str | None = None
    conversation: Conversation | None = None
    pricing: Pricing | None = None
    errors: list[WebhookError] = Field(default_factory=list)


# --------------------------------------------------------------------------------------------
# What a delivery holds


ElementKind = Literal["delivery", "entry", "change", "message", "status", "echo"]


class Quarantined(BaseModel):
    """An element of a signed delivery that was kept aside instead of processed.

    ``path`` locates it in the delivery (``entry[0].changes[1].value.messages[3]``);
    ``reason`` says what was wrong in field paths and messages, never values; ``raw`` is the
    element's JSON (at most :data:`MAX_RAW_CHARS`), for a person to look at.
    """

    element: ElementKind
    path: str
    reason: str
    #: ``invalid``: the element does not parse; ``over_cap``: more elements than a delivery may
    #: queue; ``unknown_status``: a status value the bot does not know.
    cause: Literal["invalid", "over_cap", "unknown_status"] = "invalid"
    phone_number_id: str | None = None
    field: str | None = None
    wamid: str | None = None
    raw: str


@dataclass
class Delivery:
    """One signed webhook body, parsed: the events to queue and what was kept aside.

    ``messages``, ``statuses`` and ``echoes`` are for this agent's phone number only (when one
    was given); ``foreign`` lists the other phone number ids met (once each), ``other_fields``
    the ``change.field`` of every change that is neither messages nor echoes.
    """

    object: str | None = None
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    echoes: list[EchoMessage] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    other_fields: list[str] = field(default_factory=list)

    @property
    def event_count(self) -> int:
        return len(self.messages) + len(self.statuses) + len(self.echoes)


class PayloadError(ValueError):
    """The body is not a JSON object; ``reason`` is safe to return and log."""

    def __init__(self, reason: str, *, status_code: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


def load_json_object(body: bytes | str) -> dict[str, Any]:
    """The decoded JSON object of ``body``, or :class:`PayloadError` (400) with the reason."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not valid JSON: {_json_error(exc)}") from None
    except RecursionError:
        raise PayloadError("body is nested too deeply") from None
    if not isinstance(data, dict):
        raise PayloadError("body is not a JSON object")
    return data


def _json_error(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return type(exc).__name__


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False)[:5]
    )


def _raw(element: Any) -> str:
    try:
        text = json.dumps(element, ensure_ascii=False, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(type(element))
    return text[:MAX_RAW_CHARS]


# --------------------------------------------------------------------------------------------
# Normalization of one element


def _timestamp(raw: str | None) -> datetime:
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


def _blank_none(value: str | None) -> str | None:
    """Meta sends ``""`` for a phone number it does not share: the same as absent."""
    return value or None


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


def _interactive(inter: Interactive) -> tuple[str | None, dict[str, Any]]:
    kind = inter.type
    text: str | None = None
    details: dict[str, Any] = {}
    if inter.button_reply is not None:
        kind = kind or "button_reply"
        text = inter.button_reply.title
        details["reply_id"] = inter.button_reply.id
    elif inter.list_reply is not None:
        kind = kind or "list_reply"
        text = inter.list_reply.title
        details["reply_id"] = inter.list_reply.id
        details["description"] = inter.list_reply.description
    elif inter.nfm_reply is not None:
        kind = kind or "nfm_reply"
        text = inter.nfm_reply.body
        details["flow_name"] = inter.nfm_reply.name
        details["response_json"] = _clip(inter.nfm_reply.response_json)
    return text, _drop_none({"interactive_type": kind, **details})


def _content(msg: Content) -> tuple[MessageKind, str | None, dict[str, Any]]:
    """The kind, text and details of what a message says (edits and revokes aside)."""
    mtype = msg.type
    if mtype == "text" and msg.text is not None:
        return "text", msg.text.body, {}
    if mtype == "button" and msg.button is not None:
        return "button", msg.button.text, _drop_none({"payload": msg.button.payload})
    if mtype == "interactive" and msg.interactive is not None:
        text, details = _interactive(msg.interactive)
        return "interactive", text, details
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
            {"system_type": sysmsg.type, "new_wa_id": sysmsg.wa_id or sysmsg.new_wa_id}
        )
        return "system", sysmsg.body, details
    if mtype == "request_welcome":
        return "request_welcome", None, {}
    # Unsupported by the Cloud API, a type newer than these models, or a known type whose body
    # is missing: acknowledged and passed on so the worker can answer politely.
    details = {"type": mtype}
    if msg.errors:
        details["errors"] = [e.summary() for e in msg.errors]
    return ("unsupported" if mtype == "unsupported" else "unknown"), None, details


def _edit_or_revoke(
    msg: Message | Echo,
) -> tuple[MessageKind, str | None, dict[str, Any], str | None] | None:
    """``(kind, text, details, original_wamid)`` of an edit or a revoke, else ``None``."""
    if msg.type == "edit" and msg.edit is not None:
        details: dict[str, Any] = {}
        text: str | None = None
        if msg.edit.message is not None:
            edited_kind, text, edited_details = _content(msg.edit.message)
            details = {"edited_type": edited_kind, **edited_details}
        return "edit", text, details, msg.edit.original_message_id
    if msg.type == "revoke" and msg.revoke is not None:
        return "revoke", None, {}, msg.revoke.original_message_id
    return None


def _message_content(
    msg: Message | Echo,
) -> tuple[MessageKind, str | None, dict[str, Any], str | None]:
    special = _edit_or_revoke(msg)
    if special is not None:
        return special
    kind, text, details = _content(msg)
    return kind, text, details, None


def _identity_change(msg: Message) -> IdentityChange | None:
    sysmsg = msg.system
    if msg.type != "system" or sysmsg is None or sysmsg.type not in IDENTITY_CHANGE_TYPES:
        return None
    # The message's sender names the user as they were: the previous identifiers.
    return IdentityChange(
        type=sysmsg.type,
        wa_id=_blank_none(sysmsg.wa_id or sysmsg.new_wa_id),
        user_id=_blank_none(sysmsg.user_id),
        parent_user_id=_blank_none(sysmsg.parent_user_id),
        previous_wa_id=_blank_none(sysmsg.previous_wa_id) or _blank_none(msg.from_),
        previous_user_id=_blank_none(sysmsg.previous_user_id) or _blank_none(msg.from_user_id),
        previous_parent_user_id=_blank_none(sysmsg.previous_parent_user_id)
        or _blank_none(msg.from_parent_user_id),
    )


def _find_contact(
    contacts: list[Contact], phone: str | None, user_id: str | None
) -> Contact | None:
    for contact in contacts:
        if (phone and contact.wa_id == phone) or (user_id and contact.user_id == user_id):
            return contact
    if len(contacts) == 1:
        return contacts[0]
    return None


def inbound_message(msg: Message, contacts: list[Contact], phone_number_id: str) -> InboundMessage:
    """The :class:`InboundMessage` of one parsed message (raises ``ValidationError`` when the
    result breaks the event contract, e.g. a wamid of more than 256 characters)."""
    kind, text, details, original = _message_content(msg)
    phone = _blank_none(msg.from_)
    user_id = _blank_none(msg.from_user_id)
    contact = _find_contact(contacts, phone, user_id)
    if contact is not None:
        phone = phone or _blank_none(contact.wa_id)
        user_id = user_id or _blank_none(contact.user_id)
    parent = _blank_none(msg.from_parent_user_id) or (
        _blank_none(contact.parent_user_id) if contact is not None else None
    )
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
        wa_id=phone or "",
        user_id=user_id,
        parent_user_id=parent,
        contact_name=contact.profile.name if contact is not None and contact.profile else None,
        group_id=_blank_none(msg.group_id),
        original_wamid=original,
        identity_change=_identity_change(msg),
        kind=kind,
        text=text,
        timestamp=_timestamp(msg.timestamp),
        details=details,
    )


def echo_message(echo: Echo, phone_number_id: str) -> EchoMessage:
    """The :class:`EchoMessage` of one parsed ``message_echoes`` element."""
    kind, text, details, original = _message_content(echo)
    return EchoMessage(
        wamid=echo.id,
        phone_number_id=phone_number_id,
        wa_id=_blank_none(echo.to) or "",
        user_id=_blank_none(echo.to_user_id),
        parent_user_id=_blank_none(echo.to_parent_user_id),
        kind=kind,
        text=text,
        original_wamid=original,
        timestamp=_timestamp(echo.timestamp),
        details=details,
    )


def status_update(status: Status, phone_number_id: str) -> StatusUpdate:
    """The :class:`StatusUpdate` of one parsed status whose value the bot knows."""
    error = status.errors[0] if status.errors else None
    return StatusUpdate.model_validate(
        {
            "wamid": status.id,
            "phone_number_id": phone_number_id,
            "recipient_id": _blank_none(status.recipient_id),
            "recipient_user_id": _blank_none(status.recipient_user_id),
            "status": status.status,
            "timestamp": _timestamp(status.timestamp),
            "error_code": error.code if error else None,
            "error_title": (error.title or error.message) if error else None,
        }
    )


# --------------------------------------------------------------------------------------------
# The delivery


class _Parser:
    """Walks one decoded body; collects events and quarantined elements into a Delivery."""

    def __init__(self, phone_number_id: str | None, max_events: int) -> None:
        self.phone_number_id = phone_number_id
        self.max_events = max_events
        self.out = Delivery()

    def quarantine(
        self,
        element: ElementKind,
        path: str,
        reason: str,
        raw: Any,
        *,
        cause: Literal["invalid", "over_cap", "unknown_status"] = "invalid",
        phone_number_id: str | None = None,
        field_: str | None = None,
    ) -> None:
        wamid = raw.get("id") if isinstance(raw, dict) else None
        self.out.quarantined.append(
            Quarantined(
                element=element,
                path=path,
                reason=reason[:500],
                cause=cause,
                phone_number_id=phone_number_id,
                field=field_,
                wamid=wamid[:256] if isinstance(wamid, str) and wamid else None,
                raw=_raw(raw),
            )
        )

    def room(self) -> bool:
        return self.out.event_count < self.max_events

    def delivery(self, data: Mapping[str, Any]) -> Delivery:
        obj = data.get("object")
        if not isinstance(obj, str):
            self.quarantine("delivery", "", "object: missing or not a string", data)
            return self.out
        self.out.object = obj
        if obj != WHATSAPP_OBJECT:
            return self.out
        entries = data.get("entry", [])
        if not isinstance(entries, list):
            self.quarantine("delivery", "entry", "entry: not a list", data)
            return self.out
        for i, entry in enumerate(entries):
            path = f"entry[{i}]"
            changes = entry.get("changes", []) if isinstance(entry, dict) else None
            if not isinstance(changes, list):
                self.quarantine("entry", path, "changes: not a list", entry)
                continue
            for j, change in enumerate(changes):
                self.change(f"{path}.changes[{j}]", change)
        return self.out

    def change(self, path: str, change: Any) -> None:
        if not isinstance(change, dict):
            self.quarantine("change", path, "change: not an object", change)
            return
        name = change.get("field", MESSAGES_FIELD)
        if not isinstance(name, str):
            self.quarantine("change", path, "field: not a string", change)
            return
        value = change.get("value")
        if name not in (MESSAGES_FIELD, ECHOES_FIELD):
            self.out.other_fields.append(name if name in KNOWN_OTHER_FIELDS else "other")
            return
        if not isinstance(value, dict):
            self.quarantine("change", path, "value: not an object", change, field_=name)
            return
        metadata = value.get("metadata")
        if metadata is None:
            # Not a message event (Meta sends every messages-field change with metadata).
            self.out.other_fields.append("other")
            return
        try:
            pnid = Metadata.model_validate(metadata).phone_number_id
        except ValidationError as exc:
            self.quarantine(
                "change", path, f"value.metadata: {_problems(exc)}", change, field_=name
            )
            return
        if self.phone_number_id is not None and pnid != self.phone_number_id:
            if pnid not in self.out.foreign:
                self.out.foreign.append(pnid)
            return
        vpath = f"{path}.value"
        if name == ECHOES_FIELD:
            self.echoes(vpath, value, pnid)
            return
        for error in _list(value.get("errors")):
            try:
                summary = WebhookError.model_validate(error).summary()
            except ValidationError:
                continue
            log.warning("webhook.value_error", phone_number_id=pnid, **summary)
        contacts = self.contacts(value.get("contacts"))
        self.messages(vpath, value.get("messages"), contacts, pnid)
        self.statuses(vpath, value.get("statuses"), pnid)

    def contacts(self, raw: Any) -> list[Contact]:
        contacts = []
        for item in _list(raw):
            try:
                contacts.append(Contact.model_validate(item))
            except ValidationError:
                # A contact only names a sender; the message itself still carries its ids.
                log.info("webhook.contact_ignored")
        return contacts

    def _elements(
        self, vpath: str, key: str, raw: Any, element: ElementKind, pnid: str
    ) -> list[tuple[str, Any]]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.quarantine(
                element, f"{vpath}.{key}", f"{key}: not a list", raw,
                phone_number_id=pnid, field_=ECHOES_FIELD if element == "echo" else MESSAGES_FIELD,
            )
            return []
        return [(f"{vpath}.{key}[{k}]", item) for k, item in enumerate(raw)]

    def messages(self, vpath: str, raw: Any, contacts: list[Contact], pnid: str) -> None:
        for path, item in self._elements(vpath, "messages", raw, "message", pnid):
            if not self.room():
                self._over_cap("message", path, item, pnid, MESSAGES_FIELD)
                continue
            try:
                self.out.messages.append(
                    inbound_message(Message.model_validate(item), contacts, pnid)
                )
            except ValidationError as exc:
                self.quarantine(
                    "message", path, _problems(exc), item,
                    phone_number_id=pnid, field_=MESSAGES_FIELD,
                )

    def statuses(self, vpath: str, raw: Any, pnid: str) -> None:
        for path, item in self._elements(vpath, "statuses", raw, "status", pnid):
            if not self.room():
                self._over_cap("status", path, item, pnid, MESSAGES_FIELD)
                continue
            try:
                status = Status.model_validate(item)
                if status.status not in _STATUS_KINDS:
                    self.quarantine(
                        "status", path, "status: not one of " + ", ".join(sorted(_STATUS_KINDS)),
                        item, cause="unknown_status", phone_number_id=pnid,
                        field_=MESSAGES_FIELD,
                    )
                    continue
                self.out.statuses.append(status_update(status, pnid))
            except ValidationError as exc:
                self.quarantine(
                    "status", path, _problems(exc), item,
                    phone_number_id=pnid, field_=MESSAGES_FIELD,
                )

    def echoes(self, vpath: str, value: Mapping[str, Any], pnid: str) -> None:
        raw = value.get("message_echoes")
        for path, item in self._elements(vpath, "message_echoes", raw, "echo", pnid):
            if not self.room():
                self._over_cap("echo", path, item, pnid, ECHOES_FIELD)
                continue
            try:
                self.out.echoes.append(echo_message(Echo.model_validate(item), pnid))
            except ValidationError as exc:
                self.quarantine(
                    "echo", path, _problems(exc), item, phone_number_id=pnid, field_=ECHOES_FIELD
                )

    def _over_cap(
        self, element: ElementKind, path: str, item: Any, pnid: str, field_: str
    ) -> None:
        self.quarantine(
            element, path, f"more than {self.max_events} events in one delivery", item,
            cause="over_cap", phone_number_id=pnid, field_=field_,
        )


def _list(raw: Any) -> list[Any]:
    return raw if isinstance(raw, list) else []


def parse_delivery(
    body: bytes | str | Mapping[str, Any],
    phone_number_id: str | None = None,
    *,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> Delivery:
    """Parse a webhook body (raw bytes or decoded JSON) into a :class:`Delivery`.

    With ``phone_number_id`` given, changes addressed to another phone number id are left out
    and their ids listed in ``Delivery.foreign``. At most ``max_events`` messages, statuses and
    echoes are returned; the rest are quarantined (``cause="over_cap"``). Raises
    :class:`PayloadError` (400) only when the body is not a JSON object.
    """
    data = body if isinstance(body, Mapping) else load_json_object(body)
    return _Parser(phone_number_id, max_events).delivery(data)
