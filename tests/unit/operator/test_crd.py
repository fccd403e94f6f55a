"""The CRD file: names, printer columns, a structural schema that Kubernetes 1.20 accepts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from whatsapp_operator import GROUP, KIND, PLURAL, VERSION

from tests.unit.operator.crd_helpers import agents_in_examples, crd, schema, validator, version


def test_names_and_scope() -> None:
    spec = crd()["spec"]
    assert crd()["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd()["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == KIND
    assert names["plural"] == PLURAL
    assert names["singular"] == "whatsappagent"
    assert names["shortNames"] == ["waa"]
    assert names["categories"] == ["released"]


def test_version_served_stored_with_status_subresource() -> None:
    v = version()
    assert v["name"] == VERSION
    assert v["served"] is True
    assert v["storage"] is True
    assert v["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in version()["additionalPrinterColumns"]}
    assert list(columns) == ["Phone", "Model", "Model-Status", "Held", "Ready", "Reason", "Age"]
    # How many conversations a person holds (spec.handover), as the periodic count wrote it.
    assert columns["Held"]["jsonPath"] == ".status.handover.held"
    assert columns["Held"]["type"] == "integer"
    assert columns["Phone"]["jsonPath"] == ".spec.phoneNumberId"
    # Agents that still name a deprecated model stand out in `kubectl get waa`.
    assert columns["Model"]["jsonPath"] == ".spec.assistant.model"
    assert (
        columns["Model-Status"]["jsonPath"]
        == '.status.conditions[?(@.type=="ModelAvailable")].reason'
    )
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }


def _walk(
    node: dict[str, Any], path: str, in_preserve: bool = False
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    yield path, node, in_preserve
    preserve = in_preserve or bool(node.get("x-kubernetes-preserve-unknown-fields"))
    for key, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{key}", preserve)
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]", preserve)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}", preserve)


def test_schema_is_structural_and_1_20_compatible() -> None:
    forbidden = {"x-kubernetes-validations", "$ref", "oneOf", "not", "allOf"}
    for path, node, in_preserve in _walk(schema(), "$"):
        assert not forbidden & set(node), f"{path}: uses {forbidden & set(node)}"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node, f"{path}: structural schemas need a type"
            assert "anyOf" not in node, path
        if in_preserve:
            assert "default" not in node, f"{path}: no defaults under preserve-unknown-fields"


def test_no_cel_anywhere_in_the_file() -> None:
    from tests.unit.operator.crd_helpers import CRD_PATH

    code = [ln for ln in CRD_PATH.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in code if "x-kubernetes-validations" in ln]


def test_spec_requires_phone_and_secrets() -> None:
    spec = schema()["properties"]["spec"]
    assert set(spec["required"]) == {"phoneNumberId", "secrets"}
    assert schema()["required"] == ["spec"]
    assert set(spec["properties"]["secrets"]["required"]) == {"meta", "openai"}


def test_status_schema_tolerates_unknown_fields() -> None:
    status = schema()["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    conditions = status["properties"]["conditions"]["items"]["properties"]
    assert set(conditions) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(status["properties"]) >= {
        "observedGeneration",
        "conditions",
        "webhookUrl",
        "knowledge",
        "lastRotation",
        "nextRotation",
        "database",
    }


def test_examples_validate_against_the_schema() -> None:
    agents = agents_in_examples()
    assert len(agents) >= 2
    for agent in agents:
        errors = sorted(validator().iter_errors(agent), key=str)
        assert not errors, [e.message for e in errors]


def _agent(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phoneNumberId": "106540352242922",
        "faqs": [{"q": "Hours?", "a": "9 to 5."}],
        "secrets": {"meta": {"name": "m"}, "openai": {"name": "o"}},
    }
    base.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "a"},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"phoneNumberId": "12a45"},
        {"phoneNumberId": "123"},
        {"phoneNumberId": None},
        {"secrets": {"meta": {"name": "m"}}},
        {"faqs": []},
        {"faqs": [{"q": "", "a": "x"}]},
        {"faqs": [{"q": "x"}]},
        {"faqs": [{"q": "x", "a": "y" * 4001}]},
        {"displayPhoneNumber": "015112345678"},
        {"assistant": {"rateLimitPerSecond": 0}},
        {"assistant": {"maxOutputTokens": 8}},
        {"assistant": {"language": "EN"}},
        {"ingress": {"host": "Bad_Host"}},
        {"ingress": {"webhook": {"register": "yes"}}},
        {"web": {"replicas": 21}},
        {"worker": {"concurrency": 0}},
        {"worker": {"resources": {"requests": {"cpu": "lots"}}}},
        {"redis": {"storage": "one gig"}},
        {"retention": {"days": 0}},
        {"rotation": {"interval": "5 days"}},
        {"suspend": "no"},
    ],
)
def test_schema_rejects_bad_specs(spec: dict[str, Any]) -> None:
    assert list(validator().iter_errors(_agent(**spec))), spec


def test_schema_accepts_minimal_and_faqs_from() -> None:
    assert not list(validator().iter_errors(_agent()))
    ref = {"configMapKeyRef": {"name": "faqs", "key": "faqs.yaml"}}
    assert not list(validator().iter_errors(_agent(faqs=None, faqsFrom=ref)))
    assert not list(validator().iter_errors(_agent(worker={"resources": {"requests": {"cpu": 1}}})))
