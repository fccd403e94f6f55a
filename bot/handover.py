"""Handing a conversation to a person: when, what the bot says, and who is told.

A conversation is answered by the bot or **held** by a person until a time
(``bot.storage.holds``); while held the bot stores and counts the user's messages and answers
none of them. What holds a conversation (:class:`Reason`, the ``reason`` label of
``released_handovers_total``):

- always, whatever ``HANDOVER_ENABLED`` says, because the bot must never talk over a person:
  ``staff_echo`` (someone at the business wrote from the WhatsApp Business app, an
  ``smb_message_echoes`` webhook) and ``foreign_status`` (a delivery status of a message the
  bot did not send: another tool wrote to the user); ``admin`` (a person used the admin API:
  ``released conversations hold`` or ``reply``);
- only with ``HANDOVER_ENABLED``, and then the bot sends ``HANDOVER_MESSAGE`` and the worker
  POSTs a signed notification to ``HANDOVER_NOTIFY_URL``: ``user_request`` (the user's text
  holds one of ``HANDOVER_PHRASES``, matched without a model call), ``model_request`` (the model
  called the :data:`TOOL_NAME` function tool), ``fallbacks`` (the answer would have been the
  ``HANDOVER_AFTER_FALLBACKS``-th fallback in a row) and ``order`` (an order message, with
  ``HANDOVER_ON_ORDER``).

A hold lasts ``HANDOVER_HOLD_SECONDS`` from the event that started or renewed it (each staff
echo renews it) unless a person releases it earlier; afterwards the bot answers again.

The notification (:func:`notification_body`, :func:`signature`): a JSON POST with
``event``, ``id`` (unique per handover, also in ``X-Released-Delivery``, for the receiver to
drop a second delivery), ``conversation``, ``user``, ``reason``, ``heldUntil`` and the last
:data:`NOTIFY_MESSAGES` messages stored (oldest first), signed like Meta signs its webhooks:
``X-Released-Signature-256: sha256=HEX`` of the raw body with ``HANDOVER_NOTIFY_SECRET``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from bot.core.config import Settings
from bot.replies import reply_text

#: The function tool the model may call to hand the conversation over.
TOOL_NAME = "hand_over_to_person"
#: Messages a notification carries at most.
NOTIFY_MESSAGES = 20
SIGNATURE_HEADER = "X-Released-Signature-256"
DELIVERY_HEADER = "X-Released-Delivery"


class Reason(StrEnum):
    """Why a conversation was handed to a person (module doc)."""

    USER_REQUEST = "user_request"
    MODEL_REQUEST = "model_request"
    FALLBACKS = "fallbacks"
    ORDER = "order"
    STAFF_ECHO = "staff_echo"
    FOREIGN_STATUS = "foreign_status"
    ADMIN = "admin"


#: Handovers the bot starts itself: it tells the user and notifies the team.
BOT_REASONS = frozenset(
    {Reason.USER_REQUEST, Reason.MODEL_REQUEST, Reason.FALLBACKS, Reason.ORDER}
)

#: ``HANDOVER_PHRASES`` when unset: ways of asking for a person. Whole phrases, so "person" in
#: "in person" hands nothing over; the first of each language is what the fallback message
#: suggests writing.
DEFAULT_PHRASES: dict[str, list[str]] = {
    "en": [
        "talk to a person", "speak to a person", "talk to a human", "speak to a human",
        "talk to someone", "speak to someone", "real person", "human agent", "live agent",
        "talk to an agent", "speak to an agent", "customer service representative",
    ],
    "es": [
        "hablar con una persona", "hablar con un humano", "hablar con alguien",
        "hablar con un agente", "hablar con un asesor", "persona real", "agente humano",
        "atencion humana", "quiero un humano",
    ],
    "pt": [
        "falar com uma pessoa", "falar com um humano", "falar com alguem",
        "falar com um atendente", "atendente humano", "pessoa real", "atendimento humano",
    ],
    "fr": [
        "parler a une personne", "parler a un humain", "parler a quelqu'un",
        "parler a un conseiller", "vrai humain", "conseiller humain",
    ],
}

_NOT_WORD = re.compile(r"[^\w']+")


def normalize(text: str) -> str:
    """``text`` without case, accents and punctuation, words separated by one space."""
    decomposed = unicodedata.normalize("NFKD", text.casefold().replace("\u2019", "'"))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_NOT_WORD.sub(" ", bare).split())


def phrases(settings: Settings) -> dict[str, list[str]]:
    """The phrases that ask for a person, by language tag."""
    return settings.handover_phrases or DEFAULT_PHRASES


def asks_for_person(text: str, settings: Settings) -> bool:
    """Whether ``text`` holds one of the phrases (any language), as whole words."""
    haystack = f" {normalize(text)} "
    return any(
        f" {needle} " in haystack
        for needle in (normalize(p) for group in phrases(settings).values() for p in group)
        if needle
    )


def _language(settings: Settings) -> str:
    return settings.language.lower().split("-")[0].split("_")[0]


def suggested_phrase(settings: Settings) -> str | None:
    """The phrase the fallback message suggests: the first of ``LANGUAGE`` (else English)."""
    table = phrases(settings)
    tag = _language(settings)
    for key, group in table.items():
        if key.lower().split("-")[0].split("_")[0] == tag and group:
            return group[0]
    english = table.get("en") or []
    return english[0] if english else None


def handover_text(settings: Settings) -> str:
    """What the bot sends when it hands over: ``HANDOVER_MESSAGE`` or the default."""
    return (settings.handover_message or "").strip() or reply_text("handover", settings)


def fallback_text(settings: Settings) -> str:
    """``FALLBACK_MESSAGE``, or a default in ``LANGUAGE`` that promises a person only when
    handover is enabled (and then says how to ask for one)."""
    explicit = (settings.fallback_message or "").strip()
    if explicit:
        return explicit
    phrase = suggested_phrase(settings) if settings.handover_enabled else None
    if phrase:
        return reply_text("fallback_handover", settings, phrase=phrase)
    return reply_text("fallback", settings)


def model_tool() -> dict[str, Any]:
    """The Responses API function tool that lets the model hand the conversation over."""
    return {
        "type": "function",
        "name": TOOL_NAME,
        "description": (
            "Hand this WhatsApp conversation to a person from the business's team. Call it "
            "when the user asks to talk to a person, or needs something only staff can do "
            "(a complaint, a refund, a problem with an order or a booking). The bot then "
            "tells the user and stops answering until the team is done."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "reason": {
                    "type": "string",
                    "description": "In a few words, what the user needs from a person.",
                }
            },
            "required": ["reason"],
            "additionalProperties": False,
        },
        "strict": True,
    }


def instructions_rule(settings: Settings) -> str:
    """The rule of the model's instructions about what it cannot answer: a person is
    promised only when one will be told."""
    if settings.handover_enabled:
        return (
            "Answer only from these FAQs; never invent facts, prices, dates or links. If they "
            "do not answer the question, say so briefly and offer to pass the conversation to "
            f"a person from the team. Call the {TOOL_NAME} tool when the user asks for a "
            "person (or accepts your offer), or needs something only staff can do."
        )
    return (
        "Answer only from these FAQs; never invent facts, prices, dates or links. If they do "
        "not answer the question, say so briefly and suggest trying again later; do not say "
        "that a person will follow up, nobody is notified."
    )


# -- the notification ---------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def notification_body(
    *,
    delivery_id: str,
    conversation_id: int,
    user: str,
    reason: str,
    held_until: datetime,
    messages: Sequence[Mapping[str, Any]],
) -> bytes:
    """The notification's JSON body (``messages``: the last ones, oldest first)."""
    payload = {
        "event": "handover",
        "id": delivery_id,
        "conversation": conversation_id,
        "user": user,
        "reason": reason,
        "heldUntil": _iso(held_until),
        "messages": list(messages)[-NOTIFY_MESSAGES:],
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def message_entry(
    direction: str, kind: str, text: str | None, at: datetime, source: str | None
) -> dict[str, Any]:
    """One message of a notification (or of the admin API)."""
    return {
        "direction": direction,
        "kind": kind,
        "text": text,
        "at": _iso(at),
        "source": source,
    }


def signature(secret: str, body: bytes) -> str:
    """``X-Released-Signature-256``: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` (for receivers, and the tests)."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


def reasons() -> Iterable[str]:
    """Every reason label, for metrics."""
    return (reason.value for reason in Reason)
