"""FastAPI dependencies of the web tier, as ``Annotated`` aliases for route signatures.

The application's lifespan (:func:`bot.main.create_app`) puts the settings, the async Redis
client, the task publisher and the database writer (``bot.storage.ingest``) on ``app.state``;
these dependencies hand them to routes, and tests replace them with
``app.dependency_overrides``. They are ``async def`` on purpose: FastAPI
runs a plain ``def`` dependency in its thread pool, three thread hops per webhook.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, cast

from fastapi import Depends, Request
from redis.asyncio import Redis

from bot.core.config import Settings
from bot.queue import TaskPublisher
from bot.storage.ingest import IngestStore

#: A readiness probe of the database: returns when it answers, raises otherwise.
DatabaseCheck = Callable[[], Awaitable[None]]


async def get_app_settings(request: Request) -> Settings:
    """The settings the application was created with."""
    return cast(Settings, request.app.state.settings)


async def get_redis(request: Request) -> Redis:
    """The application's async Redis client (de-duplication, readiness)."""
    return cast(Redis, request.app.state.redis)


async def get_publisher(request: Request) -> TaskPublisher:
    """The application's Celery task publisher."""
    return cast(TaskPublisher, request.app.state.publisher)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
PublisherDep = Annotated[TaskPublisher, Depends(get_publisher)]


async def get_database_check(request: Request) -> DatabaseCheck:
    """A probe that runs ``SELECT 1`` on the application's database connection."""
    ingest = cast(IngestStore, request.app.state.ingest)
    return ingest.ping


DatabaseCheckDep = Annotated[DatabaseCheck, Depends(get_database_check)]


async def get_ingest(request: Request) -> IngestStore:
    """The application's database writer (``bot.storage.ingest``)."""
    return cast(IngestStore, request.app.state.ingest)


IngestDep = Annotated[IngestStore, Depends(get_ingest)]
