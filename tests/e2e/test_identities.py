"""End to end: one person, one conversation, whether Meta names them by phone number or BSUID.

Real processes (``LocalStack``: uvicorn, a Celery worker, Redis, SQLite) and the contract-checked
fake of Meta, which refuses a BSUID in ``to`` and delivers today's webhook payloads
(``released.fakes.webhooks``): a user known only by a business-scoped user ID is answered through
``recipient``; a user who writes first by phone number, then hides it behind a username, then
changes number, keeps one conversation and its history.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.devstack import DEFAULT_FAQS, LocalStack
from released.fakes import FakeMeta, FakeOpenAI
from released.fakes import webhooks as wh

pytestmark = pytest.mark.e2e

FAQS = {f["q"]: f["a"] for f in yaml.safe_load(DEFAULT_FAQS.read_text())}
FIRST, SECOND, THIRD = [q for q in FAQS if q.isascii() and q.endswith("?")][:3]


def send(stack: LocalStack, meta: FakeMeta, payload: dict[str, Any]) -> str:
    """Deliver ``payload`` to the web tier signed as Meta does; return its message id."""
    result = meta.deliver(payload, url=f"{stack.urls['web']}/webhook")
    assert result["status"] == 200, result
    message_id: str = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    return message_id


def reply_to(meta: FakeMeta, wamid: str, timeout: float = 30.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = meta.wait_for(
        lambda: [m for m in meta.sent() if m["context_message_id"] == wamid], timeout=timeout
    )
    return found[0]


def rows(stack: LocalStack, query: str, *args: Any) -> list[tuple[Any, ...]]:
    db = Path(stack.env["DATABASE_URL"].split("///", 1)[1])
    with sqlite3.connect(db) as conn:
        return list(conn.execute(query, args).fetchall())


def conversation_of(stack: LocalStack, wamid: str) -> int:
    query = "SELECT conversation_id FROM messages WHERE wamid = ?"
    [(conversation_id,)] = rows(stack, query, wamid)
    return int(conversation_id)


def test_a_user_known_only_by_bsuid_is_answered(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI
) -> None:
    user = wh.WhatsAppUser.username_only("Bea")
    pnid = stack.env["PHONE_NUMBER_ID"]
    wamid = send(stack, meta, wh.text_message_event(phone_number_id=pnid, text=FIRST, user=user))

    reply = reply_to(meta, wamid)
    assert reply["text"] == FAQS[FIRST]
    assert (reply["to"], reply["recipient"]) == (None, user.user_id)  # Meta refuses it in `to`
    conversation = conversation_of(stack, wamid)
    assert rows(
        stack, "SELECT kind, value FROM user_identities WHERE conversation_id = ?", conversation
    ) == [("user_id", user.user_id)]
    # Meta's status webhook names her by BSUID only (recipient_user_id): it reaches the reply.
    status = wh.status_event(phone_number_id=pnid, message_id=reply["id"], user=user,
                             status="read")
    assert meta.deliver(status, url=f"{stack.urls['web']}/webhook")["status"] == 200
    meta.wait_for(
        lambda: rows(stack, "SELECT status FROM messages WHERE reply_to = ?", wamid)
        == [("read",)],
        timeout=20,
    )


def test_a_user_moving_from_phone_number_to_bsuid_keeps_one_conversation(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI
) -> None:
    pnid = stack.env["PHONE_NUMBER_ID"]
    by_phone = wh.WhatsAppUser(phone="34600000777", name="Ana")
    # 1. Phone number and BSUID, as every message carries since April 2026.
    first = send(stack, meta, wh.text_message_event(phone_number_id=pnid, text=FIRST,
                                                    user=by_phone))
    reply = reply_to(meta, first)
    assert (reply["to"], reply["recipient"]) == (by_phone.phone, None)

    # 2. Ana adopts a username: the same BSUID, no phone number.
    hidden = by_phone.with_phone(None)
    second = send(stack, meta, wh.text_message_event(phone_number_id=pnid, text=SECOND,
                                                     user=hidden))
    reply = reply_to(meta, second)
    assert reply["text"] == FAQS[SECOND]
    assert (reply["to"], reply["recipient"]) == (None, by_phone.user_id)
    # The model saw the earlier turns: the history is shared.
    history = openai_fake.response_requests()[-1]["input"]
    assert [m["content"] for m in history][:2] == [FIRST, FAQS[FIRST]]

    # 3. She changes her number (the system message names her by the old one).
    change = wh.user_changed_number_event(phone_number_id=pnid, user=by_phone,
                                          new_phone="34600000888")
    send(stack, meta, change)
    moved = by_phone.with_phone("34600000888")
    third = send(stack, meta, wh.text_message_event(phone_number_id=pnid, text=THIRD, user=moved))
    reply = reply_to(meta, third)
    assert (reply["to"], reply["text"]) == ("34600000888", FAQS[THIRD])

    conversations = {conversation_of(stack, w) for w in (first, second, third)}
    assert len(conversations) == 1
    (conversation,) = conversations
    identities = rows(
        stack,
        "SELECT kind, value FROM user_identities WHERE conversation_id = ? ORDER BY kind, value",
        conversation,
    )
    assert identities == [("phone", "34600000888"), ("user_id", by_phone.user_id)]
    # The old number now belongs to nobody: whoever writes from it starts a conversation.
    stranger = wh.WhatsAppUser(phone="34600000777", user_id=wh.new_bsuid(), name="Other")
    other = send(stack, meta, wh.text_message_event(phone_number_id=pnid, text=FIRST,
                                                    user=stranger))
    reply_to(meta, other)
    assert conversation_of(stack, other) != conversation
