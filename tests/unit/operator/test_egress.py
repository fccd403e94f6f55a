"""A tenant's OpenAI base URL: refused before the call, pinned during it, never read back.

Real sockets on 127.0.0.1: a small HTTP server stands for whatever an internal address would
answer (a cloud metadata endpoint, a cluster Service), with a canary in every answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import openai
import pytest
from pydantic import SecretStr
from whatsapp_operator import egress
from whatsapp_operator.errors import PermanentError, TemporaryError
from whatsapp_operator.knowledge import ensure_knowledge
from whatsapp_operator.openai_api import OpenAIParams, domain_error

from released.agent.policy import Policy

CANARY = "instance-role-credentials-CANARY-4242"
DEFAULT = "https://api.openai.com/v1"
ALLOWED = Policy(openai_base_urls=("https://llm.example.com/v1", "http://127.0.0.1"))


class _Internal(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = json.dumps(
            {"error": {"message": f"internal data: {CANARY}", "type": "x", "code": "bad_thing"}}
        ).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def internal() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Internal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def resolver(*answers: list[str]) -> egress.Resolver:
    """A resolver that gives each answer in turn (the last one forever)."""
    calls: list[int] = []

    async def resolve(_host: str, _port: int) -> list[str]:
        calls.append(1)
        return answers[min(len(calls), len(answers)) - 1]

    return resolve


# -- before the call ------------------------------------------------------------------------


async def test_the_platform_default_is_not_checked() -> None:
    assert await egress.base_url_problems(DEFAULT, Policy(), default_url=DEFAULT) == []


@pytest.mark.parametrize(
    ("addresses", "refused"),
    [
        (["93.184.216.34"], False),
        (["10.96.0.1"], True),  # a cluster Service
        (["169.254.169.254"], True),  # the cloud metadata endpoint
        (["93.184.216.34", "127.0.0.1"], True),  # one bad answer is enough
        ([], True),  # does not resolve
    ],
)
async def test_allowlisted_hosts_are_checked_after_resolution(
    addresses: list[str], refused: bool
) -> None:
    problems = await egress.base_url_problems(
        "https://llm.example.com/v1", ALLOWED, default_url=DEFAULT, resolver=resolver(addresses)
    )
    assert bool(problems) is refused
    assert not any(a in p for a in addresses for p in problems)  # no address in the message


async def test_urls_outside_the_allowlist_are_refused_without_resolving() -> None:
    async def never(_host: str, _port: int) -> list[str]:
        raise AssertionError("resolved a URL the allowlist refuses")

    problems = await egress.base_url_problems(
        "https://attacker.example.org/v1", ALLOWED, default_url=DEFAULT, resolver=never
    )
    assert problems and "not an allowed base URL" in problems[0]


# -- during the call ------------------------------------------------------------------------


async def test_the_guarded_client_refuses_internal_addresses_on_real_sockets(internal: str) -> None:
    async with egress.guarded_client(Policy(), resolver=resolver(["127.0.0.1"])) as client:
        with pytest.raises(httpx2.ConnectError) as refused:
            await client.get(internal + "/latest/meta-data/")
    assert "127.0.0.1" not in str(refused.value)


async def test_dns_rebinding_is_refused_at_connect_time(internal: str) -> None:
    """Public when checked, loopback when connecting: the connection is refused."""
    port = internal.rsplit(":", 1)[1]
    url = f"https://rebind.example.com:{port}/v1"
    policy = Policy(openai_base_urls=(url,))
    rebinding = resolver(["93.184.216.34"], ["127.0.0.1"])
    assert (
        await egress.base_url_problems(url, policy, default_url=DEFAULT, resolver=rebinding) == []
    )
    async with egress.guarded_client(policy, resolver=rebinding) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(url)


async def test_a_network_the_platform_allows_is_reached(internal: str) -> None:
    policy = Policy(openai_allowed_networks=("127.0.0.0/8",))
    async with egress.guarded_client(policy, resolver=resolver(["127.0.0.1"])) as client:
        response = await client.get(internal + "/")
    assert response.status_code == 400  # it did connect (and the body stays in this test)


async def test_proxy_variables_do_not_bypass_the_guard(
    internal: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", internal)
    monkeypatch.setenv("HTTPS_PROXY", internal)
    async with egress.guarded_client(Policy(), resolver=resolver(["10.1.2.3"])) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get("http://service.internal/")


# -- never read back ------------------------------------------------------------------------


async def test_openai_calls_to_an_internal_base_url_fail_without_reaching_it(internal: str) -> None:
    params = OpenAIParams(api_key=SecretStr("sk-tenant"), base_url=internal, policy=Policy())
    with pytest.raises(TemporaryError) as failed:
        await ensure_knowledge(params, "ns/bot", [("q?", "a.")], None)
    assert failed.value.reason == "OpenAIUnavailable"
    assert CANARY not in failed.value.message and "127.0.0.1" not in failed.value.message


async def test_an_answer_body_never_reaches_the_error(internal: str) -> None:
    """A server the policy lets through answers 400 with a canary: only status and code show."""
    policy = Policy(openai_allowed_networks=("127.0.0.0/8",))
    params = OpenAIParams(
        api_key=SecretStr("sk-tenant"), base_url=internal, policy=policy, max_retries=0
    )
    with pytest.raises(PermanentError) as failed:
        await ensure_knowledge(params, "ns/bot", [("q?", "a.")], None)
    assert CANARY not in failed.value.message
    assert "HTTP 400" in failed.value.message and "code bad_thing" in failed.value.message


@pytest.mark.parametrize(
    ("status", "code", "shown"),
    [
        (403, "model_not_found", "code model_not_found"),
        (400, "x" * 65, None),  # too long to be a code
        (400, "spaces are text", None),
        (429, "insufficient_quota", "code insufficient_quota"),
        (500, None, None),
    ],
)
def test_status_errors_carry_status_and_code_only(
    status: int, code: str | None, shown: str | None
) -> None:
    request = httpx2.Request("POST", "https://llm.example.com/v1/files")
    response = httpx2.Response(status, request=request, json={"error": {"message": CANARY}})
    body: dict[str, Any] = {"message": CANARY, "code": code}
    error = openai.APIStatusError(f"Error code: {status} - {CANARY}", response=response, body=body)
    mapped = domain_error(error, "upload the FAQ file")
    message = str(mapped)
    assert CANARY not in message and f"HTTP {status}" in message
    if shown:
        assert shown in message
    else:
        assert "code" not in message.split("(HTTP", 1)[1]
