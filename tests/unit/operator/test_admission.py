"""The validating admission handler refuses what reconciliation would refuse: rules and policy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from whatsapp_operator.admission import admission_errors, validate_agent
from whatsapp_operator.config import OperatorSettings, get_operator_settings

SPEC: dict[str, Any] = {
    "phoneNumberId": "1234567890",
    "faqs": [{"q": "Hours?", "a": "9 to 5."}],
    "secrets": {"meta": {"name": "meta"}, "openai": {"name": "openai"}},
    "ingress": {"host": "bot.acme.bots.example.com"},
}


@pytest.fixture
def platform(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RELEASED_INGRESS_HOST_SUFFIXES", '["{namespace}.bots.example.com"]')
    monkeypatch.setenv("RELEASED_INGRESS_CLASSES", '["public"]')
    get_operator_settings.cache_clear()
    yield
    get_operator_settings.cache_clear()


def test_an_agent_within_the_policy_is_admitted(platform: None) -> None:
    validate_agent(SPEC, name="bot", namespace="acme")


def test_a_foreign_host_and_a_snippet_are_refused_with_422(platform: None) -> None:
    spec = {
        **SPEC,
        "ingress": {
            "host": "bot.other.bots.example.com",
            "className": "internal",
            "annotations": {"nginx.ingress.kubernetes.io/server-snippet": "return 200;"},
        },
    }
    with pytest.raises(kopf.AdmissionError) as refused:
        validate_agent(spec, name="bot", namespace="acme")
    assert refused.value.code == 422
    message = str(refused.value)
    assert "spec.ingress.host 'bot.other.bots.example.com'" in message
    assert "spec.ingress.className 'internal'" in message
    assert "server-snippet" in message


def test_spec_rules_come_first_and_policy_needs_a_namespace() -> None:
    settings = OperatorSettings()
    bad = {**SPEC, "faqs": [{"q": "Hours?", "a": "x"}, {"q": "hours", "a": "y"}]}
    (problem,) = admission_errors(bad, "bot", "acme", settings)
    assert "duplicates" in problem
    assert admission_errors(SPEC, "bot", None, settings) == []
    (host,) = admission_errors(SPEC, "bot", "acme", settings)
    assert "allows no hosts" in host
