"""The fakes' contract files are the providers' published schemas, and the fakes keep to them.

``released/fakes/contracts/{meta,openai}.json`` are extracted from ``../shared/contracts`` by
``hack/extract-contracts.py``; these tests check the files are what the script produces now
(skipped cleanly when ``../shared/contracts`` is not there), that the extracted Meta schema
accepts the document's own examples, and that every answer the fakes give has the published
shape.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from released.fakes import FakeMeta, FakeOpenAI, contracts

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "extract-contracts.py"


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("extract_contracts", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["extract_contracts"] = module
    spec.loader.exec_module(module)
    return module


def test_extracted_contracts_are_current() -> None:
    script = load_script()
    source = script.find_contracts(None)
    if source is None:
        pytest.skip("../shared/contracts is not present")
    for provider in script.SOURCES:
        expected = script.render(script.extract(provider, source))
        have = (REPO / "released" / "fakes" / "contracts" / f"{provider}.json").read_text()
        assert have == expected, (
            f"released/fakes/contracts/{provider}.json is out of date: "
            "run python hack/extract-contracts.py"
        )


@pytest.mark.parametrize("provider", ["meta", "openai"])
def test_contract_files_name_source_commit_and_license(provider: str) -> None:
    source = contracts.document(provider)["_source"]
    assert source["upstream"].startswith("https://github.com/")
    assert len(source["commit"]) >= 7
    assert source["license"] == "MIT"
    assert "Permission is hereby granted" in source["license_text"]
    assert "do not edit" in source["generated_by"]
    for change in contracts.document(provider)["_transforms"]:
        assert change["why"], change


#: The Meta document's examples that its schema does not describe, and why.
META_EXAMPLES_OUTSIDE_THE_SCHEMA = {
    "Send typing indicator and read receipt": "mark-as-read: a README addendum rule",
    "Send Multi-Product Message": "a placeholder '<HEADER_TYPE>' where an enum value goes",
    "Send Order Details Message": "payments-only interactive types the schema does not list",
    "Send Order Status Message": "payments-only interactive types the schema does not list",
}


def test_meta_schema_accepts_the_documents_own_examples() -> None:
    op = contracts.operation("meta", contracts.MESSAGES)
    examples = op["requestBody"]["content"]["application/json"]["examples"]
    assert len(examples) >= 40
    refused = {}
    for name, body in examples.items():
        problem = contracts.check_request("meta", contracts.MESSAGES, body)
        if problem is not None:
            refused[name] = str(problem)
    assert set(refused) == set(META_EXAMPLES_OUTSIDE_THE_SCHEMA), refused
    # The mark-as-read example is accepted by the fake's addendum rule instead.
    read = examples["Send typing indicator and read receipt"]
    assert contracts.check_meta_message(read, "v25.0") is None


def test_meta_schema_refusals_are_worded_like_meta() -> None:
    def problem(body: dict[str, Any]) -> str:
        found = contracts.check_meta_message(body, "v25.0")
        assert found is not None, body
        return str(found)

    base = {"messaging_product": "whatsapp", "to": "34600111222"}
    assert problem({**base, "type": "text", "text": {"body": "x"}, "colour": "red"}) == (
        'Unexpected key "colour" on param "body".')
    assert problem({**base, "type": "image"}) == "The parameter image is required."
    assert problem({**base, "type": "text", "text": {"body": "x"},
                    "recipient_type": "crowd"}).startswith("Param recipient_type must be one of")
    assert problem({**base, "type": "location", "location": {"latitude": True}}).startswith(
        "Param location['latitude'] must be")


# -- the fakes' answers have the published shapes ---------------------------------------------


@pytest.fixture(scope="module")
def oai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI("sk-shapes", indexing_seconds=0) as fake:
        yield fake


def test_openai_answers_match_the_published_schemas(oai: FakeOpenAI) -> None:
    with openai.OpenAI(base_url=oai.url, api_key="sk-shapes", max_retries=0) as client:
        uploaded = client.files.create(file=("faqs.txt", b"Q: Hours?\nA: 9 to 5.",
                                             "text/plain"), purpose="assistants")
        store = client.vector_stores.create(name="shapes", metadata={"agent": "a"})
        client.vector_stores.files.create(vector_store_id=store.id, file_id=uploaded.id)
        batch = client.vector_stores.file_batches.create(vector_store_id=store.id,
                                                         file_ids=[uploaded.id])
        response = client.responses.create(
            model="gpt-6-luna", instructions="Q: Hours?\nA: 9 to 5.", input="hours?",
            tools=[{"type": "file_search", "vector_store_ids": [store.id]}],
            max_output_tokens=300)
        conversation = client.conversations.create()
        client.responses.create(model="gpt-4.1-mini", input="hi", conversation=conversation.id)
        calls = [
            ("POST /responses", "POST", "/responses",
             {"model": "gpt-6-luna", "input": "hours?", "max_output_tokens": 16}),
            ("GET /responses/{response_id}", "GET", f"/responses/{response.id}", None),
            ("POST /conversations", "POST", "/conversations", {}),
            ("GET /conversations/{conversation_id}", "GET", f"/conversations/{conversation.id}",
             None),
            ("GET /conversations/{conversation_id}/items", "GET",
             f"/conversations/{conversation.id}/items", None),
            ("GET /files", "GET", "/files", None),
            ("GET /files/{file_id}", "GET", f"/files/{uploaded.id}", None),
            ("POST /vector_stores", "POST", "/vector_stores", {"name": "x"}),
            ("GET /vector_stores", "GET", "/vector_stores", None),
            ("GET /vector_stores/{vector_store_id}", "GET", f"/vector_stores/{store.id}", None),
            ("POST /vector_stores/{vector_store_id}", "POST", f"/vector_stores/{store.id}",
             {"name": "y"}),
            ("GET /vector_stores/{vector_store_id}/files", "GET",
             f"/vector_stores/{store.id}/files", None),
            ("GET /vector_stores/{vector_store_id}/files/{file_id}", "GET",
             f"/vector_stores/{store.id}/files/{uploaded.id}", None),
            ("GET /vector_stores/{vector_store_id}/file_batches/{batch_id}", "GET",
             f"/vector_stores/{store.id}/file_batches/{batch.id}", None),
            ("POST /vector_stores/{vector_store_id}/search", "POST",
             f"/vector_stores/{store.id}/search", {"query": "hours"}),
            ("GET /models", "GET", "/models", None),
            ("GET /models/{model}", "GET", "/models/gpt-6-luna", None),
            ("DELETE /vector_stores/{vector_store_id}/files/{file_id}", "DELETE",
             f"/vector_stores/{store.id}/files/{uploaded.id}", None),
            ("DELETE /vector_stores/{vector_store_id}", "DELETE", f"/vector_stores/{store.id}",
             None),
            ("DELETE /files/{file_id}", "DELETE", f"/files/{uploaded.id}", None),
            ("DELETE /conversations/{conversation_id}", "DELETE",
             f"/conversations/{conversation.id}", None),
            ("DELETE /responses/{response_id}", "DELETE", f"/responses/{response.id}", None),
        ]
        problems = {}
        for name, method, path, body in calls:
            answer = httpx.request(method, oai.url + path, json=body,
                                   headers={"Authorization": "Bearer sk-shapes"})
            assert answer.status_code == 200, (name, answer.text)
            problem = contracts.check_response("openai", name, answer.json())
            if problem:
                problems[name] = problem
        upload = oai.requests("POST /v1/files")
        assert upload and upload[-1]["status"] == 200
        assert problems == {}, json.dumps(problems, indent=1)


def test_meta_answers_match_the_published_schemas() -> None:
    with FakeMeta("t", waba_subscribed=True, status_webhooks=()) as meta:
        headers = {"Authorization": "Bearer t"}
        calls = [
            ("POST /{Version}/{Phone-Number-ID}/messages", "POST", "/1/messages",
             {"messaging_product": "whatsapp", "to": "34600111222", "type": "text",
              "text": {"body": "hi"}}),
            ("POST /{Version}/{Phone-Number-ID}/messages", "POST", "/1/messages",
             {"messaging_product": "whatsapp", "recipient": "US.1234567", "type": "text",
              "text": {"body": "hi"}}),
            ("GET /{Version}/{Phone-Number-ID}", "GET", "/1", None),
            ("POST /{Version}/{Phone-Number-ID}", "POST", "/1",
             {"webhook_configuration": {"override_callback_uri": "https://b.example.com/w",
                                        "verify_token": "v"}}),
            ("GET /{Version}/{WABA-ID}/subscribed_apps", "GET",
             "/100000000000000/subscribed_apps", None),
            ("POST /{Version}/{WABA-ID}/subscribed_apps", "POST",
             "/100000000000000/subscribed_apps", None),
            ("DELETE /{Version}/{WABA-ID}/subscribed_apps", "DELETE",
             "/100000000000000/subscribed_apps", None),
        ]
        for name, method, path, body in calls:
            answer = httpx.request(method, meta.url + path, json=body, headers=headers)
            assert answer.status_code == 200, (name, answer.text)
            assert contracts.check_response("meta", name, answer.json()) is None, (
                name, answer.json())
        refused = httpx.post(meta.url + "/1/messages", json={"to": "1"}, headers=headers)
        error = refused.json()
        assert contracts.validation_errors(
            "meta", "#/components/schemas/GraphAPIError", error) == []


def test_openai_error_envelope_matches_the_published_schema(oai: FakeOpenAI) -> None:
    refused = httpx.post(oai.url + "/responses", json={"model": "gpt-6-luna", "input": "x",
                                                       "max_output_tokens": 1},
                         headers={"Authorization": "Bearer sk-shapes"})
    assert refused.status_code == 400
    assert contracts.validation_errors(
        "openai", "#/components/schemas/ErrorResponse", refused.json()) == []
