"""Cross-field and semantic checks: each problem is found and named so a person can fix it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from released.agent.naming import validate_name
from released.agent.spec import AgentSpec, Faq
from released.agent.validation import (
    InvalidSpec,
    normalize_question,
    parse_quantity,
    parse_spec,
    validate_faqs,
    validate_spec,
)
from tests.unit.operator.crd_helpers import agents_in_examples

BASE: dict[str, Any] = {
    "phoneNumberId": "106540352242922",
    "faqs": [{"q": "Hours?", "a": "9 to 5."}, {"q": "Delivery?", "a": "Yes."}],
    "secrets": {"meta": {"name": "acme-meta"}, "openai": {"name": "acme-openai"}},
}


def problems(name: str | None = None, **patch: Any) -> list[str]:
    raw = {**BASE, **patch}
    return validate_spec(
        AgentSpec.from_resource({k: v for k, v in raw.items() if v is not None}), name=name
    )


def test_examples_have_no_problems() -> None:
    for agent in agents_in_examples():
        spec = AgentSpec.from_resource(agent["spec"])
        assert validate_spec(spec, name=agent["metadata"]["name"]) == []


def test_good_spec_has_no_problems() -> None:
    assert problems() == []


def test_no_faqs_at_all() -> None:
    (problem,) = problems(faqs=None)
    assert "spec.faqs" in problem and "spec.faqsFrom" in problem


def test_faqs_and_faqs_from() -> None:
    ref = {"configMapKeyRef": {"name": "faqs", "key": "faqs.yaml"}}
    assert problems(faqsFrom=ref) == ["spec.faqs and spec.faqsFrom are both set: keep one of them"]
    assert problems(faqs=None, faqsFrom=ref) == []


@pytest.mark.parametrize("duplicate", ["Hours?", "hours?", "  HOURS ? ", "Hours", "hours!"])
def test_duplicate_questions(duplicate: str) -> None:
    faqs = [*BASE["faqs"], {"q": duplicate, "a": "Other answer."}]
    (problem,) = problems(faqs=faqs)
    assert problem.startswith("spec.faqs[2].q duplicates spec.faqs[0].q")


def test_blank_faq_text() -> None:
    found = problems(faqs=[{"q": "  ", "a": "x"}, {"q": "y", "a": "\n"}])
    assert found == [
        "spec.faqs[0].q is blank: write the question",
        "spec.faqs[1].a is blank: write the answer",
    ]


def test_validate_faqs_for_config_maps() -> None:
    faqs = [Faq(q="A b", a="1"), Faq(q="a  B", a="2")]
    (problem,) = validate_faqs(faqs, where="ConfigMap faqs key faqs.yaml")
    assert problem.startswith("ConfigMap faqs key faqs.yaml[1].q duplicates")
    assert normalize_question("  What   IS it?? ") == "what is it"


def test_webhook_register_without_host() -> None:
    (problem,) = problems(ingress={"webhook": {"register": True}})
    assert problem.startswith("spec.ingress.webhook.register needs spec.ingress.host")


def test_tls_without_host() -> None:
    (problem,) = problems(ingress={"tlsSecretName": "tls"})
    assert problem.startswith("spec.ingress.tlsSecretName needs spec.ingress.host")


def test_ingress_without_host() -> None:
    (problem,) = problems(ingress={"className": "nginx"})
    assert problem.startswith("spec.ingress.host is missing")


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("a" * 64 + ".example.com", "not a DNS-1123 name"),
        ("localhost", "not a fully qualified name"),
        ("10.0.0.1", "is an IP address"),
    ],
)
def test_bad_hosts(host: str, fragment: str) -> None:
    (problem,) = problems(ingress={"host": host})
    assert problem.startswith("spec.ingress.host") and fragment in problem


def test_bad_annotation_key() -> None:
    (problem,) = problems(ingress={"host": "a.example.com", "annotations": {"bad key!": "x"}})
    assert "'bad key!' is not a valid annotation key" in problem
    assert (
        problems(
            ingress={
                "host": "a.example.com",
                "annotations": {"cert-manager.io/cluster-issuer": "x"},
            }
        )
        == []
    )


@pytest.mark.parametrize(
    ("interval", "ok"),
    [("59m", False), ("3599s", False), ("1h", True), ("60d", True), ("3651d", False)],
)
def test_rotation_interval_bounds(interval: str, ok: bool) -> None:
    found = problems(rotation={"interval": interval})
    assert (found == []) is ok
    if not ok:
        assert found[0].startswith(f"spec.rotation.interval {interval}")


def test_requests_above_limits() -> None:
    resources = {
        "requests": {"memory": "1Gi", "cpu": "100m"},
        "limits": {"memory": "512Mi", "cpu": "1"},
    }
    (problem,) = problems(worker={"resources": resources})
    assert problem.startswith("spec.worker.resources.requests.memory (1Gi) is larger than")


def test_blank_texts_and_zero_storage() -> None:
    found = problems(
        assistant={"instructions": " ", "fallbackMessage": " "}, redis={"storage": "0"}
    )
    assert [p.split(" ")[0] for p in found] == [
        "spec.assistant.instructions",
        "spec.assistant.fallbackMessage",
        "spec.redis.storage",
    ]


def test_operator_owned_names_are_refused() -> None:
    found = problems(
        name="acme",
        secrets={"meta": {"name": "acme-credentials"}, "openai": {"name": "acme-openai"}},
        faqs=None,
        faqsFrom={"configMapKeyRef": {"name": "acme-faqs", "key": "x"}},
    )
    assert [p.split(":")[0] for p in found] == [
        "spec.secrets.meta.name",
        "spec.faqsFrom.configMapKeyRef.name",
    ]
    assert (
        problems(
            name="other", secrets={"meta": {"name": "acme-credentials"}, "openai": {"name": "o"}}
        )
        == []
    )


def test_parse_spec_reports_schema_and_semantic_problems() -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec({"phoneNumberId": "12a", "faqs": [{"q": "x"}]})
    assert info.value.reason == "InvalidSpec"
    assert "spec.phoneNumberId: String should match pattern" in str(info.value)
    assert "spec.faqs[0].a: is required" in info.value.problems
    assert "spec.secrets: is required" in info.value.problems
    with pytest.raises(InvalidSpec, match="both set"):
        parse_spec({**BASE, "faqsFrom": {"configMapKeyRef": {"name": "f", "key": "k"}}})
    assert parse_spec(
        {**BASE, "faqsFrom": {"configMapKeyRef": {"name": "f", "key": "k"}}}, check=False
    )
    assert parse_spec(BASE).phone_number_id == BASE["phoneNumberId"]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Decimal("0.1")),
        ("1Gi", Decimal(2**30)),
        ("2", Decimal(2)),
        ("1e3", Decimal(1000)),
        (3, Decimal(3)),
        ("1.5k", Decimal(1500)),
    ],
)
def test_parse_quantity(text: str | int, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "lots", "1mi", "1..2"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("acme.shop", "starting with a letter (no dots)"),
        ("1acme", "starting with a letter"),
        ("Acme", "lower-case"),
        ("a" * 47, "47 characters long; at most 46"),
    ],
)
def test_agent_names_that_cannot_name_children(name: str, fragment: str) -> None:
    (problem,) = validate_name(name)
    assert problem.startswith("metadata.name") and fragment in problem
    assert problems(name=name) == [problem]


def test_agent_names_that_fit() -> None:
    assert validate_name("a" * 46) == []  # a-...-purge is 52 characters, a CronJob's most
    assert validate_name("acme-shop-2") == []
