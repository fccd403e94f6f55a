"""The two baselines of the webhook benchmark, served by uvicorn with the web tier's settings.

- ``tests.bench.baselines:bare``: a bare ASGI app that reads the body and answers 200.
- ``tests.bench.baselines:minimal_fastapi`` (a factory): a hand-written FastAPI endpoint that
  checks ``X-Hub-Signature-256``, parses the JSON and ``LPUSH``es the body to Redis with
  ``redis.asyncio`` (``BENCH_REDIS_URL``, ``BENCH_APP_SECRET``, list ``BENCH_QUEUE``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from redis.asyncio import Redis

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BASELINE_QUEUE = "bench:baseline"
_OK = b'{"status":"ok"}'


async def bare(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, answer 200 with a small JSON body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"15")],
        }
    )
    await send({"type": "http.response.body", "body": _OK})


def minimal_fastapi() -> FastAPI:
    """Signature check, JSON parse, one LPUSH with the async Redis client, 200."""
    secret = os.environ.get("BENCH_APP_SECRET", "bench-app-secret").encode()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    queue = os.environ.get("BENCH_QUEUE", BASELINE_QUEUE)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = Redis.from_url(redis_url)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/webhook")
    async def webhook(request: Request) -> Response:
        body = await request.body()
        header = request.headers.get("x-hub-signature-256", "")
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(header, expected):
            return JSONResponse({"detail": "bad signature"}, status_code=401)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"detail": "not JSON"}, status_code=400)
        if not isinstance(payload, dict):
            return JSONResponse({"detail": "not an object"}, status_code=400)
        await request.app.state.redis.lpush(queue, body)
        return JSONResponse({"status": "ok"})

    return app
