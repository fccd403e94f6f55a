"""What the worker's integration tests share: the agent, its FAQs, and running a task.

The fixtures (``meta``, ``oai``, ``settings``) are in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

from typing import Any

import bot.tasks as tasks
from bot.core.config import Settings
from bot.storage import repository as repo
from bot.storage.db import session_scope
from bot.storage.models import Message

PHONE = "106540352242922"
USER = "15551234567"
FAQS = [
    {"q": "What are your opening hours?", "a": "Monday to Friday, 9:00 to 18:00."},
    {"q": "How long do you keep messages?", "a": "Fourteen days, then they are deleted."},
]
SEND = "POST /{version}/{phone_number_id}/messages"


def inbound(
    wamid: str, text: str | None = "What are your opening hours?", **kw: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "wamid": wamid,
        "phone_number_id": PHONE,
        "wa_id": USER,
        "contact_name": "Ana",
        "kind": "text",
        "text": text,
    }
    payload.update(kw)
    return payload


def process(payload: dict[str, Any]) -> dict[str, Any]:
    """Run ``bot.tasks.process_message`` eagerly (retries re-run at once) and return its result."""
    result: dict[str, Any] = tasks.process_message.apply(args=[payload]).get()
    return result


def stored(settings: Settings, wamid: str) -> Message | None:
    async def get() -> Message | None:
        async with session_scope(settings) as session:
            return await repo.get_message(session, wamid)

    return tasks.run_async(get())


def reply_to(settings: Settings, wamid: str) -> Message | None:
    async def get() -> Message | None:
        async with session_scope(settings) as session:
            return await repo.find_reply(session, wamid)

    return tasks.run_async(get())
