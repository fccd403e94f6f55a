"""The retention purge: ``released purge`` (the agent's ``NAME-purge`` CronJob runs it hourly).

Deletes what the database holds that is older than ``RETENTION_DAYS``: messages, quarantined
webhook elements, deliveries the worker never finished with (``bot.storage.inbox``), and
conversations left empty and idle as long (``repository.purge_older_than``). Redis holds no
message text (the queue carries references to the database, ``bot.queue``), so there is nothing
to purge there: the purge needs only the database, and runs while the agent is suspended.

It is a command that exits, not a scheduler that waits: no process stays alive between runs.
"""

from __future__ import annotations

import logging
from datetime import datetime

from bot.core.config import Settings
from bot.storage import repository as repo
from bot.storage.db import dispose_engines, session_scope

log = logging.getLogger(__name__)


async def purge(settings: Settings, days: int | None = None, *, now: datetime | None = None) -> int:
    """Delete what is older than ``days`` (default ``RETENTION_DAYS``); return how many
    messages were deleted."""
    days = days or settings.retention_days
    async with session_scope(settings) as session:
        deleted = await repo.purge_older_than(session, days, now=now)
    log.info("purged %d messages older than %d days", deleted, days)
    return deleted


async def purge_once(settings: Settings, days: int | None = None) -> int:
    """:func:`purge`, then close the database connections (a command that exits)."""
    try:
        return await purge(settings, days)
    finally:
        await dispose_engines()
