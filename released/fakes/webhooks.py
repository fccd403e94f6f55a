"""Builders of the webhook payloads Meta's WhatsApp Cloud API posts today, for tests and fakes.

Every builder returns one complete delivery (``{"object": "whatsapp_business_account",
"entry": [...]}``) in the shape Meta documents in 2026, business-scoped user IDs (BSUIDs)
included (``../shared/contracts/README.md``, "WhatsApp business-scoped user IDs"):

- ``contacts[].user_id`` and ``messages[].from_user_id`` are always present; ``from`` and
  ``contacts[].wa_id`` are absent (or ``""``) for a user who adopted a username and hides the
  phone number; ``parent_user_id`` / ``from_parent_user_id`` appear for users who have one.
- statuses carry ``recipient_user_id`` beside (or instead of) ``recipient_id``.
- identity changes arrive as ``system`` messages without a ``contacts`` array.
- ``change.field`` names the kind: ``messages``, ``smb_message_echoes``, ``calls``,
  ``account_update``.

The shapes follow Meta's webhook reference pages and the fixtures of maintained client libraries
(pywa's ``tests/data/updates``). A user is a :class:`WhatsAppUser`; its BSUID is derived from its
phone number when not given, so the same number always gets the same BSUID. :func:`batch`
merges several deliveries into one, as Meta batches entries, changes and messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

WHATSAPP_OBJECT = "whatsapp_business_account"
DEFAULT_WABA_ID = "100000000000000"
DEFAULT_DISPLAY_PHONE_NUMBER = "15550000000"
DEFAULT_PROFILE_NAME = "Test User"

#: A BSUID: a two-letter country prefix, a dot and up to 128 characters (parents carry
#: ``ENT.`` after the prefix). README: "A BSUID can be a two-letter prefix, a dot and up to 128
#: characters (store up to 256)".
BSUID_RE = re.compile(r"^[A-Z]{2}\.(?:ENT\.)?[A-Za-z0-9]{1,128}$")


def is_bsuid(value: object) -> bool:
    """Whether ``value`` looks like a business-scoped user ID (``US.13491208655302741918``)."""
    return isinstance(value, str) and BSUID_RE.match(value) is not None


def bsuid_for(phone: str, country: str = "US") -> str:
    """The BSUID the fakes give the user with this phone number (stable for a number)."""
    digest = hashlib.sha256(("bsuid:" + re.sub(r"\D", "", phone)).encode()).digest()
    return f"{country}.{int.from_bytes(digest[:8], 'big'):020d}"


def new_bsuid(country: str = "US") -> str:
    """A fresh random BSUID."""
    return f"{country}.{secrets.randbits(63):020d}"


def new_parent_bsuid(country: str = "US") -> str:
    return f"{country}.ENT.{secrets.randbits(63):020d}"


def new_wamid() -> str:
    """A message id in the shape Meta uses (``wamid.`` + base64)."""
    raw = b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(18)
    return "wamid." + base64.b64encode(raw).decode()


def _ts(timestamp: int | float | None) -> str:
    return str(int(timestamp if timestamp is not None else time.time()))


@dataclass(frozen=True)
class WhatsAppUser:
    """A WhatsApp user as Meta names them to one business.

    ``phone``: the number's digits, or None for a user who adopted a username and hides it
    (then ``from``/``wa_id`` are left out, or sent as ``""`` when ``hidden_phone="empty"``).
    ``user_id``: the BSUID (derived from ``phone`` when empty; random when there is no phone).
    """

    phone: str | None = "15551234567"
    user_id: str = ""
    parent_user_id: str | None = None
    name: str = DEFAULT_PROFILE_NAME
    username: str | None = None
    hidden_phone: Literal["absent", "empty"] = "absent"
    extra_contact: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phone is not None:
            object.__setattr__(self, "phone", re.sub(r"\D", "", self.phone))
        if not self.user_id:
            bsuid = bsuid_for(self.phone) if self.phone else new_bsuid()
            object.__setattr__(self, "user_id", bsuid)

    @classmethod
    def username_only(cls, name: str = DEFAULT_PROFILE_NAME, **kwargs: Any) -> WhatsAppUser:
        """A user Meta knows to the business only by a BSUID (no phone number)."""
        kwargs.setdefault("username", "@" + (re.sub(r"\W", "", name.lower()) or "user"))
        return cls(phone=None, name=name, **kwargs)

    def with_phone(self, phone: str | None) -> WhatsAppUser:
        return replace(self, phone=phone)

    @property
    def address(self) -> dict[str, str]:
        """How a business addresses this user in a send: ``to`` when the phone is known,
        else ``recipient`` (README: "Sending to a BSUID: put it in recipient and leave to out")."""
        return {"to": self.phone} if self.phone else {"recipient": self.user_id}

    def _phone_field(self) -> str | None:
        if self.phone:
            return self.phone
        return "" if self.hidden_phone == "empty" else None

    def contact(self) -> dict[str, Any]:
        """The ``value.contacts[]`` entry for this user."""
        profile: dict[str, Any] = {"name": self.name}
        if self.username:
            profile["username"] = self.username
        out: dict[str, Any] = {"profile": profile}
        phone = self._phone_field()
        if phone is not None:
            out["wa_id"] = phone
        out["user_id"] = self.user_id
        if self.parent_user_id:
            out["parent_user_id"] = self.parent_user_id
        out.update(self.extra_contact)
        return out

    def sender(self) -> dict[str, Any]:
        """The sender fields of a ``messages[]`` entry: ``from``, ``from_user_id``, ..."""
        out: dict[str, Any] = {}
        phone = self._phone_field()
        if phone is not None:
            out["from"] = phone
        out["from_user_id"] = self.user_id
        if self.parent_user_id:
            out["from_parent_user_id"] = self.parent_user_id
        return out

    def recipient(self) -> dict[str, Any]:
        """The recipient fields of a ``statuses[]`` entry."""
        out: dict[str, Any] = {}
        phone = self._phone_field()
        if phone is not None:
            out["recipient_id"] = phone
        out["recipient_user_id"] = self.user_id
        if self.parent_user_id:
            out["recipient_parent_user_id"] = self.parent_user_id
        return out


def _user(user: WhatsAppUser | None, from_number: str | None, profile_name: str) -> WhatsAppUser:
    if user is not None:
        return user
    return WhatsAppUser(phone=from_number or "15551234567", name=profile_name)


def envelope(
    value: dict[str, Any],
    *,
    field_name: str = "messages",
    waba_id: str = DEFAULT_WABA_ID,
    entry_time: int | None = None,
) -> dict[str, Any]:
    """Wrap one change ``value`` in the ``whatsapp_business_account`` envelope."""
    entry: dict[str, Any] = {"id": waba_id}
    if entry_time is not None:
        entry["time"] = entry_time
    entry["changes"] = [{"value": value, "field": field_name}]
    return {"object": WHATSAPP_OBJECT, "entry": [entry]}


def _value(phone_number_id: str, display_phone_number: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": display_phone_number,
            "phone_number_id": phone_number_id,
        },
    }


def message_event(
    content: Mapping[str, Any],
    *,
    phone_number_id: str,
    user: WhatsAppUser | None = None,
    from_number: str | None = None,
    profile_name: str = DEFAULT_PROFILE_NAME,
    message_id: str | None = None,
    timestamp: int | None = None,
    context: Mapping[str, Any] | None = None,
    group_id: str | None = None,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    include_contacts: bool = True,
) -> dict[str, Any]:
    """One inbound message: ``content`` holds ``type`` and the type's object (e.g.
    ``{"type": "text", "text": {"body": "hi"}}``); sender fields come from ``user``."""
    who = _user(user, from_number, profile_name)
    message: dict[str, Any] = {}
    if context:
        message["context"] = dict(context)
    message.update(who.sender())
    if group_id:
        message["group_id"] = group_id
    message["id"] = message_id or new_wamid()
    message["timestamp"] = _ts(timestamp)
    message.update(content)
    value = _value(phone_number_id, display_phone_number)
    if include_contacts:
        value["contacts"] = [who.contact()]
    value["messages"] = [message]
    return envelope(value, waba_id=waba_id)


def _reply_context(context_message_id: str | None, display_phone_number: str) -> dict[str, Any]:
    if not context_message_id:
        return {}
    return {"from": display_phone_number, "id": context_message_id}


def text_message_event(
    *,
    phone_number_id: str,
    text: str,
    from_number: str | None = None,
    user: WhatsAppUser | None = None,
    message_id: str | None = None,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    profile_name: str = DEFAULT_PROFILE_NAME,
    timestamp: int | None = None,
    context_message_id: str | None = None,
    group_id: str | None = None,
) -> dict[str, Any]:
    """A ``messages`` delivery of one inbound text message."""
    return message_event(
        {"type": "text", "text": {"body": text}},
        phone_number_id=phone_number_id,
        user=user,
        from_number=from_number,
        profile_name=profile_name,
        message_id=message_id,
        timestamp=timestamp,
        context=_reply_context(context_message_id, display_phone_number),
        group_id=group_id,
        display_phone_number=display_phone_number,
        waba_id=waba_id,
    )


def interactive_reply_event(
    *,
    phone_number_id: str,
    reply_id: str,
    title: str,
    kind: Literal["button_reply", "list_reply"] = "button_reply",
    description: str | None = None,
    context_message_id: str | None = "wamid.interactive-prompt",
    **common: Any,
) -> dict[str, Any]:
    """The user tapped a reply button or chose a list row of an interactive message."""
    reply: dict[str, Any] = {"id": reply_id, "title": title}
    if description is not None and kind == "list_reply":
        reply["description"] = description
    display = common.get("display_phone_number", DEFAULT_DISPLAY_PHONE_NUMBER)
    return message_event(
        {"type": "interactive", "interactive": {"type": kind, kind: reply}},
        phone_number_id=phone_number_id,
        context=_reply_context(context_message_id, display),
        **common,
    )


def flow_reply_event(
    *,
    phone_number_id: str,
    response: Mapping[str, Any],
    body: str = "Sent",
    context_message_id: str | None = "wamid.flow-prompt",
    **common: Any,
) -> dict[str, Any]:
    """The user completed a WhatsApp Flow (``interactive.nfm_reply``)."""
    display = common.get("display_phone_number", DEFAULT_DISPLAY_PHONE_NUMBER)
    reply = {"name": "flow", "body": body, "response_json": json.dumps(dict(response))}
    return message_event(
        {"type": "interactive", "interactive": {"type": "nfm_reply", "nfm_reply": reply}},
        phone_number_id=phone_number_id,
        context=_reply_context(context_message_id, display),
        **common,
    )


def button_event(
    *,
    phone_number_id: str,
    text: str,
    payload: str | None = None,
    context_message_id: str | None = "wamid.template",
    **common: Any,
) -> dict[str, Any]:
    """The user tapped a quick-reply button of a template message (``type: button``)."""
    display = common.get("display_phone_number", DEFAULT_DISPLAY_PHONE_NUMBER)
    return message_event(
        {"type": "button", "button": {"payload": payload or text, "text": text}},
        phone_number_id=phone_number_id,
        context=_reply_context(context_message_id, display),
        **common,
    )


_MIME = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg; codecs=opus",
    "document": "application/pdf",
    "sticker": "image/webp",
}


def media_message_event(
    *,
    phone_number_id: str,
    kind: Literal["image", "video", "audio", "document"],
    caption: str | None = None,
    media_id: str | None = None,
    mime_type: str | None = None,
    filename: str | None = None,
    voice: bool = False,
    **common: Any,
) -> dict[str, Any]:
    """An image, video, audio (``voice=True``: a voice note) or document, optionally captioned."""
    media: dict[str, Any] = {
        "mime_type": mime_type or _MIME[kind],
        "sha256": base64.b64encode(secrets.token_bytes(32)).decode(),
        "id": media_id or str(secrets.randbelow(10**16)),
    }
    if caption is not None and kind != "audio":
        media["caption"] = caption
    if kind == "document":
        media["filename"] = filename or "document.pdf"
    if kind == "audio":
        media["voice"] = voice
    return message_event({"type": kind, kind: media}, phone_number_id=phone_number_id, **common)


def sticker_event(*, phone_number_id: str, animated: bool = False, **common: Any) -> dict[str, Any]:
    sticker = {
        "mime_type": "image/webp",
        "sha256": base64.b64encode(secrets.token_bytes(32)).decode(),
        "id": str(secrets.randbelow(10**16)),
        "animated": animated,
    }
    return message_event(
        {"type": "sticker", "sticker": sticker}, phone_number_id=phone_number_id, **common
    )


def location_event(
    *,
    phone_number_id: str,
    latitude: float = 40.4168,
    longitude: float = -3.7038,
    name: str | None = None,
    address: str | None = None,
    url: str | None = None,
    **common: Any,
) -> dict[str, Any]:
    """A shared location (a pinned place when ``name``/``address`` are given)."""
    location: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    for key, value in (("name", name), ("address", address), ("url", url)):
        if value is not None:
            location[key] = value
    return message_event(
        {"type": "location", "location": location}, phone_number_id=phone_number_id, **common
    )


def contacts_message_event(
    *, phone_number_id: str, name: str = "Jane Doe", phone: str = "+1 555 0100", **common: Any
) -> dict[str, Any]:
    """A shared contact card."""
    card = {
        "name": {"formatted_name": name, "first_name": name.split()[0]},
        "phones": [{"phone": phone, "type": "CELL"}],
    }
    return message_event(
        {"type": "contacts", "contacts": [card]}, phone_number_id=phone_number_id, **common
    )


def reaction_event(
    *, phone_number_id: str, reacted_message_id: str, emoji: str | None = "\U0001f44d",
    **common: Any
) -> dict[str, Any]:
    """A reaction to a message the business sent; ``emoji=None``: the reaction was removed
    (Meta then leaves the ``emoji`` field out)."""
    reaction: dict[str, Any] = {"message_id": reacted_message_id}
    if emoji is not None:
        reaction["emoji"] = emoji
    return message_event(
        {"type": "reaction", "reaction": reaction}, phone_number_id=phone_number_id, **common
    )


def edit_event(
    *, phone_number_id: str, original_message_id: str, text: str, **common: Any
) -> dict[str, Any]:
    """The user edited an earlier text message (``type: edit``)."""
    edited = {"type": "text", "text": {"body": text}}
    return message_event(
        {"type": "edit", "edit": {"original_message_id": original_message_id, "message": edited}},
        phone_number_id=phone_number_id,
        **common,
    )


def revoke_event(
    *, phone_number_id: str, original_message_id: str, **common: Any
) -> dict[str, Any]:
    """The user deleted an earlier message for everyone (``type: revoke``)."""
    return message_event(
        {"type": "revoke", "revoke": {"original_message_id": original_message_id}},
        phone_number_id=phone_number_id,
        **common,
    )


def order_event(
    *,
    phone_number_id: str,
    items: Sequence[Mapping[str, Any]] = (
        {"product_retailer_id": "SKU-1", "quantity": 2, "item_price": 9.5, "currency": "EUR"},
    ),
    catalog_id: str = "354160437058781",
    text: str = "",
    **common: Any,
) -> dict[str, Any]:
    """An order sent from a catalog; ``text`` is the optional note (``""`` when none)."""
    order = {"catalog_id": catalog_id, "text": text, "product_items": [dict(i) for i in items]}
    return message_event(
        {"type": "order", "order": order}, phone_number_id=phone_number_id, **common
    )


def request_welcome_event(*, phone_number_id: str, **common: Any) -> dict[str, Any]:
    """The user opened the chat for the first time (``type: request_welcome``, no content)."""
    return message_event({"type": "request_welcome"}, phone_number_id=phone_number_id, **common)


def unsupported_event(
    *, phone_number_id: str, unsupported_type: str | None = None, **common: Any
) -> dict[str, Any]:
    """A message of a type the Cloud API does not support (error 131051 inside)."""
    content: dict[str, Any] = {
        "errors": [
            {
                "code": 131051,
                "title": "Message type unknown",
                "message": "Message type unknown",
                "error_data": {"details": "Message type is currently not supported."},
            }
        ],
        "type": "unsupported",
    }
    if unsupported_type:
        content["unsupported"] = {"type": unsupported_type}
    return message_event(content, phone_number_id=phone_number_id, **common)


def group_message_event(
    *, phone_number_id: str, group_id: str = "120363000000000000", text: str = "hello group",
    **common: Any
) -> dict[str, Any]:
    """A text message sent to a group the business takes part in (``group_id`` present)."""
    return text_message_event(
        phone_number_id=phone_number_id, text=text, group_id=group_id, **common
    )


def user_changed_number_event(
    *,
    phone_number_id: str,
    user: WhatsAppUser,
    new_phone: str,
    message_id: str | None = None,
    timestamp: int | None = None,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
) -> dict[str, Any]:
    """``system`` message ``user_changed_number``: the user moved to ``new_phone`` (the BSUID
    stays). System messages come without a ``contacts`` array."""
    new_phone = re.sub(r"\D", "", new_phone)
    system: dict[str, Any] = {
        "body": f"User {user.name} changed from {user.phone or user.user_id} to {new_phone}",
        "wa_id": new_phone,
        "user_id": user.user_id,
        "type": "user_changed_number",
    }
    if user.parent_user_id:
        system["parent_user_id"] = user.parent_user_id
    return message_event(
        {"type": "system", "system": system},
        phone_number_id=phone_number_id,
        user=user,
        message_id=message_id,
        timestamp=timestamp,
        display_phone_number=display_phone_number,
        waba_id=waba_id,
        include_contacts=False,
    )


def user_changed_user_id_event(
    *,
    phone_number_id: str,
    user: WhatsAppUser,
    new_user_id: str | None = None,
    message_id: str | None = None,
    timestamp: int | None = None,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
) -> dict[str, Any]:
    """``system`` message ``user_changed_user_id``: the user's BSUID changed to ``new_user_id``
    (no phone number in it). Use ``replace(user, user_id=new)`` for the user afterwards."""
    new_user_id = new_user_id or new_bsuid(user.user_id[:2])
    system: dict[str, Any] = {
        "body": f"User {user.name} changed from {user.user_id} to {new_user_id}",
        "user_id": new_user_id,
        "previous_user_id": user.user_id,
        "type": "user_changed_user_id",
    }
    if user.parent_user_id:
        system["parent_user_id"] = user.parent_user_id
    return message_event(
        {"type": "system", "system": system},
        phone_number_id=phone_number_id,
        user=user,
        message_id=message_id,
        timestamp=timestamp,
        display_phone_number=display_phone_number,
        waba_id=waba_id,
        include_contacts=False,
    )


def status_event(
    *,
    phone_number_id: str,
    message_id: str,
    recipient_id: str | None = None,
    recipient_user_id: str | None = None,
    user: WhatsAppUser | None = None,
    status: Literal["sent", "delivered", "read", "failed", "played"] | str = "delivered",
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
    timestamp: int | None = None,
    errors: list[dict[str, Any]] | None = None,
    pricing: bool = True,
    biz_opaque_callback_data: str | None = None,
) -> dict[str, Any]:
    """A ``messages`` delivery of one status of a message the business sent.

    The recipient is ``user`` or ``recipient_id`` (phone digits) / ``recipient_user_id``
    (BSUID); a phone without a BSUID gets the BSUID the fakes derive from it, since Meta always
    sends ``recipient_user_id`` now.
    """
    if user is None:
        if recipient_id is None and recipient_user_id is None:
            raise ValueError("give user, recipient_id or recipient_user_id")
        user = WhatsAppUser(phone=recipient_id, user_id=recipient_user_id or "")
    entry: dict[str, Any] = {"id": message_id, "status": status, "timestamp": _ts(timestamp)}
    entry.update(user.recipient())
    if biz_opaque_callback_data is not None:
        entry["biz_opaque_callback_data"] = biz_opaque_callback_data
    if status in ("sent", "delivered", "read") and pricing:
        entry["pricing"] = {"billable": False, "pricing_model": "PMP", "category": "service",
                            "type": "free_customer_service"}
    if errors:
        entry["errors"] = errors
    value = _value(phone_number_id, display_phone_number)
    value["statuses"] = [entry]
    return envelope(value, waba_id=waba_id)


def failed_status_event(
    *,
    phone_number_id: str,
    message_id: str,
    code: int = 131026,
    title: str = "Message undeliverable",
    details: str = "Unable to deliver message.",
    **kwargs: Any,
) -> dict[str, Any]:
    """A ``failed`` status with Meta's error object (``code``, ``title``, ``error_data``)."""
    error = {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }
    return status_event(
        phone_number_id=phone_number_id, message_id=message_id, status="failed", errors=[error],
        pricing=False, **kwargs
    )


def message_echo_event(
    *,
    phone_number_id: str,
    user: WhatsAppUser,
    text: str,
    message_id: str | None = None,
    timestamp: int | None = None,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
) -> dict[str, Any]:
    """``smb_message_echoes``: a message the business sent from the WhatsApp Business app
    (coexistence); not a message from the user."""
    echo: dict[str, Any] = {"from": display_phone_number}
    if user.phone:
        echo["to"] = user.phone
    echo["to_user_id"] = user.user_id
    if user.parent_user_id:
        echo["to_parent_user_id"] = user.parent_user_id
    echo.update(
        {"id": message_id or new_wamid(), "timestamp": _ts(timestamp), "type": "text",
         "text": {"body": text}}
    )
    value = _value(phone_number_id, display_phone_number)
    value["contacts"] = [user.contact()]
    value["message_echoes"] = [echo]
    return envelope(value, field_name="smb_message_echoes", waba_id=waba_id)


def call_event(
    *,
    phone_number_id: str,
    user: WhatsAppUser,
    event: Literal["connect", "terminate"] = "connect",
    direction: Literal["USER_INITIATED", "BUSINESS_INITIATED"] = "USER_INITIATED",
    call_id: str | None = None,
    timestamp: int | None = None,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
) -> dict[str, Any]:
    """``calls``: a WhatsApp voice call starting or ending (not a message, not a status)."""
    call: dict[str, Any] = {"id": call_id or "wacid." + secrets.token_urlsafe(16)}
    caller = user.sender()
    if direction == "USER_INITIATED":
        call.update(caller)
        call["to"] = display_phone_number
    else:
        call["from"] = display_phone_number
        if user.phone:
            call["to"] = user.phone
        call["to_user_id"] = user.user_id
    call.update({"event": event, "timestamp": _ts(timestamp), "direction": direction})
    if event == "connect":
        call["session"] = {"sdp": "v=0", "sdp_type": "offer"}
    else:
        call.update({"status": "COMPLETED", "duration": 42})
    value = _value(phone_number_id, display_phone_number)
    value["contacts"] = [user.contact()]
    value["calls"] = [call]
    return envelope(value, field_name="calls", waba_id=waba_id)


def account_update_event(
    *,
    event: str = "ACCOUNT_VIOLATION",
    details: Mapping[str, Any] | None = None,
    waba_id: str = DEFAULT_WABA_ID,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """``account_update``: a WABA-level event (restriction, violation, deletion, ...), without
    ``metadata`` or ``messaging_product``."""
    value: dict[str, Any] = {"event": event}
    if details is None and event == "ACCOUNT_VIOLATION":
        details = {"violation_info": {"violation_type": "SCAM"}}
    if details is None and event == "ACCOUNT_RESTRICTION":
        details = {
            "restriction_info": [
                {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                 "expiration": int(time.time()) + 86400}
            ]
        }
    value.update(details or {})
    return envelope(
        value, field_name="account_update", waba_id=waba_id,
        entry_time=int(timestamp if timestamp is not None else time.time()),
    )


def batch(*deliveries: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge deliveries into one, as Meta batches them: entries of the same WABA are joined,
    and changes of the same field and phone number are merged (messages, statuses, contacts)."""
    flat: list[Mapping[str, Any]] = []
    for item in deliveries:
        if isinstance(item, Mapping):
            flat.append(item)
        else:
            flat.extend(item)
    entries: dict[str, dict[str, Any]] = {}
    for delivery in flat:
        for entry in delivery.get("entry", []):
            target = entries.setdefault(entry["id"], {"id": entry["id"], "changes": []})
            if "time" in entry:
                target["time"] = entry["time"]
            for change in entry.get("changes", []):
                _merge_change(target["changes"], change)
    return {"object": WHATSAPP_OBJECT, "entry": list(entries.values())}


def _merge_change(changes: list[dict[str, Any]], change: Mapping[str, Any]) -> None:
    value = change.get("value", {})
    key = (change.get("field"), (value.get("metadata") or {}).get("phone_number_id"))
    for existing in changes:
        have = existing["value"]
        if (existing.get("field"), (have.get("metadata") or {}).get("phone_number_id")) != key:
            continue
        if key[1] is None:
            break
        for name in ("contacts", "messages", "statuses", "message_echoes", "calls"):
            if name in value:
                merged = have.setdefault(name, [])
                for item in value[name]:
                    if name == "contacts" and item in merged:
                        continue
                    merged.append(item)
        return
    changes.append({"value": _deep_copy(value), "field": change.get("field")})


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
