"""The operator's calls to Meta and OpenAI share connections (``whatsapp_operator.http_clients``)
and, for the periodic model check, answers (``whatsapp_operator.models``).

A client per call cost ~25 ms of CPU each (a new TLS context); at 1,000 agents that was most of
the operator's idle CPU. Here a local HTTP server counts the connections and requests it gets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from whatsapp_operator import graph, http_clients, models
from whatsapp_operator.models import model_exists
from whatsapp_operator.openai_api import OpenAIParams

MODEL = {"id": "gpt-5-mini", "object": "model", "created": 0, "owned_by": "openai"}


class CountingServer:
    """Answers every request with :data:`MODEL` over keep-alive HTTP/1.1; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        body = json.dumps(MODEL).encode()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[CountingServer]:
    counting = CountingServer()
    srv = await asyncio.start_server(counting._serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    counting.url = f"http://127.0.0.1:{port}"
    async with srv:
        yield counting
        await http_clients.aclose()


async def test_graph_calls_share_one_connection(server: CountingServer) -> None:
    for _ in range(3):
        body = await graph.request("GET", f"{server.url}/v25.0/123", "token", "read the number")
        assert body["id"] == "gpt-5-mini"
    assert (server.requests, server.connections) == (3, 1)


async def test_openai_calls_share_one_connection(server: CountingServer) -> None:
    params = OpenAIParams(api_key=SecretStr("sk-test"), base_url=f"{server.url}/v1")
    for _ in range(3):
        assert await model_exists(params, "gpt-5-mini")
    assert (server.requests, server.connections) == (3, 1)


async def test_agents_sharing_key_and_model_share_the_periodic_answer(
    server: CountingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models, "_answers", {})
    shared = OpenAIParams(api_key=SecretStr("sk-shared"), base_url=f"{server.url}/v1")
    other = OpenAIParams(api_key=SecretStr("sk-other"), base_url=f"{server.url}/v1")
    for _ in range(5):  # five agents' periodic checks with one key
        assert await model_exists(shared, "gpt-5-mini", max_age=300)
    assert server.requests == 1
    assert await model_exists(other, "gpt-5-mini", max_age=300)  # another key asks
    assert await model_exists(shared, "gpt-5", max_age=300)  # another model asks
    assert await model_exists(shared, "gpt-5-mini")  # a pass always asks
    assert server.requests == 4


async def test_closing_ends_the_connections_and_a_later_call_opens_one(
    server: CountingServer,
) -> None:
    await graph.request("GET", f"{server.url}/v25.0/1", "token", "read the number")
    first = http_clients.graph()
    await http_clients.aclose()
    assert first.is_closed
    await graph.request("GET", f"{server.url}/v25.0/1", "token", "read the number")
    assert http_clients.graph() is not first
    assert server.connections == 2


def test_each_event_loop_has_its_own_clients() -> None:
    """A connection pool belongs to the loop that opened it (tests run several loops)."""

    async def client() -> object:
        made = http_clients.graph()
        assert http_clients.graph() is made
        return made

    loop_a, loop_b = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        a = loop_a.run_until_complete(client())
        b = loop_b.run_until_complete(client())
        assert a is not b
    finally:
        for loop in (loop_a, loop_b):
            loop.run_until_complete(http_clients.aclose())
            loop.close()
