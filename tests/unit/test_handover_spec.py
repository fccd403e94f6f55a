"""``spec.handover``: what the model, the cross-field rules and the platform's policy refuse.

Every refusal names the field and says what to do; none quotes the notification URL (such
URLs often carry a token in their path).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from released.agent.policy import (
    Policy,
    address_refused,
    check_notify_addresses,
    check_notify_url,
    notify_endpoint,
)
from released.agent.spec import AgentSpec, Handover, HandoverNotify, SecretKeyRef
from released.agent.validation import InvalidSpec, parse_spec, validate_spec

MINIMAL: dict[str, Any] = {
    "phoneNumberId": "106540352242922",
    "faqs": [{"q": "Hours?", "a": "9 to 5."}],
    "secrets": {"meta": {"name": "m"}, "openai": {"name": "o"}},
}
NOTIFY = {"url": "https://helpdesk.example.com/hooks/wa", "secretRef": {"name": "hmac", "key": "k"}}


def spec(handover: dict[str, Any] | None) -> AgentSpec:
    body = dict(MINIMAL)
    if handover is not None:
        body["handover"] = handover
    return AgentSpec.from_resource(body)


def problems(handover: dict[str, Any], name: str = "acme") -> list[str]:
    return validate_spec(spec(handover), name=name)


# -- the model ------------------------------------------------------------------------------


def test_absent_means_off_and_empty_means_on_with_the_defaults() -> None:
    assert spec(None).handover is None
    on = spec({}).handover
    assert on is not None
    assert (on.hold_duration, on.after_fallbacks, on.on_order) == ("24h", 2, True)
    assert on.hold_timedelta == timedelta(hours=24)
    assert on.message is None and on.phrases is None and on.notify is None
    assert spec({}).notify_secret_ref is None
    assert spec({"notify": NOTIFY}).notify_secret_ref is not None


@pytest.mark.parametrize(
    "handover",
    [
        {"holdDuration": "24 hours"},
        {"holdDuration": 86400},
        {"afterFallbacks": -1},
        {"afterFallbacks": 21},
        {"message": ""},
        {"message": "x" * 1025},
        {"phrases": {"en": []}},
        {"phrases": {"en": [""]}},
        {"phrases": {"en": ["x" * 101]}},
        {"phrases": {"en": ["p"] * 51}},
        {"phrases": {f"l{i}": ["p"] for i in range(21)}},
        {"notify": {"url": "http://helpdesk.example.com/hook", "secretRef": NOTIFY["secretRef"]}},
        {"notify": {"url": "https://helpdesk.example.com/hook"}},
        {"notify": {"url": "https://a b/hook", "secretRef": NOTIFY["secretRef"]}},
        {"notify": {"url": NOTIFY["url"], "secretRef": {"name": "Hmac", "key": "k"}}},
    ],
)
def test_the_model_refuses_what_the_crd_schema_refuses(handover: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(handover)


def test_a_full_handover_round_trips() -> None:
    full = {
        "message": "Un momento, alguien del equipo te atiende.",
        "holdDuration": "7d",
        "afterFallbacks": 0,
        "onOrder": False,
        "phrases": {"es": ["hablar con una persona"], "pt-BR": ["atendente"]},
        "notify": NOTIFY,
    }
    parsed = spec(full)
    assert parsed.to_resource()["handover"] == full
    assert AgentSpec.from_resource(parsed.to_resource()) == parsed
    assert validate_spec(parsed, name="acme") == []


# -- cross-field rules ----------------------------------------------------------------------


@pytest.mark.parametrize("hold", ["0m", "59s", "91d", "2200h"])
def test_a_hold_outside_a_minute_to_ninety_days_is_refused(hold: str) -> None:
    (problem,) = problems({"holdDuration": hold})
    assert problem.startswith(f"spec.handover.holdDuration {hold} is outside 1m..90d")


@pytest.mark.parametrize("hold", ["1m", "30m", "24h", "90d"])
def test_holds_within_the_bounds_are_fine(hold: str) -> None:
    assert problems({"holdDuration": hold}) == []


def test_phrase_languages_are_tags_and_phrases_are_not_blank() -> None:
    found = problems({"phrases": {"english": ["human"], "en": ["human", "   "], "EN": ["x"]}})
    assert any("'english' is not a language tag" in p for p in found)
    assert any("'EN' is not a language tag" in p for p in found)
    assert "spec.handover.phrases.en[1] is blank: remove it" in found
    assert len(found) == 3


def test_a_blank_message_would_tell_the_customer_nothing() -> None:
    (problem,) = problems({"message": "  \n"})
    assert problem.startswith("spec.handover.message is blank")


def test_the_notification_key_may_not_live_in_the_operators_own_secret() -> None:
    own = {"name": "acme-credentials", "key": "adminToken"}
    handover = {"notify": {"url": NOTIFY["url"], "secretRef": own}}
    (problem,) = problems(handover, name="acme")
    assert problem.startswith("spec.handover.notify.secretRef.name: 'acme-credentials' is the ")
    with pytest.raises(InvalidSpec) as refused:
        parse_spec({**MINIMAL, "handover": handover}, name="acme")
    assert refused.value.reason == "InvalidSpec"


def test_a_url_without_a_usable_port_is_refused() -> None:
    handover = {"notify": {"url": "https://helpdesk.example.com:99999/h",
                           "secretRef": NOTIFY["secretRef"]}}  # fmt: skip
    (problem,) = problems(handover)
    assert problem.startswith("spec.handover.notify.url is not a URL")
    assert "99999" not in problem


# -- the platform's policy ------------------------------------------------------------------

TOKEN = "s3cr3t-path-token"


def notify(url: str) -> AgentSpec:
    return spec({"notify": {"url": url, "secretRef": NOTIFY["secretRef"]}})


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (f"https://10.96.0.1/{TOKEN}", "a private or reserved address"),
        (f"https://169.254.169.254/{TOKEN}", "a link-local or metadata address"),
        (f"https://127.0.0.1:8443/{TOKEN}", "a loopback address"),
        (f"https://[::1]/{TOKEN}", "a loopback address"),
        (f"https://[::ffff:10.0.0.1]/{TOKEN}", "a private or reserved address"),
        (f"https://100.64.0.1/{TOKEN}", "a link-local or metadata address"),
        (f"https://user:pw@helpdesk.example.com/{TOKEN}", "must not carry a user or password"),
    ],
)
def test_internal_addresses_and_credentials_are_refused_without_quoting_the_url(
    url: str, fragment: str
) -> None:
    (problem,) = check_notify_url(notify(url), Policy())
    assert problem.startswith("spec.handover.notify.url ")
    assert fragment in problem
    assert TOKEN not in problem and ":pw@" not in problem


def test_http_is_refused_by_the_policy_too() -> None:
    """The schema refuses http; a spec built around the schema (in code) still is."""
    plain = HandoverNotify.model_construct(
        url=f"http://helpdesk.example.com/{TOKEN}", secret_ref=SecretKeyRef(name="hmac", key="k")
    )
    built = spec({}).model_copy(update={"handover": Handover.model_construct(notify=plain)})
    (problem,) = check_notify_url(built, Policy())
    assert "must be an https:// URL" in problem and TOKEN not in problem


def test_public_addresses_and_names_pass_the_static_check() -> None:
    assert check_notify_url(notify("https://93.184.216.34/hook"), Policy()) == []
    assert check_notify_url(notify("https://helpdesk.example.com/hook"), Policy()) == []
    assert check_notify_url(spec({}), Policy()) == []
    assert check_notify_url(spec(None), Policy()) == []


def test_the_platform_can_allow_a_network_for_notifications_only() -> None:
    policy = Policy(notify_allowed_networks=("127.0.0.0/8", "10.20.0.0/16"))
    assert check_notify_url(notify("https://127.0.0.1:8443/hook"), policy) == []
    assert check_notify_url(notify("https://10.20.3.4/hook"), policy) == []
    assert check_notify_url(notify("https://10.21.0.1/hook"), policy) != []
    # ... and not for OpenAI base URLs: one allowance does not open the other.
    assert address_refused("127.0.0.1", policy) == "a loopback address"
    openai_only = Policy(openai_allowed_networks=("127.0.0.0/8",))
    assert check_notify_url(notify("https://127.0.0.1/hook"), openai_only) != []


def test_resolved_addresses_must_all_be_allowed() -> None:
    policy = Policy(notify_allowed_networks=("10.20.0.0/16",))
    assert check_notify_addresses(["93.184.216.34"], policy) == []
    assert check_notify_addresses(["10.20.0.9"], policy) == []
    (mixed,) = check_notify_addresses(["93.184.216.34", "127.0.0.1"], policy)
    assert "resolves to a loopback address" in mixed
    (none,) = check_notify_addresses([], policy)
    assert "does not resolve" in none


def test_the_endpoint_defaults_to_443() -> None:
    assert notify_endpoint("https://h.example.com/x") == ("h.example.com", 443)
    assert notify_endpoint("https://h.example.com:8443/x") == ("h.example.com", 8443)
