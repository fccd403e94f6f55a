"""What the bot does with each kind of message, and the fixed replies it sends without the model.

:func:`plan_reply` decides, for one inbound message, one of three things (the table in
``docs/messages.md`` is the user-facing version of it):

- ``model``: the question goes to the model (text, buttons, list and flow replies, an edited
  message as its new text, media with a caption, named as attached);
- ``canned``: a fixed, polite reply in ``LANGUAGE`` (audio, media without a caption, a shared
  location or contact, an order with its items, the welcome event, anything unknown); an
  order's reply promises a person only when the order is handed to one
  (:func:`handover_on_order`);
- ``none``: recorded and not answered (stickers, reactions, deleted messages, system notices,
  group messages), with the reason counted in ``released_messages_unanswered_total``.

The defaults of ``HANDOVER_MESSAGE`` and ``FALLBACK_MESSAGE`` live here too (``bot.handover``
picks them). Replies exist in English, Spanish, Portuguese and French; other languages get
English.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bot.core.config import Settings
from bot.whatsapp.events import InboundMessage

#: Kinds whose text (body, button title, list or flow reply, edited text) is a question.
TEXT_KINDS = frozenset({"text", "button", "interactive", "edit"})
#: Attachments the model is told about (it cannot see them) when they come with a caption.
MEDIA_KINDS = frozenset({"image", "video", "document"})
#: Recorded and never answered: a reply to a 👍, a sticker, a deletion or a notice is noise.
SILENT_KINDS = frozenset({"reaction", "sticker", "revoke", "system"})

_REPLIES: dict[str, dict[str, str]] = {
    "text_only": {
        "en": "Thanks! I can only read text messages for now. Please type your question and "
        "I'll be glad to help.",
        "es": "¡Gracias! Por ahora solo puedo leer mensajes de texto. Escribe tu pregunta y te "
        "ayudo con gusto.",
        "pt": "Obrigado! Por enquanto só consigo ler mensagens de texto. Escreva a sua pergunta "
        "e terei todo o gosto em ajudar.",
        "fr": "Merci ! Pour l'instant je ne lis que les messages texte. Écrivez votre question "
        "et je vous aiderai volontiers.",
    },
    "audio": {
        "en": "Thanks for your voice message! I can't listen to audio yet. Please type your "
        "question and I'll be glad to help.",
        "es": "¡Gracias por tu audio! Todavía no puedo escuchar mensajes de voz. Escribe tu "
        "pregunta y te ayudo con gusto.",
        "pt": "Obrigado pelo seu áudio! Ainda não consigo ouvir mensagens de voz. Escreva a sua "
        "pergunta e terei todo o gosto em ajudar.",
        "fr": "Merci pour votre message vocal ! Je ne peux pas encore écouter l'audio. Écrivez "
        "votre question et je vous aiderai volontiers.",
    },
    "location": {
        "en": "Thanks for sharing your location{place}! How can I help you?",
        "es": "¡Gracias por compartir tu ubicación{place}! ¿En qué puedo ayudarte?",
        "pt": "Obrigado por partilhar a sua localização{place}! Como posso ajudar?",
        "fr": "Merci d'avoir partagé votre position{place} ! Comment puis-je vous aider ?",
    },
    "contacts": {
        "en": "Thanks for sharing the contact! How can I help you?",
        "es": "¡Gracias por compartir el contacto! ¿En qué puedo ayudarte?",
        "pt": "Obrigado por partilhar o contacto! Como posso ajudar?",
        "fr": "Merci pour ce contact ! Comment puis-je vous aider ?",
    },
    "order": {
        "en": "Thanks for your order: {items}. We have received it.",
        "es": "¡Gracias por tu pedido: {items}! Lo hemos recibido.",
        "pt": "Obrigado pela sua encomenda: {items}. Já a recebemos.",
        "fr": "Merci pour votre commande : {items}. Nous l'avons bien reçue.",
    },
    # An order handed over to a person (HANDOVER_ENABLED and HANDOVER_ON_ORDER).
    "order_handover": {
        "en": "Thanks for your order: {items}. A person from our team will confirm it shortly.",
        "es": "¡Gracias por tu pedido: {items}! Una persona de nuestro equipo lo confirmará "
        "en breve.",
        "pt": "Obrigado pela sua encomenda: {items}. Uma pessoa da nossa equipa vai "
        "confirmá-la em breve.",
        "fr": "Merci pour votre commande : {items}. Une personne de notre équipe la confirmera "
        "sous peu.",
    },
    # HANDOVER_MESSAGE's default: the bot hands the conversation to a person.
    "handover": {
        "en": "Thanks! I've passed your conversation to a person from our team; they will "
        "reply here as soon as they can.",
        "es": "¡Gracias! He pasado tu conversación a una persona de nuestro equipo; te "
        "responderá por aquí lo antes posible.",
        "pt": "Obrigado! Passei a sua conversa a uma pessoa da nossa equipa; vai responder-lhe "
        "aqui assim que puder.",
        "fr": "Merci ! J'ai transmis votre conversation à une personne de notre équipe ; elle "
        "vous répondra ici dès que possible.",
    },
    # FALLBACK_MESSAGE's defaults: no person is promised unless handover is enabled, and then
    # the user is told how to ask for one ({phrase}: a phrase that hands over).
    "fallback": {
        "en": "Thanks for your message! I can't answer that right now. Please try again later.",
        "es": "¡Gracias por tu mensaje! Ahora mismo no puedo responder a eso. Inténtalo de "
        "nuevo más tarde.",
        "pt": "Obrigado pela sua mensagem! Neste momento não consigo responder a isso. Tente "
        "novamente mais tarde.",
        "fr": "Merci pour votre message ! Je ne peux pas répondre à cela pour le moment. "
        "Réessayez plus tard.",
    },
    "fallback_handover": {
        "en": "Thanks for your message! I can't answer that right now. Write \"{phrase}\" if "
        "you'd like a person from our team to help you.",
        "es": "¡Gracias por tu mensaje! Ahora mismo no puedo responder a eso. Escribe "
        "\"{phrase}\" si quieres que te atienda una persona de nuestro equipo.",
        "pt": "Obrigado pela sua mensagem! Neste momento não consigo responder a isso. Escreva "
        "\"{phrase}\" se quiser ser atendido por uma pessoa da nossa equipa.",
        "fr": "Merci pour votre message ! Je ne peux pas répondre à cela pour le moment. "
        "Écrivez « {phrase} » si vous souhaitez qu'une personne de notre équipe vous aide.",
    },
    "welcome": {
        "en": "Hello! How can I help you today?",
        "es": "¡Hola! ¿En qué puedo ayudarte hoy?",
        "pt": "Olá! Como posso ajudar hoje?",
        "fr": "Bonjour ! Comment puis-je vous aider aujourd'hui ?",
    },
}

_ATTACHMENT_NAMES = {"image": "a photo", "video": "a video", "document": "a document"}


def handover_on_order(settings: Settings) -> bool:
    """Whether an order message hands the conversation to a person."""
    return settings.handover_enabled and settings.handover_on_order


def _language(settings: Settings) -> str:
    return settings.language.lower().split("-")[0].split("_")[0]


def reply_text(name: str, settings: Settings, **fields: str) -> str:
    """The fixed reply ``name`` in ``LANGUAGE`` (English when we do not have it)."""
    texts = _REPLIES[name]
    return texts.get(_language(settings), texts["en"]).format(**fields)


def text_only_reply(language: str) -> str:
    """The polite answer to a message without text, in ``language`` when we have it."""
    key = language.lower().split("-")[0].split("_")[0]
    texts = _REPLIES["text_only"]
    return texts.get(key, texts["en"])


def _order_items(details: dict[str, Any]) -> str:
    parts: list[str] = []
    for item in details.get("items") or []:
        if not isinstance(item, dict):
            continue
        quantity = item.get("quantity")
        name = item.get("product_retailer_id") or "?"
        part = f"{quantity} x {name}" if quantity is not None else str(name)
        price, currency = item.get("item_price"), item.get("currency")
        if price is not None:
            part += f" ({price:.2f} {currency or ''}".rstrip() + ")"
        parts.append(part)
    return ", ".join(parts) or "—"


def attachment_note(msg: InboundMessage) -> str:
    """How the model is told what came with a caption (it cannot see attachments)."""
    what = _ATTACHMENT_NAMES.get(msg.kind, "a file")
    filename = msg.details.get("filename")
    if msg.kind == "document" and isinstance(filename, str) and filename:
        what += f' named "{filename[:100]}"'
    return f"[The user attached {what}, which you cannot see, with this caption:]"


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with a message: ``action`` model/canned/none, the ``question`` for the
    model or the canned ``text``, and for ``none`` the ``reason`` (a metrics label)."""

    action: Literal["model", "canned", "none"]
    question: str = ""
    text: str = ""
    reason: str = ""


def plan_reply(msg: InboundMessage, settings: Settings) -> Plan:
    """What the bot does with ``msg`` (see the module doc and ``docs/messages.md``)."""
    if msg.group_id:
        return Plan("none", reason="group")
    kind = msg.kind
    text = (msg.text or "").strip()
    if kind in SILENT_KINDS:
        return Plan("none", reason="not_answered_kind")
    if kind in TEXT_KINDS:
        if text:
            return Plan("model", question=text)
        return Plan("canned", text=reply_text("text_only", settings))
    if kind in MEDIA_KINDS:
        if text:
            return Plan("model", question=f"{attachment_note(msg)} {text}")
        return Plan("canned", text=reply_text("text_only", settings))
    if kind == "audio":
        return Plan("canned", text=reply_text("audio", settings))
    if kind == "location":
        place = text and f" ({text[:200]})"
        return Plan("canned", text=reply_text("location", settings, place=place))
    if kind == "contacts":
        return Plan("canned", text=reply_text("contacts", settings))
    if kind == "order":
        name = "order_handover" if handover_on_order(settings) else "order"
        return Plan("canned", text=reply_text(name, settings, items=_order_items(msg.details)))
    if kind == "request_welcome":
        greeting = (settings.welcome_message or "").strip() or reply_text("welcome", settings)
        return Plan("canned", text=greeting)
    # unsupported, unknown, or anything newer than this table: acknowledged politely.
    return Plan("canned", text=reply_text("text_only", settings))
