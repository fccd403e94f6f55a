"""``whatsapp_operator.knowledge`` against the OpenAI fake (``released.fakes.openai``), real SDK.

Covers creating the store, replacing the file when the FAQs change (and deleting the old one),
doing nothing while they are unchanged, finding the store again after the status was lost,
resuming a half-done update, deleting, and the error mapping (5xx and 429 retryable, 401
permanent without the key in the message).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr
from whatsapp_operator import knowledge as kn
from whatsapp_operator.errors import PermanentError, TemporaryError

from released.fakes.openai import DEFAULT_API_KEY, FakeOpenAI
from tests.servers import free_port

AGENT = "shop/acme"
FAQS = [
    ("What are your opening hours?", "9 to 5, Monday to Friday."),
    ("Do you ship abroad?", "Yes, to the whole EU."),
]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def params(fake: FakeOpenAI) -> kn.OpenAIParams:
    fake.reset()
    return kn.OpenAIParams(api_key=SecretStr(DEFAULT_API_KEY), base_url=fake.url, timeout=10)


def _store(fake: FakeOpenAI, store_id: str) -> dict[str, Any] | None:
    return next((s for s in fake.vector_stores() if s["id"] == store_id), None)


def _file_ids(fake: FakeOpenAI) -> set[str]:
    return {f["id"] for f in fake.files()}


# -- pure -----------------------------------------------------------------------------------


def test_faq_hash_is_stable_and_normalized() -> None:
    as_dicts = [{"q": q, "a": a} for q, a in FAQS]
    assert kn.faq_hash(FAQS) == kn.faq_hash(as_dicts)
    assert kn.faq_hash(FAQS) == kn.faq_hash([("  " + q + "\r\n", a + "  ") for q, a in FAQS])
    assert kn.faq_hash(FAQS) == kn.faq_hash([{"question": q, "answer": a} for q, a in FAQS])
    assert kn.faq_hash(FAQS) != kn.faq_hash(list(reversed(FAQS)))
    assert kn.faq_hash(FAQS) != kn.faq_hash([*FAQS, ("New?", "Yes.")])
    assert len(kn.faq_hash(FAQS)) == 64
    # Composed and decomposed accents are the same text.
    assert kn.faq_hash([("Café?", "Sí")]) == kn.faq_hash([("Cafe\u0301?", "Si\u0301")])


def test_state_status_roundtrip() -> None:
    state = kn.KnowledgeState(vector_store_id="vs_1", file_id="file-1", faq_hash="abc")
    assert state.to_status() == {"vectorStoreId": "vs_1", "fileId": "file-1", "faqHash": "abc"}
    assert kn.KnowledgeState.from_status(state.to_status()) == state
    assert kn.KnowledgeState.from_status(None) is None
    assert kn.KnowledgeState.from_status({}) is None


def test_file_content_is_readable_json() -> None:
    content = json.loads(kn.faq_file_content(FAQS))
    assert content == [{"q": q, "a": a} for q, a in FAQS]


# -- against the fake -----------------------------------------------------------------------


async def test_create_change_unchanged_delete(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    state = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert state.faq_hash == kn.faq_hash(FAQS)
    store = _store(fake, state.vector_store_id)
    assert store is not None and store["name"] == "released:shop/acme"
    assert store["file_ids"] == [state.file_id]
    (uploaded,) = fake.files()
    assert uploaded["id"] == state.file_id and uploaded["purpose"] == "assistants"
    async with params.client() as client:
        content = await client.files.content(state.file_id or "")
        assert json.loads(content.read())[0]["q"] == FAQS[0][0]

    # Unchanged FAQs: no call at all.
    before = len(fake.requests())
    assert await kn.ensure_knowledge(params, AGENT, FAQS, state) == state
    assert len(fake.requests()) == before

    # Changed FAQs: a new file in the same store, the old one detached and deleted.
    changed = [*FAQS, ("Can I pay by card?", "Yes, all major cards.")]
    new_state = await kn.ensure_knowledge(params, AGENT, changed, state)
    assert new_state.vector_store_id == state.vector_store_id
    assert new_state.file_id != state.file_id
    assert new_state.faq_hash == kn.faq_hash(changed) != state.faq_hash
    store = _store(fake, state.vector_store_id)
    assert store is not None and store["file_ids"] == [new_state.file_id]
    assert _file_ids(fake) == {new_state.file_id}

    await kn.delete_knowledge(params, new_state)
    assert fake.vector_stores() == [] and fake.files() == []
    await kn.delete_knowledge(params, new_state)  # idempotent: 404s are fine


async def test_lost_status_finds_the_store_again(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    first = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    other = await kn.ensure_knowledge(params, "shop/other", FAQS, None)
    assert other.vector_store_id != first.vector_store_id
    # Status lost (current=None): same store, its file reused because the hash matches.
    again = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert again == first
    assert len(fake.vector_stores()) == 2
    # Deleting by agent key alone works too.
    await kn.delete_knowledge(params, None, agent_key=AGENT)
    assert [s["id"] for s in fake.vector_stores()] == [other.vector_store_id]
    assert _file_ids(fake) == {other.file_id}


async def test_verify_rebuilds_a_missing_store(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    state = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    async with params.client() as client:
        await client.vector_stores.delete(state.vector_store_id)
    rebuilt = await kn.ensure_knowledge(params, AGENT, FAQS, state, verify=True)
    assert rebuilt.vector_store_id != state.vector_store_id
    assert _store(fake, rebuilt.vector_store_id) is not None
    assert state.file_id not in _file_ids(fake)
    # Verified and intact: reads only, no upload.
    uploads = len(fake.requests("POST /v1/files"))
    assert uploads == 2
    assert await kn.ensure_knowledge(params, AGENT, FAQS, rebuilt, verify=True) == rebuilt
    assert len(fake.requests("POST /v1/files")) == uploads


async def test_check_tells_a_deleted_store_from_a_lost_file(
    fake: FakeOpenAI, params: kn.OpenAIParams
) -> None:
    state = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    before = len(fake.requests())
    assert await kn.check_knowledge(params, state) is kn.KnowledgeCheck.OK
    # One read: the store's file counts show its one file, indexed; nothing written.
    assert [r["method"] + " " + r["path"] for r in fake.requests()[before:]] == [
        f"GET /v1/vector_stores/{state.vector_store_id}"
    ]
    async with params.client() as client:
        await client.vector_stores.files.delete(
            state.file_id or "", vector_store_id=state.vector_store_id
        )
    assert await kn.check_knowledge(params, state) is kn.KnowledgeCheck.FILE_MISSING
    async with params.client() as client:
        await client.vector_stores.delete(state.vector_store_id)
    assert await kn.check_knowledge(params, state) is kn.KnowledgeCheck.STORE_MISSING


async def test_resumes_an_update_that_ran_out_of_time(
    fake: FakeOpenAI, params: kn.OpenAIParams
) -> None:
    # An earlier call uploaded and attached the file, then gave up waiting (status not
    # written). The next call must reuse it, not upload again.
    state = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    changed = [("Are you open on Sunday?", "No.")]
    digest = kn.faq_hash(changed)
    async with params.client() as client:
        half = await client.files.create(
            file=("f.json", kn.faq_file_content(changed)), purpose="assistants"
        )
        await client.vector_stores.files.create(
            state.vector_store_id, file_id=half.id, attributes={"faq_hash": digest}
        )
    uploads = len(fake.requests("POST /v1/files"))
    assert uploads == 2
    resumed = await kn.ensure_knowledge(params, AGENT, changed, state)
    assert resumed.file_id == half.id and resumed.faq_hash == digest
    assert len(fake.requests("POST /v1/files")) == uploads
    assert _file_ids(fake) == {half.id}


async def test_server_errors_are_retryable(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    # The operator's retry policy (3 tries, the SDK's own retries off): three 500s reach us.
    fake.script_errors(["server_error", "server_error", "server_error"])
    with pytest.raises(TemporaryError) as excinfo:
        await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert excinfo.value.reason == "OpenAIUnavailable"
    assert DEFAULT_API_KEY not in str(excinfo.value)
    assert len(fake.requests()) == 3


async def test_a_passing_server_error_is_retried(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    fake.script_errors(["bad_gateway"])
    state = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert _store(fake, state.vector_store_id) is not None
    refused = [r for r in fake.requests() if r.get("error")]
    assert len(refused) == 1


async def test_quota_is_not_retried(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    # No backoff buys credit: one try, and the reason says what is wrong.
    fake.script_errors([{"kind": "quota", "times": 3}])
    with pytest.raises(TemporaryError) as excinfo:
        await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert excinfo.value.reason == "OpenAIQuotaExceeded"
    assert "out of credit" in str(excinfo.value)
    assert len(fake.requests()) == 1


async def test_rate_limit_is_retryable(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    fake.script_errors([{"kind": "rate_limit", "times": 3}])
    with pytest.raises(TemporaryError) as excinfo:
        await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert excinfo.value.reason == "OpenAIRateLimited"


async def test_bad_key_is_permanent_and_not_leaked(fake: FakeOpenAI) -> None:
    wrong = "sk-wrong-key-0123456789abcdef"
    params = kn.OpenAIParams(api_key=SecretStr(wrong), base_url=fake.url)
    with pytest.raises(PermanentError) as excinfo:
        await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert excinfo.value.reason == "OpenAIAuthFailed"
    assert "spec.secrets.openai" in str(excinfo.value)
    assert wrong not in str(excinfo.value) and "0123456789" not in str(excinfo.value)


async def test_bad_request_is_permanent(fake: FakeOpenAI, params: kn.OpenAIParams) -> None:
    fake.script_errors(["bad_request"])
    with pytest.raises(PermanentError) as excinfo:
        await kn.ensure_knowledge(params, AGENT, FAQS, None)
    assert excinfo.value.reason == "OpenAIRequestRejected"


async def test_unreachable_is_retryable() -> None:
    params = kn.OpenAIParams(
        api_key=SecretStr("sk-x-123456"),
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        max_retries=0,
    )
    with pytest.raises(TemporaryError):
        await kn.ensure_knowledge(params, AGENT, FAQS, None)


async def test_no_faqs_is_permanent(params: kn.OpenAIParams) -> None:
    with pytest.raises(PermanentError):
        await kn.ensure_knowledge(params, AGENT, [], None)


# -- the periodic check's reads (openai_api.read, no SDK): errors mean what the SDK's do ------


async def test_the_checks_reads_retry_server_errors_and_keep_the_key_out(
    fake: FakeOpenAI, params: kn.OpenAIParams
) -> None:
    state = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    before = len(fake.requests())
    fake.script_errors(["server_error", "server_error", "server_error"])
    with pytest.raises(TemporaryError) as excinfo:
        await kn.check_knowledge(params, state)
    assert excinfo.value.reason == "OpenAIUnavailable" and "HTTP 500" in str(excinfo.value)
    assert DEFAULT_API_KEY not in str(excinfo.value)
    assert len(fake.requests()[before:]) == 3  # the operator's policy: three tries
    fake.script_errors(["bad_gateway"])
    assert await kn.check_knowledge(params, state) is kn.KnowledgeCheck.OK


async def test_the_checks_reads_tell_a_bad_key_and_an_unreachable_server(
    fake: FakeOpenAI, params: kn.OpenAIParams
) -> None:
    state = await kn.ensure_knowledge(params, AGENT, FAQS, None)
    wrong = "sk-wrong-key-0123456789abcdef"
    bad_key = params.model_copy(update={"api_key": SecretStr(wrong)})
    with pytest.raises(PermanentError) as excinfo:
        await kn.check_knowledge(bad_key, state)
    assert excinfo.value.reason == "OpenAIAuthFailed"
    assert wrong not in str(excinfo.value) and "0123456789" not in str(excinfo.value)
    gone = params.model_copy(
        update={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0}
    )
    with pytest.raises(TemporaryError) as unreachable:
        await kn.check_knowledge(gone, state)
    assert "cannot reach OpenAI" in str(unreachable.value)
