"""``bot.handover``: which texts ask for a person, what the bot says, the settings the operator
passes, and the notification's signature."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from bot.core.config import Settings
from bot.handover import (
    TOOL_NAME,
    asks_for_person,
    fallback_text,
    handover_text,
    model_tool,
    normalize,
    notification_body,
    signature,
    verify_signature,
)
from bot.llm.client import request_kwargs


@pytest.mark.parametrize("text", [
    "I want to TALK TO A PERSON please",
    "can I speak to a human?",
    "Quiero hablar con una persona",
    "¿Puedo HABLAR CON UNA PERSONA, por favor?",
    "quero falar com alguém",
    "Je veux parler à une personne",
    "je voudrais parler à quelqu\u2019un",
])
def test_phrases_ask_for_a_person_in_any_language(text: str) -> None:
    assert asks_for_person(text, Settings())


@pytest.mark.parametrize("text", [
    "Can I pay in person?",
    "Is there a human-readable invoice?",  # "human" alone is not a request
    "personalized talk to a personality",
    "",
])
def test_other_texts_do_not(text: str) -> None:
    assert not asks_for_person(text, Settings())


def test_configured_phrases_replace_the_built_in_ones() -> None:
    own = Settings(handover_phrases={"es": ["quiero un agente"]})
    assert asks_for_person("Hola, QUIERO UN AGENTE ya", own)
    assert not asks_for_person("I want to talk to a person", own)


def test_normalize() -> None:
    assert normalize("  ¿Hablar   con ALGUIÉN?! ") == "hablar con alguien"
    assert normalize("quelqu\u2019un") == "quelqu'un"


def test_the_handover_message_defaults_to_the_language() -> None:
    assert handover_text(Settings()).startswith("Thanks! I've passed your conversation")
    assert handover_text(Settings(language="pt-BR")).startswith("Obrigado! Passei")
    assert handover_text(Settings(language="de")).startswith("Thanks!")  # English otherwise
    assert handover_text(Settings(handover_message="Te paso con Lucía.")) == "Te paso con Lucía."
    assert handover_text(Settings(handover_message="  ")).startswith("Thanks!")


def test_fallback_names_a_phrase_of_the_language() -> None:
    fr = fallback_text(Settings(handover_enabled=True, language="fr"))
    assert "« parler a une personne »" in fr
    # No phrase for the language and no English ones: no phrase to suggest, no promise.
    odd = Settings(handover_enabled=True, language="de", handover_phrases={"es": ["persona"]})
    assert "person" not in fallback_text(odd)


def test_settings_the_operator_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDOVER_ENABLED", "true")
    monkeypatch.setenv("HANDOVER_PHRASES", '{"es": ["Hablar con alguien", " "], "en": []}')
    monkeypatch.setenv("HANDOVER_HOLD_SECONDS", "3600")
    monkeypatch.setenv("HANDOVER_MESSAGE", "")
    s = Settings()
    assert s.handover_enabled and s.handover_hold_seconds == 3600
    assert s.handover_phrases == {"es": ["Hablar con alguien"]}
    assert s.handover_message is None
    monkeypatch.setenv("HANDOVER_NOTIFY_URL", "https://hooks.example.com/released")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "HANDOVER_NOTIFY_SECRET" in str(info.value)
    monkeypatch.setenv("HANDOVER_NOTIFY_SECRET", "a-secret-value-here")
    s = Settings()
    assert "a-secret-value-here" not in repr(s)
    assert "a-secret-value-here" in s.secret_values()
    monkeypatch.setenv("HANDOVER_NOTIFY_URL", "ftp://hooks.example.com")
    with pytest.raises(ValidationError):
        Settings()


def test_admin_tokens_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "the-admin-token-123")
    monkeypatch.setenv("ADMIN_TOKEN_PREVIOUS", "REPLACE_ME")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("ADMIN_TOKEN_PREVIOUS", "")
    s = Settings()
    assert s.admin_token_previous is None and "the-admin-token-123" in s.secret_values()


def test_the_model_gets_the_tool_only_with_handover() -> None:
    plain = request_kwargs("q", [], [], Settings())
    assert "tools" not in plain
    handing = request_kwargs("q", [], [], Settings(handover_enabled=True))
    assert handing["tools"] == [model_tool()]
    tool = model_tool()
    assert tool["name"] == TOOL_NAME and tool["strict"] is True
    assert tool["parameters"]["additionalProperties"] is False


def test_the_notification_is_signed_over_its_raw_body() -> None:
    body = notification_body(
        delivery_id="d1", conversation_id=7, user="34600000001", reason="user_request",
        held_until=datetime(2026, 12, 3, 10, 0, tzinfo=UTC),
        messages=[{"text": str(n)} for n in range(30)],
    )
    data = json.loads(body)
    assert data["heldUntil"] == "2026-12-03T10:00:00Z" and data["event"] == "handover"
    assert [m["text"] for m in data["messages"]] == [str(n) for n in range(10, 30)]
    expected = "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert signature("k3y", body) == expected
    assert verify_signature("k3y", body, expected)
    assert not verify_signature("k3y", body + b" ", expected)
    assert not verify_signature("other", body, expected)
    assert not verify_signature("k3y", body, None)
