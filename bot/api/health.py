"""Liveness, readiness and metrics endpoints.

- ``GET /healthz``: the process answers (no dependencies checked, so a Redis outage does not
  get the pod restarted).
- ``GET /readyz``: Redis answers ``PING`` and the database ``SELECT 1``; 503 naming the failed
  check otherwise (only the exception type, never a message that could hold a URL or secret).
- ``GET /metrics``: Prometheus text format; the Celery queue depth is read from Redis and the
  number of conversations held by a person from the database first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import anyio.to_thread
import structlog
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from bot.api.deps import DatabaseCheckDep, IngestDep, PublisherDep, RedisDep
from bot.core.metrics import refresh_conversations_held, refresh_queue_depth, render_metrics

log = structlog.get_logger(__name__)
router = APIRouter(tags=["health"])

#: Seconds each readiness check may take.
CHECK_TIMEOUT = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving."""
    return {"status": "ok"}


async def _probe(name: str, check: Awaitable[Any]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check
    except TimeoutError:
        log.warning("readyz.check_failed", check=name, error="timeout")
        return "timeout"
    except Exception as exc:
        log.warning("readyz.check_failed", check=name, error=type(exc).__name__)
        return f"error: {type(exc).__name__}"
    return "ok"


@router.get("/readyz")
async def readyz(redis: RedisDep, database: DatabaseCheckDep) -> JSONResponse:
    """Readiness: Redis and the database are reachable."""
    redis_state, db_state = await asyncio.gather(
        _probe("redis", redis.ping()),
        _probe("database", database()),
    )
    checks = {"redis": redis_state, "database": db_state}
    ready = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(publisher: PublisherDep, ingest: IngestDep) -> Response:
    """Prometheus metrics, with ``released_queue_depth`` read from the broker and
    ``released_conversations_held`` from the database now."""
    if publisher.redis is not None:
        await asyncio.gather(
            refresh_queue_depth(publisher.redis, publisher.queue),
            refresh_conversations_held(ingest.count_held),
        )
    else:
        await refresh_conversations_held(ingest.count_held)
    body, content_type = await anyio.to_thread.run_sync(render_metrics)
    return Response(content=body, media_type=content_type)
