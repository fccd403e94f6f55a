"""The web tier's HTTP server under abuse: a real uvicorn with ``bot.api.protocol.HttpProtocol`` on
127.0.0.1, raw sockets for the misbehaving clients.

The protocol's limits are shortened for the test (a subclass), so each misbehaviour is cut off
within a fraction of a second; the waits below are bounds, not measurements.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import uvicorn

from bot.api.protocol import HttpProtocol
from bot.serving import LIMITS, uvicorn_args
from tests.servers import free_port, wait_for_port

#: How long a test waits for the server to act (the limits below are 0.3 s).
BOUND = 10.0


class ShortLimits(HttpProtocol):
    limits = replace(LIMITS, header_timeout=0.3, body_timeout=0.3, max_header_bytes=4096)


class Seen:
    """What the application saw: one entry per request (its body, or "disconnect")."""

    def __init__(self) -> None:
        self.requests: list[bytes | str] = []


@pytest.fixture
def server() -> Iterator[tuple[int, Seen]]:
    seen = Seen()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen.requests.append("disconnect")
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.requests.append(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=ShortLimits,
                            log_config=None, access_log=False, lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port(port, timeout=BOUND)
    try:
        yield port, seen
    finally:
        srv.should_exit = True
        thread.join(timeout=BOUND)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=BOUND)


def closed_by_server(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails after BOUND). A reset
    is a close too: the kernel resets instead when the server closes with bytes of ours unread
    (a slow client's last header line, for example)."""
    received = b""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError("the server kept the connection open")


def test_a_well_behaved_client_is_served_twice_on_one_connection(
    server: tuple[int, Seen],
) -> None:
    port, seen = server
    with connect(port) as conn:
        for body in (b"first", b"second"):
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            answer = conn.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    assert seen.requests == [b"first", b"second"]


def test_a_connection_that_sends_nothing_is_closed(server: tuple[int, Seen]) -> None:
    port, seen = server
    with connect(port) as conn:
        assert closed_by_server(conn) == b""
    assert seen.requests == []


def test_headers_that_never_end_are_cut_off(server: tuple[int, Seen]) -> None:
    """Slowloris: a header line now and then, never the blank line."""
    port, seen = server
    with connect(port) as conn:
        conn.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        for i in range(3):
            with contextlib.suppress(OSError):
                conn.sendall(b"X-Slow-%d: 1\r\n" % i)
            time.sleep(0.15)
        assert closed_by_server(conn) == b""
    assert seen.requests == []


def test_oversized_headers_are_refused(server: tuple[int, Seen]) -> None:
    port, seen = server
    with connect(port) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
        answer = closed_by_server(conn)
    assert answer.startswith(b"HTTP/1.1 400")
    assert seen.requests == []


def test_a_body_that_stalls_is_cut_off_and_the_app_sees_a_disconnect(
    server: tuple[int, Seen],
) -> None:
    port, seen = server
    with connect(port) as conn:
        conn.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                     b'{"object": "whatsapp_')
        assert closed_by_server(conn) == b""
    deadline = time.monotonic() + BOUND
    while not seen.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen.requests == ["disconnect"]


def test_an_idle_kept_alive_connection_gets_the_header_timeout_for_its_next_request(
    server: tuple[int, Seen],
) -> None:
    port, seen = server
    with connect(port) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        conn.sendall(b"GET / HTTP/1.1\r\nHo")  # the next request starts, and stalls
        assert closed_by_server(conn) == b""
    assert seen.requests == [b""]


def test_the_command_line_serves_with_these_limits() -> None:
    args = uvicorn_args("0.0.0.0", 8000)
    assert args[0] == "bot.main:app"
    flags = dict(zip(args[1::2], args[2::2], strict=False))
    assert flags["--http"] == "bot.api.protocol:HttpProtocol"
    assert int(flags["--limit-concurrency"]) == LIMITS.limit_concurrency
    # Longer than ingress-nginx's upstream keep-alive (60 s): the proxy closes idle ones first.
    assert int(flags["--timeout-keep-alive"]) > 60
    assert "--no-access-log" in args
    # uvicorn accepts exactly this command line (and imports the protocol by that name).
    config = uvicorn.Config("bot.main:app", http=flags["--http"])
    config.http_protocol_class = uvicorn.importer.import_from_string(config.http)
    assert config.http_protocol_class is HttpProtocol
