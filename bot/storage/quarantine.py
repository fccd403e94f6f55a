"""Storing the elements of signed webhook deliveries that were kept aside (quarantined).

The web tier parses every message, status and echo of a delivery on its own
(``bot.whatsapp.payload``); one that does not parse, or one over the per-delivery cap, is
stored here with its reason and raw JSON instead of being queued, and the others proceed.
Meta redelivers a delivery until it gets a 200, so storing is idempotent: each element has a
fingerprint (SHA-256 of phone number id, element kind, cause and raw JSON) and a second insert
of it is a no-op. Rows are purged with the messages (``repository.purge_older_than``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.core.config import Settings
from bot.storage.db import session_scope
from bot.storage.models import QuarantinedEvent, utcnow
from bot.storage.repository import _insert
from bot.whatsapp.payload import Quarantined


def fingerprint(item: Quarantined) -> str:
    """What identifies a quarantined element across redeliveries."""
    key = "\n".join([item.phone_number_id or "", item.element, item.cause, item.raw])
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _text(value: str | None, limit: int) -> str | None:
    """``value`` clipped to ``limit`` characters and encodable as UTF-8 (PostgreSQL refuses
    lone surrogates, which a JSON string may carry)."""
    if value is None:
        return None
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


async def record_quarantined(session: AsyncSession, items: Sequence[Quarantined]) -> int:
    """Store ``items`` (each once, whatever the redeliveries); return how many were new."""
    if not items:
        return 0
    now = utcnow()
    rows = {
        fingerprint(item): {
            "fingerprint": fingerprint(item),
            "phone_number_id": _text(item.phone_number_id, 64),
            "field": _text(item.field, 64),
            "element": item.element,
            "cause": item.cause,
            "path": _text(item.path, 256) or "",
            "wamid": _text(item.wamid, 256),
            "reason": _text(item.reason, 512) or "",
            "raw": _text(item.raw, len(item.raw)) or "",
            "created_at": now,
        }
        for item in items
    }
    stmt = (
        _insert(session, QuarantinedEvent)
        .values(list(rows.values()))
        .on_conflict_do_nothing(index_elements=["fingerprint"])
    )
    result = await session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


async def store_quarantined(settings: Settings, items: Sequence[Quarantined]) -> int:
    """:func:`record_quarantined` in a transaction of its own; returns how many were new."""
    async with session_scope(settings) as session:
        return await record_quarantined(session, items)
