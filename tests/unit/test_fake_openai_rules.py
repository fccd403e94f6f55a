"""The OpenAI fake refuses what the real API refuses and models what it does over time.

Each refusal test sends a request the real API refuses (per ``../shared/contracts``: OpenAI's
OpenAPI document and the README of what changed since) and expects OpenAI's error envelope
``{"error": {message, type, param, code}}`` and HTTP status; the acceptance tests send the right
form. Requests go through the real ``openai`` SDK where it can send them, raw HTTP otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from released.fakes import FakeOpenAI

KEY = "sk-openai-rules"
FAQ = "Q: What are your opening hours?\nA: Monday to Saturday, 8am to 6pm."


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(KEY) as fake:
        yield fake


@pytest.fixture
def oai(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def client(oai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=oai.url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def raw(oai: FakeOpenAI, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
    return httpx.request(method, f"{oai.url}{path}", json=body, params=params,
                         headers={"Authorization": f"Bearer {KEY}"})


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None, param: str | None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert (error["code"], error["param"]) == (code, param)
    return error


def respond(oai: FakeOpenAI, **body: Any) -> httpx.Response:
    return raw(oai, "POST", "/responses", {"input": "When are you open?", **body})


# -- models and their shutdowns ---------------------------------------------------------------


def test_gpt_4_1_mini_is_refused_after_its_shutdown(oai: FakeOpenAI) -> None:
    oai.set_clock("2027-01-13T12:00:00Z")
    assert respond(oai, model="gpt-4.1-mini", instructions=FAQ).status_code == 200
    assert raw(oai, "GET", "/models/gpt-4.1-mini").json()["shutdown_date"] == "2027-01-14"
    oai.set_clock("2027-01-15")
    error = assert_openai_error(respond(oai, model="gpt-4.1-mini"), 404, "model_not_found",
                                "model")
    assert "gpt-4.1-mini" in error["message"]
    assert_openai_error(raw(oai, "GET", "/models/gpt-4.1-mini"), 404, "model_not_found", "model")
    listed = {m["id"] for m in raw(oai, "GET", "/models").json()["data"]}
    assert "gpt-4.1-mini" not in listed and "gpt-5-mini" not in listed
    assert {"gpt-6-luna", "gpt-5.4-nano"} <= listed


def test_unknown_model_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="gpt-9-imaginary", input="hi")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9-imaginary")


def test_gpt_6_luna_exists_without_shutdown(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    oai.set_clock("2029-06-01")
    model = client.models.retrieve("gpt-6-luna")
    assert model.id == "gpt-6-luna"
    assert raw(oai, "GET", "/models/gpt-6-luna").json()["shutdown_date"] is None
    for effort in ("none", "minimal", "low", "medium", "high", "xhigh", "max"):
        response = client.responses.create(model="gpt-6-luna", input="hi",
                                           reasoning={"effort": effort})
        assert response.reasoning is not None and response.reasoning.effort == effort


def test_reasoning_effort_the_model_does_not_take(oai: FakeOpenAI) -> None:
    assert_openai_error(respond(oai, model="gpt-5.4-nano", reasoning={"effort": "max"}), 400,
                        "unsupported_value", "reasoning.effort")
    assert_openai_error(respond(oai, model="gpt-4.1-mini", reasoning={"effort": "low"}), 400,
                        "unsupported_parameter", "reasoning.effort")
    assert_openai_error(respond(oai, model="gpt-4.1-mini", text={"verbosity": "low"}), 400,
                        "unsupported_value", "text.verbosity")
    assert_openai_error(respond(oai, model="gpt-6-luna", reasoning={"effort": "extreme"}), 400,
                        "invalid_value", "reasoning.effort")


def test_models_can_be_added_with_a_shutdown(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.add_model("ft:gpt-6-luna:acme", shutdown_date="2027-03-01", efforts=["none", "low"])
    assert client.models.retrieve("ft:gpt-6-luna:acme").id == "ft:gpt-6-luna:acme"
    oai.set_clock("2027-03-01")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ft:gpt-6-luna:acme")


# -- request rules ----------------------------------------------------------------------------


def test_conversation_with_previous_response_id_is_refused(oai: FakeOpenAI) -> None:
    assert_openai_error(
        respond(oai, model="gpt-6-luna", conversation="conv_1", previous_response_id="resp_1"),
        400, "mutually_exclusive_parameters", "conversation")


def test_reusable_prompts_are_refused_after_their_shutdown(oai: FakeOpenAI) -> None:
    prompt = {"id": "pmpt_123", "version": "2"}
    oai.set_clock("2026-11-29")
    assert respond(oai, model="gpt-6-luna", prompt=prompt).status_code == 200
    oai.set_clock("2026-11-30")
    assert_openai_error(respond(oai, model="gpt-6-luna", prompt=prompt), 400,
                        "unsupported_parameter", "prompt")
    # The Assistants API is gone too: its routes do not exist.
    assert raw(oai, "POST", "/assistants", {"model": "gpt-6-luna"}).status_code == 404


def test_max_output_tokens_below_16_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gpt-6-luna", input="hi", max_output_tokens=15)
    assert (info.value.code, info.value.param) == ("integer_below_min_value",
                                                   "max_output_tokens")
    assert client.responses.create(model="gpt-6-luna", input="hi", max_output_tokens=16)


def test_file_search_without_vector_store_ids_is_refused(oai: FakeOpenAI) -> None:
    assert_openai_error(respond(oai, model="gpt-6-luna", tools=[{"type": "file_search"}]), 400,
                        "missing_required_parameter", "tools[0].vector_store_ids")
    assert_openai_error(
        respond(oai, model="gpt-6-luna", tools=[{"type": "file_search", "vector_store_ids": []}]),
        400, "empty_array", "tools[0].vector_store_ids")
    assert_openai_error(
        respond(oai, model="gpt-6-luna",
                tools=[{"type": "file_search", "vector_store_ids": ["vs_missing"]}]),
        404, None, "tools")


def test_unknown_or_mistyped_parameters_are_refused(oai: FakeOpenAI) -> None:
    assert_openai_error(respond(oai, model="gpt-6-luna", max_tokens=100), 400,
                        "unknown_parameter", "max_tokens")
    assert_openai_error(respond(oai, model="gpt-6-luna", store="no"), 400, "invalid_type",
                        "store")
    assert_openai_error(raw(oai, "POST", "/responses", {"input": "hi"}), 400,
                        "missing_required_parameter", "model")
    bad_json = httpx.post(f"{oai.url}/responses", content=b"{not json",
                          headers={"Authorization": f"Bearer {KEY}",
                                   "Content-Type": "application/json"})
    assert_openai_error(bad_json, 400, None, None)


def test_previous_response_must_exist_and_carries_history(client: openai.OpenAI,
                                                          oai: FakeOpenAI) -> None:
    assert_openai_error(respond(oai, model="gpt-6-luna", previous_response_id="resp_nope"),
                        400, "previous_response_not_found", "previous_response_id")
    first = client.responses.create(model="gpt-6-luna", instructions=FAQ,
                                    input="What are your opening hours?")
    second = client.responses.create(model="gpt-6-luna", previous_response_id=first.id,
                                     input="thanks")
    # README: instructions are not carried over, so the FAQ is not known the second time.
    assert first.output_text == "Monday to Saturday, 8am to 6pm."
    assert second.output_text == "I don't know."


def test_conversations_keep_items(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    conversation = client.conversations.create(metadata={"user": "u1"})
    client.responses.create(model="gpt-6-luna", instructions=FAQ, conversation=conversation.id,
                            input="What are your opening hours?")
    client.responses.create(model="gpt-6-luna", instructions=FAQ, conversation=conversation.id,
                            input="ok, and on Sunday?")
    items = client.conversations.items.list(conversation.id, order="asc")
    roles = [getattr(item, "role", None) for item in items.data]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert_openai_error(respond(oai, model="gpt-6-luna", conversation="conv_missing"), 404,
                        None, "conversation")
    assert client.conversations.delete(conversation.id).deleted


# -- reasoning tokens count against max_output_tokens -----------------------------------------


def test_reasoning_tokens_can_leave_an_incomplete_response(client: openai.OpenAI) -> None:
    complete = client.responses.create(model="gpt-6-luna", instructions=FAQ,
                                       input="What are your opening hours?",
                                       reasoning={"effort": "medium"}, max_output_tokens=400)
    assert complete.status == "completed"
    assert complete.usage is not None
    assert complete.usage.output_tokens_details.reasoning_tokens == 192
    assert complete.output_text == "Monday to Saturday, 8am to 6pm."

    starved = client.responses.create(model="gpt-6-luna", instructions=FAQ,
                                      input="What are your opening hours?",
                                      reasoning={"effort": "high"}, max_output_tokens=200)
    assert starved.status == "incomplete"
    assert starved.incomplete_details is not None
    assert starved.incomplete_details.reason == "max_output_tokens"
    assert starved.usage is not None and starved.usage.output_tokens == 200
    assert starved.output_text == ""

    cut = client.responses.create(model="gpt-6-luna", instructions=FAQ,
                                  input="What are your opening hours?",
                                  reasoning={"effort": "minimal"}, max_output_tokens=20)
    assert cut.status == "incomplete"
    assert cut.output_text and cut.output_text != "Monday to Saturday, 8am to 6pm."

    plain = client.responses.create(model="gpt-6-luna", instructions=FAQ,
                                    input="What are your opening hours?",
                                    reasoning={"effort": "none"}, max_output_tokens=16)
    assert plain.status == "completed"
    assert plain.usage is not None and plain.usage.output_tokens_details.reasoning_tokens == 0


# -- files and vector stores ------------------------------------------------------------------


def test_vector_store_files_take_time_to_index(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    oai.configure(indexing_seconds=3600)
    try:
        uploaded = client.files.create(
            file=("faqs.txt", FAQ.encode(), "text/plain"), purpose="assistants")
        store = client.vector_stores.create(name="acme")
        attached = client.vector_stores.files.create(vector_store_id=store.id,
                                                     file_id=uploaded.id)
        assert attached.status == "in_progress"
        assert client.vector_stores.retrieve(store.id).file_counts.in_progress == 1
        tools: Any = [{"type": "file_search", "vector_store_ids": [store.id]}]
        before = client.responses.create(model="gpt-6-luna", input="opening hours?",
                                         tools=tools)
        assert before.output_text == "I don't know."  # nothing indexed yet
        oai.advance_clock(3601)
        attached = client.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id)
        assert attached.status == "completed"
        after = client.responses.create(model="gpt-6-luna", input="opening hours?", tools=tools)
        assert after.output_text == "Monday to Saturday, 8am to 6pm."

        empty = client.files.create(file=("empty.txt", b"", "text/plain"), purpose="assistants")
        client.vector_stores.files.create(vector_store_id=store.id, file_id=empty.id)
        oai.advance_clock(3601)
        failed = client.vector_stores.files.retrieve(empty.id, vector_store_id=store.id)
        assert failed.status == "failed"
        assert failed.last_error is not None and failed.last_error.code == "invalid_file"
    finally:
        oai.configure(indexing_seconds=0.2)


def test_files_and_vector_stores_refuse_bad_requests(oai: FakeOpenAI) -> None:
    upload = httpx.post(f"{oai.url}/files", headers={"Authorization": f"Bearer {KEY}"},
                        files={"file": ("a.txt", b"x")}, data={"purpose": "wishes"})
    assert_openai_error(upload, 400, "invalid_value", "purpose")
    no_file = httpx.post(f"{oai.url}/files", headers={"Authorization": f"Bearer {KEY}"},
                         files={"other": ("a.txt", b"x")}, data={"purpose": "assistants"})
    assert_openai_error(no_file, 400, "missing_required_parameter", "file")
    assert_openai_error(raw(oai, "POST", "/vector_stores", {"name": "x", "colour": "red"}), 400,
                        "unknown_parameter", "colour")
    store = raw(oai, "POST", "/vector_stores", {"name": "x"}).json()
    assert_openai_error(raw(oai, "POST", f"/vector_stores/{store['id']}/files", {}), 400,
                        "missing_required_parameter", "file_id")
    assert_openai_error(
        raw(oai, "POST", f"/vector_stores/{store['id']}/search", {"query": "q",
                                                                   "max_num_results": 0}),
        400, "integer_below_min_value", "max_num_results")
    assert_openai_error(raw(oai, "GET", f"/vector_stores/{store['id']}/files", order="sideways"),
                        400, "invalid_value", "order")
    assert_openai_error(raw(oai, "GET", "/vector_stores", limit="many"), 400, "invalid_type",
                        "limit")
    assert_openai_error(raw(oai, "GET", "/vector_stores/vs_missing"), 404, None,
                        "vector_store_id")


def test_requests_per_minute_limit(oai: FakeOpenAI, client: openai.OpenAI) -> None:
    oai.set_clock("2026-12-20T10:00:00Z", freeze=True)
    oai.configure(requests_per_minute=2)
    try:
        client.models.retrieve("gpt-6-luna")
        oai.advance_clock(20)
        client.models.retrieve("gpt-6-luna")
        limited = raw(oai, "GET", "/models/gpt-6-luna")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.headers["retry-after"] == "40"
        oai.advance_clock(40)
        assert raw(oai, "GET", "/models/gpt-6-luna").status_code == 200
    finally:
        oai.configure(requests_per_minute=None)


HANDOVER_TOOL = {
    "type": "function",
    "name": "hand_over_to_person",
    "description": "Hand the conversation to a person.",
    "parameters": {
        "type": "object",
        "properties": {"reason": {"type": "string"}},
        "required": ["reason"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_function_tools_are_checked_like_the_api_does(oai: FakeOpenAI) -> None:
    # The schema: a function tool needs name, parameters and strict.
    loose = {k: v for k, v in HANDOVER_TOOL.items() if k != "strict"}
    assert respond(oai, model="gpt-6-luna", tools=[loose]).status_code == 400
    bad_name = dict(HANDOVER_TOOL, name="hand over")
    assert_openai_error(respond(oai, model="gpt-6-luna", tools=[bad_name]), 400,
                        "invalid_value", "tools[0].name")
    # Strict mode: every object closed, every property required.
    open_object = dict(HANDOVER_TOOL, parameters={"type": "object",
                                                  "properties": {"reason": {"type": "string"}},
                                                  "required": ["reason"]})
    error = assert_openai_error(respond(oai, model="gpt-6-luna", tools=[open_object]), 400,
                                "invalid_function_parameters", "tools[0].parameters")
    assert "additionalProperties" in error["message"]
    optional = dict(HANDOVER_TOOL, parameters=dict(HANDOVER_TOOL["parameters"], required=[]))
    assert_openai_error(respond(oai, model="gpt-6-luna", tools=[optional]), 400,
                        "invalid_function_parameters", "tools[0].parameters")
    # Without strict mode the API takes a loose schema.
    lenient = dict(open_object, strict=False)
    assert respond(oai, model="gpt-6-luna", tools=[lenient]).status_code == 200


def test_a_scripted_function_call_comes_back_as_an_output_item(
    client: openai.OpenAI, oai: FakeOpenAI
) -> None:
    call = {"function_call": {"name": "hand_over_to_person",
                              "arguments": {"reason": "wants a refund"}}}
    oai.script_replies([call, "plain text"])
    # Not offered the tool: the model cannot call it; the next scripted text answers.
    response = client.responses.create(model="gpt-6-luna", input="refund please")
    assert response.output_text == "plain text"
    oai.script_replies([call])
    response = client.responses.create(
        model="gpt-6-luna", input="refund please", tools=[HANDOVER_TOOL]  # type: ignore[list-item]
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "hand_over_to_person"
    assert calls[0].arguments == '{"reason": "wants a refund"}' and calls[0].call_id
    assert response.output_text == "" and response.status == "completed"
