"""Variants of the real web tier for the webhook benchmark, to measure a proposed change.

Each is an app factory (``uvicorn --factory``) around the unmodified ``bot.main.create_app``;
nothing in ``bot/`` is edited on disk. They isolate costs the profile points at:

- ``async_deps``: the three route dependencies of ``bot.api.deps`` (``get_app_settings``,
  ``get_redis``, ``get_publisher``) turned into ``async def`` functions before the routes are
  built. As plain ``def`` functions FastAPI runs each in the thread pool
  (``run_in_threadpool``): three thread hops per webhook, and under load the event loop
  competes with the pool threads for the GIL. (``app.dependency_overrides`` cannot stand in
  for this: FastAPI re-inspects an overridden dependency's signature on every request.)
- ``async_deps_no_access_log``: that, and uvicorn's access log really off. ``--no-access-log``
  empties the ``uvicorn.access`` logger and stops its propagation, but
  ``bot.core.logging.configure_logging`` (run when the app is built) makes it propagate to the
  root handler again, so every request is logged anyway.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI


async def _settings(request: Any) -> Any:
    return request.app.state.settings


async def _redis(request: Any) -> Any:
    return request.app.state.redis


async def _publisher(request: Any) -> Any:
    return request.app.state.publisher


def _make_deps_async() -> None:
    """Give the dependencies async bodies; must run before ``bot.api.webhook`` is imported."""
    import sys

    assert "bot.api.webhook" not in sys.modules, "the routes are already built"
    from bot.api import deps

    deps.get_app_settings.__code__ = _settings.__code__
    deps.get_redis.__code__ = _redis.__code__
    deps.get_publisher.__code__ = _publisher.__code__


def async_deps() -> FastAPI:
    _make_deps_async()
    from bot.main import create_app

    return create_app()


def access_log_off() -> None:
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.propagate = False


def no_access_log() -> FastAPI:
    from bot.main import create_app

    app = create_app()
    access_log_off()
    return app


def async_deps_no_access_log() -> FastAPI:
    app = async_deps()
    access_log_off()
    return app
