"""The web tier's HTTP routes: Meta's webhook (``webhook``), probes and metrics (``health``),
the admin API for people (``admin``, ``/admin/``; not routed by the Ingress).

``api_router`` holds the FastAPI routes; :func:`bot.main.create_app` includes it after adding
``POST /webhook`` (:func:`bot.api.webhook.receive`) as the application's first, plain route, so
the hot path is matched first and without nested routers.
"""

from __future__ import annotations

from fastapi import APIRouter

from bot.api.admin import router as admin_router
from bot.api.health import router as health_router
from bot.api.webhook import router as webhook_router

api_router = APIRouter()
api_router.include_router(webhook_router)
api_router.include_router(health_router)
api_router.include_router(admin_router)

__all__ = ["api_router"]
