"""The Meta and OpenAI fakes follow the documented shapes and work with the real clients."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import openai
import pytest

from released.fakes import FakeMeta, FakeOpenAI, sign
from released.fakes.meta import DEFAULT_APP_SECRET
from released.fakes.openai import best_faq, parse_faq_file, parse_faq_text
from released.fakes.webhooks import bsuid_for

META_TOKEN = "meta-token-for-tests"
OPENAI_KEY = "sk-test-key-for-tests"
FAQ_INSTRUCTIONS = """You are the assistant of Acme Bakery. Answer only from these FAQs.
Q: What are your opening hours?
A: We are open Monday to Saturday, 8am to 6pm.
Q: Do you deliver to my home?
A: Yes, we deliver within 5 km for a fee of 3 euros.
Q: Do you have gluten-free bread?
A: Yes, every Friday.
"""


@pytest.fixture(scope="module")
def meta_server() -> Iterator[FakeMeta]:
    with FakeMeta(META_TOKEN) as fake:
        yield fake


@pytest.fixture
def meta(meta_server: FakeMeta) -> FakeMeta:
    meta_server.reset()
    meta_server.set_latency(0)
    return meta_server


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(OPENAI_KEY) as fake:
        yield fake


@pytest.fixture
def oai(openai_server: FakeOpenAI) -> FakeOpenAI:
    openai_server.reset()
    openai_server.set_latency(0)
    return openai_server


@pytest.fixture
def client(oai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=oai.url, api_key=OPENAI_KEY, max_retries=0) as sdk:
        yield sdk


def auth(token: str = META_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def send_text(meta: FakeMeta, to: str = "15551234567", body: str = "hello") -> httpx.Response:
    return httpx.post(
        f"{meta.url}/106540352242922/messages",
        headers=auth(),
        json={
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"body": body},
            "context": {"message_id": "wamid.incoming"},
        },
    )


# -- Meta --------------------------------------------------------------------------------------


def test_meta_url_has_version_and_port(meta: FakeMeta) -> None:
    assert meta.url == f"http://127.0.0.1:{meta.port}/v25.0"


def test_meta_send_text_documented_shape(meta: FakeMeta) -> None:
    response = send_text(meta)
    assert response.status_code == 200
    data = response.json()
    assert data["messaging_product"] == "whatsapp"
    assert data["contacts"] == [
        {"input": "15551234567", "wa_id": "15551234567", "user_id": bsuid_for("15551234567")}
    ]
    assert data["messages"][0]["id"].startswith("wamid.")
    sent = meta.sent()
    assert len(sent) == 1
    assert sent[0]["id"] == data["messages"][0]["id"]
    assert sent[0]["to"] == "15551234567"
    assert sent[0]["text"] == "hello"
    assert sent[0]["context_message_id"] == "wamid.incoming"
    assert sent[0]["phone_number_id"] == "106540352242922"
    assert meta.reads() == []


def test_meta_supported_versions_until_their_sunset(meta: FakeMeta) -> None:
    body = {"messaging_product": "whatsapp", "to": "1", "type": "text", "text": {"body": "x"}}
    for version in ("v23.0", "v24.0", "v25.0", "v26.0"):
        response = httpx.post(f"{meta.root_url}/{version}/1/messages", headers=auth(), json=body)
        assert response.status_code == 200, (version, response.text)
    assert [s["version"] for s in meta.sent()] == ["v23.0", "v24.0", "v25.0", "v26.0"]


def test_meta_mark_read_recorded_separately(meta: FakeMeta) -> None:
    response = httpx.post(
        f"{meta.url}/106540352242922/messages",
        headers=auth(),
        json={
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.abc",
            "typing_indicator": {"type": "text"},
        },
    )
    assert response.status_code == 200
    assert response.json() == {"success": True}
    reads = meta.reads()
    assert [r["message_id"] for r in reads] == ["wamid.abc"]
    assert reads[0]["typing_indicator"] == {"type": "text"}
    assert meta.sent() == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_meta_auth_error(meta: FakeMeta, headers: dict[str, str]) -> None:
    response = httpx.post(
        f"{meta.url}/1/messages",
        headers=headers,
        json={"messaging_product": "whatsapp", "to": "1", "type": "text", "text": {"body": "x"}},
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "OAuthException"
    assert error["code"] == 190
    assert error["fbtrace_id"]
    assert error["message"]
    assert meta.sent() == []


def test_meta_rejects_bad_payload(meta: FakeMeta) -> None:
    response = httpx.post(
        f"{meta.url}/1/messages", headers=auth(), json={"to": "1", "type": "text"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 100


def test_meta_scripted_errors(meta: FakeMeta) -> None:
    meta.script_errors(
        ["rate_limit", {"kind": "pair_rate_limit"}, 131047, "undeliverable", "server_error"]
    )
    assert len(meta.pending_errors()) == 5
    answers = [send_text(meta) for _ in range(6)]
    statuses = [(a.status_code, a.json().get("error", {}).get("code")) for a in answers]
    assert statuses == [
        (429, 130429),
        (429, 131056),
        (400, 131047),
        (400, 131026),
        (500, 1),
        (200, None),
    ]
    error = answers[2].json()["error"]
    assert error["type"] == "OAuthException"
    assert error["message"] == "(#131047) Re-engagement message"
    assert "24 hours" in error["error_data"]["details"]
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert isinstance(error["error_subcode"], int)
    assert error["fbtrace_id"]
    assert len(meta.sent()) == 1
    assert meta.calls()["POST /{version}/{phone_number_id}/messages"] == 6


def test_meta_error_times_and_endpoint_filter(meta: FakeMeta) -> None:
    meta.script_errors([{"kind": "unavailable", "times": 2, "endpoint": "messages"}])
    # A call to another endpoint does not consume it.
    got = httpx.get(f"{meta.url}/1", params={"fields": "webhook_configuration"}, headers=auth())
    assert got.status_code == 200
    assert send_text(meta).status_code == 503
    assert send_text(meta).status_code == 503
    assert send_text(meta).status_code == 200


def test_meta_latency(meta: FakeMeta) -> None:
    meta.set_latency(0.3)
    started = time.monotonic()
    assert send_text(meta).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_meta_webhook_override_json_and_form(meta: FakeMeta) -> None:
    meta.set_subscribed()
    url = f"{meta.url}/106540352242922"
    response = httpx.post(
        url,
        headers=auth(),
        json={
            "webhook_configuration": {
                "override_callback_uri": "https://bot.example.com/webhook",
                "verify_token": "vt",
            }
        },
    )
    assert response.json() == {"success": True}
    got = httpx.get(url, params={"fields": "webhook_configuration"}, headers=auth()).json()
    assert got["id"] == "106540352242922"
    assert got["webhook_configuration"]["phone_number"] == "https://bot.example.com/webhook"
    assert "application" in got["webhook_configuration"]
    assert meta.webhook_override("106540352242922") == "https://bot.example.com/webhook"

    # Removing: an empty override_callback_uri, here as a form field like curl -F/-d sends.
    removed = httpx.post(
        url,
        headers=auth(),
        data={"webhook_configuration": json.dumps({"override_callback_uri": ""})},
    )
    assert removed.json() == {"success": True}
    got = httpx.get(url, params={"fields": "webhook_configuration"}, headers=auth()).json()
    assert "phone_number" not in got["webhook_configuration"]
    assert meta.webhook_override("106540352242922") is None
    history = meta.webhooks()["history"]
    assert [h["action"] for h in history] == ["subscribed", "set", "removed"]


class _Bot(BaseHTTPRequestHandler):
    verify_token = "the-verify-token"
    received: list[tuple[dict[str, str], bytes]] = []

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        if query.get("hub.verify_token") == [self.verify_token]:
            body = query["hub.challenge"][0].encode()
            self.send_response(200)
        else:
            body = b"forbidden"
            self.send_response(403)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append((dict(self.headers), self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def bot() -> Iterator[str]:
    _Bot.received = []
    server = HTTPServer(("127.0.0.1", 0), _Bot)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhook"
    server.shutdown()
    server.server_close()


def test_meta_verifies_callback_when_asked(meta: FakeMeta, bot: str) -> None:
    meta.set_subscribed()
    meta.configure(verify_webhooks=True)
    try:
        url = f"{meta.url}/42"
        bad = httpx.post(
            url,
            headers=auth(),
            json={"webhook_configuration": {"override_callback_uri": bot, "verify_token": "no"}},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == 2200
        assert meta.webhook_override("42") is None
        good = httpx.post(
            url,
            headers=auth(),
            json={
                "webhook_configuration": {
                    "override_callback_uri": bot,
                    "verify_token": _Bot.verify_token,
                }
            },
        )
        assert good.json() == {"success": True}
        assert meta.webhook_override("42") == bot
    finally:
        meta.configure(verify_webhooks=False)


def test_meta_delivers_signed_webhook(meta: FakeMeta, bot: str) -> None:
    meta.set_subscribed()
    httpx.post(
        f"{meta.url}/42",
        headers=auth(),
        json={"webhook_configuration": {"override_callback_uri": bot, "verify_token": "t"}},
    )
    result = meta.deliver_text("42", "What are your hours?", from_number="34600111222")
    assert result["status"] == 200
    headers, raw = _Bot.received[0]
    assert headers["X-Hub-Signature-256"] == sign(raw, DEFAULT_APP_SECRET)
    payload = json.loads(raw)
    value = payload["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == "42"
    assert value["messages"][0]["text"]["body"] == "What are your hours?"
    assert value["messages"][0]["from"] == "34600111222"
    assert value["messages"][0]["from_user_id"] == bsuid_for("34600111222")
    assert value["contacts"][0]["user_id"] == bsuid_for("34600111222")


def test_meta_spawned_process_same_api() -> None:
    fake = FakeMeta.spawn(META_TOKEN)
    try:
        assert fake.running
        response = send_text(fake, body="from another process")
        assert response.status_code == 200
        assert fake.sent_texts() == ["from another process"]
        fake.script_errors(["auth"])
        assert send_text(fake).status_code == 401
        other = FakeMeta.attach(fake.url)
        assert other.sent_texts() == ["from another process"]
        other.reset()
        assert fake.sent() == []
        other.stop()
    finally:
        fake.stop()
    assert not fake.running


# -- OpenAI ------------------------------------------------------------------------------------


def test_faq_parsing_and_matching() -> None:
    faqs = parse_faq_text(FAQ_INSTRUCTIONS)
    assert len(faqs) == 3
    assert best_faq("when are you open? opening hours please", faqs) == 0
    assert best_faq("can you deliver bread to my home", faqs) == 1
    assert best_faq("quantum chromodynamics", faqs) is None
    assert parse_faq_file(b'[{"q": "A?", "a": "B."}]') == [("A?", "B.")]
    assert parse_faq_file(b'{"faqs": [{"question": "A?", "answer": "B."}]}') == [("A?", "B.")]
    assert parse_faq_file(b"Q: A?\nA: B.\n") == [("A?", "B.")]


def test_openai_sdk_response_from_instructions(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    response = client.responses.create(
        model="gpt-6-luna",
        instructions=FAQ_INSTRUCTIONS,
        input="Hi! What are your opening hours?",
        max_output_tokens=300,
    )
    assert response.output_text == "We are open Monday to Saturday, 8am to 6pm."
    assert response.status == "completed"
    assert response.object == "response"
    assert response.model == "gpt-6-luna"
    assert response.usage is not None
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )
    assert oai.calls() == {"POST /v1/responses": 1}
    assert oai.response_requests()[0]["instructions"] == FAQ_INSTRUCTIONS


def test_openai_sdk_response_with_message_list(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="gpt-6-luna",
        input=[
            {"role": "developer", "content": FAQ_INSTRUCTIONS},
            {"role": "user", "content": "What are your opening hours?"},
            {"role": "assistant", "content": "We are open Monday to Saturday, 8am to 6pm."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "and do you deliver at home?"}],
            },
        ],
    )
    assert response.output_text == "Yes, we deliver within 5 km for a fee of 3 euros."


def test_openai_unknown_question(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    response = client.responses.create(
        model="gpt-6-luna", instructions=FAQ_INSTRUCTIONS, input="Explain relativity"
    )
    assert response.output_text == "I don't know."
    oai.script_replies(["Scripted!"])
    response = client.responses.create(model="gpt-6-luna", input="Explain relativity")
    assert response.output_text == "Scripted!"


def test_openai_files_and_vector_store(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    faqs = [{"q": "Where is the shop?", "a": "Calle Mayor 1, Madrid."}]
    uploaded = client.files.create(
        file=("faqs.json", json.dumps(faqs).encode(), "application/json"), purpose="assistants"
    )
    assert uploaded.id.startswith("file-")
    assert uploaded.filename == "faqs.json"
    assert uploaded.purpose == "assistants"
    assert uploaded.bytes == len(json.dumps(faqs).encode())
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).read() == json.dumps(faqs).encode()

    store = client.vector_stores.create(name="acme-faqs", metadata={"agent": "acme"})
    assert store.status == "completed"
    attached = client.vector_stores.files.create(vector_store_id=store.id, file_id=uploaded.id)
    # Like OpenAI, the file takes a while to index; the SDK's poll waits for it.
    assert attached.status == "in_progress"
    assert client.vector_stores.retrieve(store.id).status == "in_progress"
    attached = client.vector_stores.files.poll(
        uploaded.id, vector_store_id=store.id, poll_interval_ms=50
    )
    assert attached.status == "completed"
    assert attached.vector_store_id == store.id
    listed = client.vector_stores.files.list(vector_store_id=store.id)
    assert [f.id for f in listed.data] == [uploaded.id]
    store = client.vector_stores.retrieve(store.id)
    assert store.file_counts.completed == 1
    updated = client.vector_stores.update(store.id, name="acme-faqs-2")
    assert updated.name == "acme-faqs-2"
    assert [s["id"] for s in oai.vector_stores()] == [store.id]
    assert oai.vector_stores()[0]["file_ids"] == [uploaded.id]

    response = client.responses.create(
        model="gpt-6-luna",
        input="where is your shop?",
        tools=[{"type": "file_search", "vector_store_ids": [store.id]}],
    )
    assert response.output_text == "Calle Mayor 1, Madrid."
    assert [o.type for o in response.output] == ["reasoning", "file_search_call", "message"]

    deleted = client.vector_stores.files.delete(file_id=uploaded.id, vector_store_id=store.id)
    assert deleted.deleted
    assert client.vector_stores.delete(store.id).deleted
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert oai.files() == []


def test_openai_upload_and_poll_batch(client: openai.OpenAI) -> None:
    store = client.vector_stores.create(name="batch")
    batch = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=store.id,
        files=[("faqs.txt", b"Q: Is there parking?\nA: Yes, free parking behind the shop.\n")],
        poll_interval_ms=50,
    )
    assert batch.status == "completed"
    assert batch.file_counts.completed == 1
    response = client.responses.create(
        model="gpt-6-luna",
        input="is there any parking?",
        tools=[{"type": "file_search", "vector_store_ids": [store.id]}],
    )
    assert response.output_text == "Yes, free parking behind the shop."


def test_openai_auth_error(oai: FakeOpenAI) -> None:
    bad = openai.OpenAI(base_url=oai.url, api_key="sk-wrong", max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as info:
        bad.responses.create(model="gpt-6-luna", input="hi")
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    assert info.value.type == "invalid_request_error"


def test_openai_rate_limit_visible_to_sdk(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    oai.script_errors([{"kind": "rate_limit", "retry_after": 7}])
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="gpt-6-luna", input="hi")
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.status_code == 429
    # The next call succeeds.
    assert client.responses.create(model="gpt-6-luna", input="hi").output_text


def test_openai_sdk_retries_through_scripted_errors(oai: FakeOpenAI) -> None:
    oai.script_errors(["server_error", "unavailable"])
    with openai.OpenAI(base_url=oai.url, api_key=OPENAI_KEY, max_retries=2) as sdk:
        response = sdk.responses.create(
            model="gpt-6-luna", instructions=FAQ_INSTRUCTIONS, input="opening hours?"
        )
    assert response.output_text == "We are open Monday to Saturday, 8am to 6pm."
    assert [r["status"] for r in oai.requests("POST /v1/responses")] == [500, 503, 200]


def test_openai_5xx_errors(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    oai.script_errors(["server_error", "unavailable"])
    with pytest.raises(openai.InternalServerError) as first:
        client.responses.create(model="gpt-6-luna", input="hi")
    assert first.value.status_code == 500
    with pytest.raises(openai.InternalServerError) as second:
        client.responses.create(model="gpt-6-luna", input="hi")
    assert second.value.status_code == 503


def test_openai_timeout(oai: FakeOpenAI) -> None:
    oai.script_errors([{"kind": "timeout", "delay": 2}])
    sdk = openai.OpenAI(base_url=oai.url, api_key=OPENAI_KEY, max_retries=0, timeout=0.3)
    with sdk, pytest.raises(openai.APITimeoutError):
        sdk.responses.create(model="gpt-6-luna", input="hi")


def test_openai_latency(client: openai.OpenAI, oai: FakeOpenAI) -> None:
    oai.set_latency(0.3)
    started = time.monotonic()
    client.responses.create(model="gpt-6-luna", input="hi")
    assert time.monotonic() - started >= 0.3


def test_openai_spawned_process_same_api() -> None:
    fake = FakeOpenAI.spawn(OPENAI_KEY)
    try:
        with openai.OpenAI(base_url=fake.url, api_key=OPENAI_KEY, max_retries=0) as sdk:
            fake.script_errors(["rate_limit"])
            with pytest.raises(openai.RateLimitError):
                sdk.responses.create(model="gpt-6-luna", input="hi")
            answer = sdk.responses.create(
                model="gpt-6-luna", instructions=FAQ_INSTRUCTIONS, input="gluten-free bread?"
            )
        assert answer.output_text == "Yes, every Friday."
        assert fake.calls() == {"POST /v1/responses": 2}
    finally:
        fake.stop()


def test_meta_custom_error_dict(meta: FakeMeta) -> None:
    meta.script_errors([{"status": 403, "code": 200, "message": "Permissions error"}])
    response = send_text(meta)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == 200
    assert error["message"] == "(#200) Permissions error"


def test_openai_chat_completions_and_models(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-6-luna",
        messages=[
            {"role": "system", "content": FAQ_INSTRUCTIONS},
            {"role": "user", "content": "Do you have gluten-free bread?"},
        ],
    )
    assert completion.choices[0].message.content == "Yes, every Friday."
    assert "gpt-6-luna" in [m.id for m in client.models.list()]
