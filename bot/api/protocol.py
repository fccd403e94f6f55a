"""uvicorn's httptools HTTP protocol with the web tier's header and body timeouts.

uvicorn closes idle kept-alive connections but has no timeout for a request's headers or body
and no cap on the size of its headers; this subclass adds them with the values of
:data:`bot.serving.LIMITS`. uvicorn loads it by name: ``--http bot.api.protocol:HttpProtocol``
(see :func:`bot.serving.uvicorn_args`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bot.serving import LIMITS


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header size cap and a body
    timeout (:data:`LIMITS`). A connection that runs out of time is closed; an oversized
    header block gets uvicorn's 400 and is closed."""

    limits = LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    # -- the one timer: headers first, then the body ---------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("Closing a connection whose request did not arrive in time.")
            self.transport.close()

    # -- uvicorn's hooks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            # Raised inside the parser's callback: uvicorn answers 400 and closes.
            raise ValueError("request headers too large")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.limits.body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
