"""The pydantic spec mirrors the CRD: same properties, same defaults, same constraints."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from released.agent.spec import (
    AgentSpec,
    Faq,
    Resources,
    SecretName,
    Secrets,
    faqs_json,
    parse_duration,
    parse_faqs_document,
)
from tests.unit.operator.crd_helpers import agents_in_examples, spec_schema

MINIMAL: dict[str, Any] = {
    "phoneNumberId": "106540352242922",
    "faqs": [{"q": "Hours?", "a": "9 to 5."}],
    "secrets": {"meta": {"name": "m"}, "openai": {"name": "o"}},
}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _fields_by_alias(model: type[BaseModel]) -> dict[str, Any]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _compare(schema: dict[str, Any], model: type[BaseModel], path: str) -> None:
    properties = schema.get("properties", {})
    fields = _fields_by_alias(model)
    assert set(properties) == set(fields), (
        f"{path}: CRD has {sorted(set(properties) - set(fields))} not in {model.__name__}, "
        f"{model.__name__} has {sorted(set(fields) - set(properties))} not in the CRD"
    )
    required = set(schema.get("required", []))
    for key, prop in properties.items():
        field = fields[key]
        where = f"{path}.{key}"
        assert field.is_required() == (key in required), f"{where}: required differs"
        if "default" in prop:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                # ``default: {}`` in the CRD: the model's default is the empty object.
                assert prop["default"] == {}, where
                assert default == type(default).model_validate({}), where
            else:
                assert default == prop["default"], f"{where}: {default!r} != {prop['default']!r}"
                assert type(default) is type(prop["default"]) or isinstance(default, float), where
        elif not field.is_required():
            default = field.get_default(call_default_factory=True)
            assert default in (None, {}), f"{where}: model has a default the CRD lacks"
        sub = _model_of(field.annotation)
        target = prop.get("items", prop) if prop.get("type") == "array" else prop
        if sub is not None and "properties" in target:
            _compare(target, sub, where)


def test_every_crd_property_and_default_is_in_the_model() -> None:
    _compare(spec_schema(), AgentSpec, "spec")


def test_resources_model_matches_the_crd() -> None:
    resources = spec_schema()["properties"]["web"]["properties"]["resources"]
    assert set(resources["properties"]) == set(Resources.model_fields)


def test_minimal_spec_gets_the_crd_defaults() -> None:
    spec = AgentSpec.from_resource(MINIMAL)
    assert spec.assistant.model == "gpt-6-luna"
    assert spec.assistant.reasoning_effort is None and spec.assistant.verbosity is None
    assert spec.assistant.rate_limit_per_second == 1
    assert spec.assistant.max_output_tokens == 400
    assert spec.web.replicas == 1
    assert spec.worker.concurrency == 2
    assert spec.redis.storage == "1Gi"
    assert spec.retention.days == 14
    assert spec.rotation.interval == "60d"
    assert spec.rotation.interval_timedelta == timedelta(days=60)
    assert spec.suspend is False
    assert spec.webhook_register is False
    assert spec.ingress_host is None
    assert spec.database_secret_ref is None


def test_examples_parse_and_round_trip() -> None:
    for agent in agents_in_examples():
        spec = AgentSpec.from_resource(agent["spec"])
        assert AgentSpec.from_resource(spec.to_resource()) == spec
    (acme_body,) = [a for a in agents_in_examples() if a["metadata"]["name"] == "acme"]
    acme = AgentSpec.from_resource(acme_body["spec"])
    assert acme.webhook_register is True
    assert acme.ingress_host == "acme.bots.example.com"


def test_snake_case_names_are_accepted() -> None:
    spec = AgentSpec(
        phone_number_id="12345",
        faqs=[Faq(q="a", a="b")],
        secrets=Secrets(meta=SecretName(name="m"), openai=SecretName(name="o")),
    )
    assert spec.to_resource()["phoneNumberId"] == "12345"


def test_spec_is_frozen_and_hashable_free_of_surprises() -> None:
    spec = AgentSpec.from_resource(MINIMAL)
    with pytest.raises(ValidationError):
        spec.suspend = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "patch",
    [
        {"phoneNumberId": "12a"},
        {"faqs": []},
        {"assistant": {"rateLimitPerSecond": 0}},
        {"rotation": {"interval": "2 weeks"}},
        {"ingress": {"host": "not a host"}},
        {"secrets": {"meta": {"name": "m"}}},
    ],
)
def test_model_rejects_what_the_crd_rejects(patch: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AgentSpec.from_resource({**MINIMAL, **patch})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60d", timedelta(days=60)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("0s", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "60", "1w", "-1d", "1.5h", "d", "60 d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_faqs_document_json_and_yaml() -> None:
    expected = [Faq(q="Hours?", a="9 to 5.")]
    assert parse_faqs_document('[{"q": "Hours?", "a": "9 to 5."}]') == expected
    assert parse_faqs_document("- q: Hours?\n  a: 9 to 5.\n") == expected
    assert parse_faqs_document("faqs:\n- q: Hours?\n  a: 9 to 5.\n") == expected


@pytest.mark.parametrize("text", ["", "{", "q: x", "[]", "- q: x", "- {q: '', a: b}", "- 3"])
def test_parse_faqs_document_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_faqs_document(text)


def test_faqs_json_is_stable() -> None:
    faqs = [Faq(q="Öffnungszeiten?", a="9 bis 17 Uhr")]
    assert faqs_json(faqs) == faqs_json(list(faqs))
    assert "Öffnungszeiten" in faqs_json(faqs)
