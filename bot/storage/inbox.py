"""The inbox, as the worker sees it: the message or echo a task refers to, and its removal.

The web tier stores each message and echo it accepts in the ``inbox`` table
(``bot.storage.ingest``) and queues only a reference (``bot.whatsapp.events.InboxRef``), so no
message text ever reaches Redis. The task loads the event here, and deletes the row once it is
done with it (answered, recorded, not to be answered, failed for good), so the text then lives
only in ``messages``, which the retention purge and a user's deletion (revoke) reach. A row
whose task never finished goes with the retention purge (``repository.purge_older_than``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.storage.models import InboxEvent, utcnow
from bot.storage.repository import _insert
from bot.whatsapp.events import EchoMessage, InboundMessage

#: ``event`` of an inbox row (the web tier writes the same names).
MESSAGE = "message"
ECHO = "echo"


async def load(session: AsyncSession, wamid: str) -> InboundMessage | EchoMessage | None:
    """The event stored under ``wamid``; ``None`` when there is none (its task finished, or
    the purge removed it)."""
    row = (
        await session.exec(select(InboxEvent).where(col(InboxEvent.wamid) == wamid))
    ).first()
    if row is None:
        return None
    data = json.loads(row.payload)
    if row.event == ECHO:
        return EchoMessage.model_validate(data)
    return InboundMessage.model_validate(data)


async def keep(session: AsyncSession, event: InboundMessage | EchoMessage) -> None:
    """Store ``event`` unless its wamid is there already (a task of an earlier version carried
    the whole event: from its first run on, it waits here and its next runs carry the wamid)."""
    kind = ECHO if isinstance(event, EchoMessage) else MESSAGE
    stmt = (
        _insert(session, InboxEvent)
        .values(wamid=event.wamid, event=kind,
                payload=json.dumps(event.model_dump(mode="json")), created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["wamid"])
    )  # fmt: skip
    await session.execute(stmt)


async def discard(session: AsyncSession, wamids: Iterable[str]) -> int:
    """Delete the rows of ``wamids``; return how many there were."""
    values = sorted(set(wamids))
    if not values:
        return 0
    result = await session.execute(delete(InboxEvent).where(col(InboxEvent.wamid).in_(values)))
    return int(getattr(result, "rowcount", 0) or 0)
