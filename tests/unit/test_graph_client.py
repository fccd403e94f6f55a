"""The Graph API client: request shapes, and Meta's error bodies mapped to typed exceptions
(httpx.MockTransport), never leaking the access token."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest
from pydantic import SecretStr

from bot.core.config import Settings
from bot.whatsapp.client import (
    GraphClient,
    GraphError,
    GraphPermanentError,
    GraphRetryableError,
    SentMessage,
)

TOKEN = "EAAG-very-secret-token-123"
SETTINGS = Settings(
    meta_graph_url="http://graph.test/v23.0/",
    meta_access_token=SecretStr(TOKEN),
    phone_number_id="1234567890",
)


def meta_error(
    status: int, code: int | None, message: str = "boom", headers: dict[str, str] | None = None
) -> httpx.Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "fbtrace_id": "Abc"}
    if code is not None:
        error["code"] = code
        error["error_data"] = {"messaging_product": "whatsapp", "details": "more details"}
    return httpx.Response(status, json={"error": error}, headers=headers)


def client_for(
    responder: Callable[[httpx.Request], httpx.Response],
) -> tuple[GraphClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responder(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return GraphClient(SETTINGS, http=http), seen


async def test_send_text_quotes_the_message() -> None:
    ok = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "15550001111", "wa_id": "15550001111"}],
        "messages": [{"id": "wamid.OUT"}],
    }
    client, seen = client_for(lambda r: httpx.Response(200, json=ok))
    sent = await client.send_text("15550001111", " Hello! ", reply_to="wamid.IN")
    assert sent == SentMessage("wamid.OUT", "15550001111")
    req = seen[0]
    assert str(req.url) == "http://graph.test/v23.0/1234567890/messages"
    assert req.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(req.content) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15550001111",
        "type": "text",
        "text": {"preview_url": False, "body": "Hello!"},
        "context": {"message_id": "wamid.IN"},
    }


async def test_send_text_clips_long_bodies_and_omits_context() -> None:
    client, seen = client_for(lambda r: httpx.Response(200, json={"messages": [{"id": "w"}]}))
    await client.send_text("1", "x" * 5000)
    body = json.loads(seen[0].content)
    assert len(body["text"]["body"]) == 4096 and "context" not in body


async def test_mark_read() -> None:
    client, seen = client_for(lambda r: httpx.Response(200, json={"success": True}))
    assert await client.mark_read("wamid.IN") is True
    assert json.loads(seen[0].content) == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.IN",
    }


@pytest.mark.parametrize(
    ("response", "retryable", "code"),
    [
        (meta_error(429, 130429, "Rate limit hit"), True, 130429),
        (meta_error(400, 131056, "pair rate limit"), True, 131056),  # Meta may answer 400
        (meta_error(400, 80007, "WABA rate limit"), True, 80007),
        (meta_error(500, 1, "unknown error"), True, 1),
        (meta_error(503, 2, "unavailable"), True, 2),
        (httpx.Response(502, text="<html>bad gateway</html>"), True, None),
        (httpx.Response(429, text=""), True, None),
        (meta_error(400, 131047, "Re-engagement message"), False, 131047),
        (meta_error(400, 131026, "Message Undeliverable"), False, 131026),
        (meta_error(401, 190, "Invalid OAuth access token"), False, 190),
        (meta_error(400, 100, "Invalid parameter"), False, 100),
        (httpx.Response(404, text="not found"), False, None),
    ],
)
async def test_error_mapping(response: httpx.Response, retryable: bool, code: int | None) -> None:
    client, _ = client_for(lambda r: response)
    with pytest.raises(GraphError) as info:
        await client.send_text("1", "hi", reply_to="wamid.IN")
    err = info.value
    assert isinstance(err, GraphRetryableError if retryable else GraphPermanentError)
    assert err.retryable is retryable
    assert err.code == code and err.status == response.status_code
    if code is not None:
        assert err.details == "more details" and err.fbtrace_id == "Abc"
    assert TOKEN not in str(err) and TOKEN not in repr(err.args)


async def test_retry_after_header_is_kept() -> None:
    client, _ = client_for(lambda r: meta_error(429, 130429, headers={"Retry-After": "12"}))
    with pytest.raises(GraphRetryableError) as info:
        await client.mark_read("wamid.X")
    assert info.value.retry_after == 12.0


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), httpx.RemoteProtocolError("x")],
)
async def test_transport_errors_are_retryable_and_token_free(exc: Exception) -> None:
    def raiser(request: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = client_for(raiser)
    with pytest.raises(GraphRetryableError) as info:
        await client.send_text("1", "hi")
    assert info.value.status is None
    assert TOKEN not in str(info.value)
    assert info.value.__cause__ is None  # the httpx exception (with the request) is not chained


async def test_success_without_message_id_is_permanent() -> None:
    client, _ = client_for(lambda r: httpx.Response(200, json={"messaging_product": "whatsapp"}))
    with pytest.raises(GraphPermanentError):
        await client.send_text("1", "hi")


async def test_owns_and_closes_its_http_client() -> None:
    async with GraphClient(SETTINGS) as client:
        assert client.phone_number_id == "1234567890"
    assert client._http.is_closed


async def test_a_user_known_only_by_bsuid_is_addressed_with_recipient() -> None:
    ok = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "US.134912", "wa_id": "", "user_id": "US.134912"}],
        "messages": [{"id": "wamid.OUT"}],
    }
    client, seen = client_for(lambda r: httpx.Response(200, json=ok))
    sent = await client.send_text("US.134912", "Hello", reply_to="wamid.IN")
    assert sent == SentMessage("wamid.OUT", None, "US.134912")
    body = json.loads(seen[0].content)
    assert body["recipient"] == "US.134912" and "to" not in body


async def test_template_and_typing_indicator() -> None:
    ok = {"messages": [{"id": "wamid.T", "message_status": "accepted"}]}
    client, seen = client_for(lambda r: httpx.Response(200, json=ok))
    await client.send_template("15550001111", "we_are_back", "en_US")
    assert json.loads(seen[0].content) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15550001111",
        "type": "template",
        "template": {"name": "we_are_back", "language": {"code": "en_US"}},
    }
    await client.mark_read("wamid.IN", typing=True)
    assert json.loads(seen[1].content)["typing_indicator"] == {"type": "text"}


async def test_account_problems_are_flagged_and_counted() -> None:
    from prometheus_client import REGISTRY

    def count() -> float:
        value = REGISTRY.get_sample_value(
            "released_graph_errors_total", {"endpoint": "send", "kind": "token", "code": "190"}
        )
        return value or 0.0

    before = count()
    client, _ = client_for(lambda r: meta_error(401, 190, "Invalid OAuth access token"))
    with pytest.raises(GraphPermanentError) as info:
        await client.send_text("1", "hi")
    assert info.value.account_problem and info.value.kind == "token"
    assert count() == before + 1
    client, _ = client_for(lambda r: meta_error(400, 131047, "Re-engagement message"))
    with pytest.raises(GraphPermanentError) as info:
        await client.send_text("1", "hi")
    assert not info.value.account_problem and info.value.kind == "reengagement"


async def test_check_phone_number_uses_the_token() -> None:
    client, seen = client_for(lambda r: httpx.Response(200, json={"id": "1234567890"}))
    assert await client.check_phone_number() == {"id": "1234567890"}
    assert seen[0].method == "GET" and seen[0].url.path.endswith("/1234567890")
