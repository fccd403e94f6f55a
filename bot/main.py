"""The web tier's FastAPI application: ``uvicorn bot.main:app`` or the factory ``create_app``.

:func:`create_app` builds the app for a :class:`~bot.core.config.Settings` (from the
environment by default) and configures logging. Connections are opened only by the lifespan:
an async Redis client (de-duplication, readiness), a task publisher for the Celery broker
(sharing that client when ``CELERY_BROKER_URL`` is unset or equal to ``REDIS_URL``) and the
database writer of the request path (``bot.storage.ingest``: the inbox, the quarantine and the
readiness check, through the driver alone); all are closed at shutdown.

The web tier loads only what it serves: not Celery (``bot.queue`` writes the envelope itself),
not the OpenAI client, not SQLAlchemy or the ORM models (tests/unit/test_web_imports.py).

``app`` is built on first access (a module ``__getattr__``), so importing this module reads no
environment and connects nowhere; ``uvicorn bot.main:app`` and ``from bot.main import app`` work
as usual. Building it refuses to go on without the web tier's secrets (``META_APP_SECRET``,
``META_VERIFY_TOKEN``): there are no defaults, so the error names what to set.

Production serves it with the HTTP limits of :mod:`bot.serving` (``uvicorn_args``).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from bot import __version__
from bot.api import admin, api_router, webhook
from bot.core.config import WEB_SECRETS, Settings, get_settings
from bot.core.logging import configure_logging
from bot.core.redis import connect_redis
from bot.queue import TaskPublisher
from bot.storage.ingest import IngestStore

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def create_app(settings: Settings | None = None, *, setup_logging: bool = True) -> FastAPI:
    """The web application for ``settings`` (default: ``get_settings()``).

    ``setup_logging=False`` leaves the process's logging configuration alone (tests).
    Raises :class:`~bot.core.config.MissingSecretsError` without the web tier's secrets.
    """
    settings = settings or get_settings()
    settings.require(*WEB_SECRETS)
    if setup_logging:
        configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect_redis(settings.redis_url)
        broker_redis: Redis | None = None
        if settings.broker_url == settings.redis_url:
            broker_redis = redis
        elif urlsplit(settings.broker_url).scheme in _REDIS_SCHEMES:
            broker_redis = connect_redis(settings.broker_url)
        publisher = TaskPublisher(settings.broker_url, redis=broker_redis)
        ingest = IngestStore(settings.database_url)
        app.state.redis = redis
        app.state.publisher = publisher
        app.state.ingest = ingest
        try:
            yield
        finally:
            await publisher.aclose()
            if broker_redis is not None and broker_redis is not redis:
                await broker_redis.aclose()
            await redis.aclose()
            await ingest.aclose()
            if "bot.storage.db" in sys.modules:  # the admin API used the ORM's engine
                from bot.storage.db import dispose_engines

                await dispose_engines()

    app = FastAPI(
        title="Released WhatsApp bot",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    # The hot path first, as a plain route: matched before anything else (see bot.api).
    app.add_route("/webhook", webhook.receive, methods=["POST"], include_in_schema=False)
    app.include_router(api_router)
    app.add_exception_handler(admin.AdminRefused, admin.refused)
    return app


class WebhookFastPath:
    """The ASGI application uvicorn serves: ``POST /webhook`` straight to its handler, every
    other request (and the lifespan) to the FastAPI application.

    Meta sends up to 1,000 messages a second per number; FastAPI's middleware stack and router
    cost more per request than the webhook's own work (tests/bench/README.md). The handler is
    the same function FastAPI serves at that route, with the same ``app.state``.
    """

    def __init__(self, fastapi_app: FastAPI) -> None:
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/webhook" and scope["method"] == "POST":
            scope["app"] = self.fastapi_app  # what request.app.state reads
            response = await webhook.receive(Request(scope, receive))
            await response(scope, receive, send)
            return
        await self.fastapi_app(scope, receive, send)


_app: WebhookFastPath | None = None


def __getattr__(name: str) -> WebhookFastPath:
    """``bot.main.app``: the application for the environment's settings, built once."""
    global _app
    if name == "app":
        if _app is None:
            _app = WebhookFastPath(create_app())
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
