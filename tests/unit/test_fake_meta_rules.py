"""The Meta fake refuses what the real Graph API refuses and models what it does over time.

Each refusal test sends a request the real API refuses (per ``../shared/contracts``: Meta's
OpenAPI document and the README of what changed since) and expects Meta's error envelope and
HTTP status; each acceptance test sends the right form of the same request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from released.fakes import FakeMeta
from released.fakes.webhooks import WhatsAppUser, bsuid_for, is_bsuid

TOKEN = "meta-rules-token"
PN = "106540352242922"
WABA = "100000000000000"
BSUID = "US.13491208655302741918"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeMeta]:
    with FakeMeta(TOKEN, status_delay=0.01) as fake:
        yield fake


@pytest.fixture
def meta(server: FakeMeta) -> FakeMeta:
    server.reset()
    return server


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def post(meta: FakeMeta, path: str, body: Any, version: str = "v25.0") -> httpx.Response:
    return httpx.post(f"{meta.root_url}/{version}/{path}", headers=auth(), json=body)


def text(body: str = "hi", **address: Any) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "type": "text", "text": {"body": body}, **address}


def assert_graph_error(response: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["type"]
    assert error["message"]
    assert error["fbtrace_id"]
    assert set(error) <= {
        "message", "type", "code", "error_subcode", "error_data", "fbtrace_id",
        "error_user_title", "error_user_msg", "is_transient",
    }
    return error


# -- BSUIDs -------------------------------------------------------------------------------------


def test_bsuid_in_to_is_refused(meta: FakeMeta) -> None:
    error = assert_graph_error(post(meta, f"{PN}/messages", text(to=BSUID)), 400, 100)
    assert "recipient" in error["error_data"]["details"]
    assert meta.sent() == []


def test_send_to_bsuid_by_recipient(meta: FakeMeta) -> None:
    response = post(meta, f"{PN}/messages", text("hello", recipient=BSUID))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["contacts"][0]["user_id"] == BSUID
    assert not data["contacts"][0].get("wa_id")
    [sent] = meta.sent()
    assert (sent["to"], sent["recipient"], sent["user_id"]) == (None, BSUID, BSUID)
    assert meta.sent_texts(to=BSUID) == ["hello"]


def test_recipient_is_ignored_before_v25(meta: FakeMeta) -> None:
    error = assert_graph_error(
        post(meta, f"{PN}/messages", text(recipient=BSUID), version="v23.0"), 400, 100
    )
    assert "to is required" in error["error_data"]["details"]


def test_to_wins_over_recipient(meta: FakeMeta) -> None:
    response = post(meta, f"{PN}/messages", text(to="34600111222", recipient=BSUID))
    assert response.status_code == 200
    contact = response.json()["contacts"][0]
    assert contact["wa_id"] == "34600111222"
    assert contact["user_id"] == bsuid_for("34600111222")
    assert meta.sent()[0]["to"] == "34600111222"


def test_recipient_must_be_a_bsuid(meta: FakeMeta) -> None:
    assert_graph_error(post(meta, f"{PN}/messages", text(recipient="34600111222")), 400, 100)


def test_known_user_gets_its_bsuid_in_the_send_answer(meta: FakeMeta) -> None:
    user = meta.add_user(WhatsAppUser(phone="34600999888", user_id="ES.42"))
    response = post(meta, f"{PN}/messages", text(to=user.phone))
    assert response.json()["contacts"][0]["user_id"] == "ES.42"


@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        ({"colour": "red"}, 'Unexpected key "colour" on param "body".'),
        ({"recipient_type": "crowd"}, "Param recipient_type must be one of {individual, group}."),
        ({"type": "image"}, "The parameter image is required."),
        ({"type": "text", "text": {"body": "x", "bold": True}},
         'Unexpected key "bold" on param "text".'),
        ({"type": "text", "text": {"body": "x" * 4097}},
         "Param text['body'] must be at most 4096 characters long."),
    ],
)
def test_schema_refusals_over_http(meta: FakeMeta, extra: dict[str, Any], detail: str) -> None:
    body = {**text(to="34600111222"), **extra}
    error = assert_graph_error(post(meta, f"{PN}/messages", body), 400, 100)
    assert error["message"] == "(#100) Invalid parameter"
    assert error["error_data"]["details"] == detail
    assert meta.sent() == []


def test_mark_as_read_with_typing_indicator(meta: FakeMeta) -> None:
    read = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.x",
            "typing_indicator": {"type": "text"}}
    assert post(meta, f"{PN}/messages", read).json() == {"success": True}
    assert meta.reads()[0]["typing_indicator"] == {"type": "text"}
    bad = {**read, "typing_indicator": {"type": "audio"}}
    assert_graph_error(post(meta, f"{PN}/messages", bad), 400, 100)
    assert_graph_error(post(meta, f"{PN}/messages", {**read, "status": "seen"}), 400, 100)
    no_id = {"messaging_product": "whatsapp", "status": "read"}
    assert_graph_error(post(meta, f"{PN}/messages", no_id), 400, 100)


def test_webhook_configuration_must_be_an_object(meta: FakeMeta) -> None:
    meta.set_subscribed(WABA)
    assert_graph_error(post(meta, PN, {"webhook_configuration": "https://b.example.com/w"}),
                       400, 100)
    assert_graph_error(post(meta, PN, {"webhook_configuration": {"verify_token": "v"}}), 400, 100)


# -- Graph versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "code"),
    [("v22.0", 2635), ("v19.0", 2635), ("v27.0", 2500), ("v99.0", 2500), ("latest", 2500)],
)
def test_unsupported_graph_version_is_refused(meta: FakeMeta, version: str, code: int) -> None:
    assert_graph_error(post(meta, f"{PN}/messages", text(to="1"), version=version), 400, code)
    assert meta.sent() == []


def test_v23_is_refused_after_2027_10_08_and_v25_is_not(meta: FakeMeta) -> None:
    meta.set_clock("2027-10-07T23:00:00Z")
    assert post(meta, f"{PN}/messages", text(to="1"), version="v23.0").status_code == 200
    meta.set_clock("2027-10-08T00:00:01Z")
    error = assert_graph_error(
        post(meta, f"{PN}/messages", text(to="1"), version="v23.0"), 400, 2635
    )
    assert "v23.0" in error["message"]
    assert post(meta, f"{PN}/messages", text(to="1"), version="v25.0").status_code == 200
    meta.set_clock("2028-07-29T00:00:01Z")
    assert_graph_error(post(meta, f"{PN}/messages", text(to="1"), version="v25.0"), 400, 2635)
    assert post(meta, f"{PN}/messages", text(to="1"), version="v26.0").status_code == 200


def test_non_numeric_object_id_is_refused(meta: FakeMeta) -> None:
    error = assert_graph_error(post(meta, "me/messages", text(to="1")), 400, 100)
    assert error["error_subcode"] == 33


# -- webhook subscription and overrides ---------------------------------------------------------


def override(uri: str) -> dict[str, Any]:
    return {"webhook_configuration": {"override_callback_uri": uri, "verify_token": "vt"}}


def test_override_refused_while_app_not_subscribed(meta: FakeMeta) -> None:
    assert not meta.subscribed(WABA)
    refused = post(meta, PN, override("https://bot.example.com/webhook"))
    error = assert_graph_error(refused, 400, 100)
    assert "subscribed_apps" in error["error_data"]["details"]
    assert meta.webhook_override(PN) is None
    got = httpx.get(f"{meta.url}/{WABA}/subscribed_apps", headers=auth())
    assert got.json() == {"data": []}


def test_subscribe_then_override_then_unsubscribe(meta: FakeMeta) -> None:
    assert post(meta, f"{WABA}/subscribed_apps", None).json() == {"success": True}
    assert meta.subscribed(WABA)
    apps = httpx.get(f"{meta.url}/{WABA}/subscribed_apps", headers=auth()).json()["data"]
    assert apps[0]["whatsapp_business_api_data"]["id"]
    assert post(meta, PN, override("https://bot.example.com/webhook")).json() == {"success": True}
    assert meta.webhook_override(PN) == "https://bot.example.com/webhook"
    deleted = httpx.delete(f"{meta.url}/{WABA}/subscribed_apps", headers=auth())
    assert deleted.json() == {"success": True}
    assert not meta.subscribed(WABA)


def test_bodyless_subscribe_removes_waba_override(meta: FakeMeta) -> None:
    response = post(
        meta, f"{WABA}/subscribed_apps",
        {"override_callback_uri": "https://waba.example.com/webhook", "verify_token": "t"},
    )
    assert response.json() == {"success": True}
    config = httpx.get(f"{meta.url}/{PN}", params={"fields": "webhook_configuration"},
                       headers=auth()).json()["webhook_configuration"]
    assert config["whatsapp_business_account"] == "https://waba.example.com/webhook"
    assert post(meta, f"{WABA}/subscribed_apps", None).json() == {"success": True}
    assert meta.webhooks()["wabas"] == {}
    assert meta.subscribed(WABA)


def test_removing_an_override_needs_no_subscription(meta: FakeMeta) -> None:
    empty = {"webhook_configuration": {"override_callback_uri": ""}}
    assert post(meta, PN, empty).json() == {"success": True}


def test_override_must_be_http_with_verify_token(meta: FakeMeta) -> None:
    meta.set_subscribed(WABA)
    assert_graph_error(post(meta, PN, override("ftp://bot.example.com/webhook")), 400, 100)
    no_token = {"webhook_configuration": {"override_callback_uri": "https://b.example.com/w"}}
    assert_graph_error(post(meta, PN, no_token), 400, 100)


# -- deliveries and statuses --------------------------------------------------------------------


class _Bot(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
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


def test_nothing_is_delivered_until_the_app_is_subscribed(meta: FakeMeta, bot: str) -> None:
    meta.configure(application_callback_url=bot)
    try:
        result = meta.deliver_text(PN, "hello")
        assert result["delivered"] is False
        assert "not subscribed" in result["response"]
        assert _Bot.received == []
        meta.set_subscribed(WABA)
        assert meta.deliver_text(PN, "hello")["status"] == 200
        assert len(_Bot.received) == 1
    finally:
        meta.configure(application_callback_url="https://app-callback.example.invalid/webhook")


def test_statuses_follow_a_send(meta: FakeMeta, bot: str) -> None:
    meta.set_subscribed(WABA)
    assert post(meta, PN, override(bot)).status_code == 200
    meta.configure(status_webhooks=["sent", "delivered", "read"])
    try:
        response = post(meta, f"{PN}/messages", text(recipient=BSUID))
        wamid = response.json()["messages"][0]["id"]
        meta.wait_for(lambda: len(_Bot.received) >= 3, timeout=5)
    finally:
        meta.configure(status_webhooks=["sent", "delivered"])
    statuses = [p["entry"][0]["changes"][0]["value"]["statuses"][0] for p in _Bot.received]
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert {s["id"] for s in statuses} == {wamid}
    assert all(s["recipient_user_id"] == BSUID and "recipient_id" not in s for s in statuses)


def test_statuses_of_a_phone_send_carry_both_ids(meta: FakeMeta, bot: str) -> None:
    meta.set_subscribed(WABA)
    post(meta, PN, override(bot))
    post(meta, f"{PN}/messages", text(to="34600111222"))
    meta.wait_for(lambda: len(_Bot.received) >= 2, timeout=5)
    status = _Bot.received[0]["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert status["recipient_id"] == "34600111222"
    assert status["recipient_user_id"] == bsuid_for("34600111222")


def test_bsuid_only_user_delivery(meta: FakeMeta, bot: str) -> None:
    meta.set_subscribed(WABA)
    post(meta, PN, override(bot))
    meta.deliver_text(PN, "who am I", from_number=None, user_id=BSUID)
    message = _Bot.received[0]["entry"][0]["changes"][0]["value"]["messages"][0]
    assert "from" not in message
    assert message["from_user_id"] == BSUID
    assert is_bsuid(message["from_user_id"])


# -- time: token expiry, the 24-hour window ---------------------------------------------------


def test_expired_and_revoked_tokens(meta: FakeMeta) -> None:
    meta.set_token_state("valid", expires_at="2027-03-01")
    assert post(meta, f"{PN}/messages", text(to="1")).status_code == 200
    meta.set_clock("2027-03-02")
    error = assert_graph_error(post(meta, f"{PN}/messages", text(to="1")), 401, 190)
    assert error["error_subcode"] == 463
    meta.revoke_token()
    meta.real_clock()
    error = assert_graph_error(post(meta, PN, override("https://b.example.com/w")), 401, 190)
    assert error["error_subcode"] == 460
    meta.set_token_state("valid")
    assert post(meta, f"{PN}/messages", text(to="1")).status_code == 200


def test_free_text_refused_24_hours_after_the_users_last_message(meta: FakeMeta) -> None:
    meta.deliver_text(PN, "hello", from_number="34600555444")
    assert post(meta, f"{PN}/messages", text(to="34600555444")).status_code == 200
    meta.advance_clock(24 * 3600 + 60)
    error = assert_graph_error(post(meta, f"{PN}/messages", text(to="34600555444")), 400, 131047)
    assert "24 hours" in error["error_data"]["details"]
    template = {"messaging_product": "whatsapp", "to": "34600555444", "type": "template",
                "template": {"name": "hello_world", "language": {"code": "en_US"}}}
    assert post(meta, f"{PN}/messages", template).status_code == 200


def test_identity_changes_are_delivered_and_applied(meta: FakeMeta, bot: str) -> None:
    meta.configure(status_webhooks=[])
    try:
        _identity_changes(meta, bot)
    finally:
        meta.configure(status_webhooks=["sent", "delivered"])


def _identity_changes(meta: FakeMeta, bot: str) -> None:
    meta.set_subscribed(WABA)
    post(meta, PN, override(bot))
    meta.deliver_text(PN, "hi", from_number="34600777666")
    old = bsuid_for("34600777666")
    meta.change_user_id(PN, old, "ES.777")
    system = _Bot.received[-1]["entry"][0]["changes"][0]["value"]
    assert "contacts" not in system
    message = system["messages"][0]
    assert message["type"] == "system"
    assert (message["system"]["previous_user_id"], message["system"]["user_id"]) == (old, "ES.777")
    answer = post(meta, f"{PN}/messages", text(to="34600777666")).json()
    assert answer["contacts"][0]["user_id"] == "ES.777"

    meta.change_number(PN, "ES.777", "34600000999")
    changed = _Bot.received[-1]["entry"][0]["changes"][0]["value"]["messages"][0]["system"]
    assert (changed["type"], changed["wa_id"], changed["user_id"]) == (
        "user_changed_number", "34600000999", "ES.777")
    answer = post(meta, f"{PN}/messages", text(to="34600000999")).json()
    assert answer["contacts"][0]["user_id"] == "ES.777"


def test_throughput_limit(meta: FakeMeta) -> None:
    meta.set_clock("2026-12-20T10:00:00Z", freeze=True)
    meta.configure(messages_per_second=2)
    try:
        assert post(meta, f"{PN}/messages", text(to="1")).status_code == 200
        assert post(meta, f"{PN}/messages", text(to="1")).status_code == 200
        assert_graph_error(post(meta, f"{PN}/messages", text(to="1")), 429, 130429)
        meta.advance_clock(1)
        assert post(meta, f"{PN}/messages", text(to="1")).status_code == 200
    finally:
        meta.configure(messages_per_second=None)
