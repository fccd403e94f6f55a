"""Storage on SQLite and on a real PostgreSQL: migrations, idempotent inbound, replies,
statuses, history and purge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bot.core.config import Settings
from bot.storage import holds
from bot.storage import repository as repo
from bot.storage.db import (
    dispose_engines,
    get_engine,
    normalize_database_url,
    run_migrations,
    session_scope,
)
from bot.storage.models import IdentityKind, Message, MessageStatus
from bot.whatsapp.events import IdentityChange, InboundMessage, StatusUpdate

PHONE = "100000000000001"


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)],
)
async def settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    else:
        url = request.getfixturevalue("postgres_db")
    s = Settings(database_url=url)
    run_migrations(s)  # from inside the running loop: runs in a helper thread
    yield s
    await dispose_engines()


def inbound(
    wamid: str,
    text_: str | None = "hello",
    wa_id: str = "15550001111",
    user_id: str | None = None,
    **kw: Any,
) -> InboundMessage:
    return InboundMessage(
        wamid=wamid,
        phone_number_id=PHONE,
        wa_id=wa_id,
        user_id=user_id,
        contact_name="Ana",
        kind="text",
        text=text_,
        **kw,
    )


#: A BSUID as long as Meta allows (two letters, a dot, 128 characters) and then some.
LONG_BSUID = "US." + "x" * 200


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+asyncpg://u:p@h:5432/d"),
        ("postgresql://u:p@h/d?sslmode=require", "postgresql+asyncpg://u:p@h/d?ssl=require"),
        ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


async def test_engine_cached_per_url(settings: Settings) -> None:
    assert get_engine(settings) is get_engine(Settings(database_url=settings.database_url))


async def test_migrations_are_idempotent(settings: Settings) -> None:
    run_migrations(settings)
    async with session_scope(settings) as session:
        version = (await session.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert version == "0005_handover"


async def test_record_inbound_is_idempotent(settings: Settings) -> None:
    async with session_scope(settings) as session:
        first = await repo.record_inbound(session, inbound("wamid.A"))
    async with session_scope(settings) as session:
        second = await repo.record_inbound(session, inbound("wamid.A", "changed"))
    assert first.created and not second.created
    assert second.message.id == first.message.id
    assert second.message.text == "hello"
    assert first.conversation.id == second.conversation.id
    assert first.message.status == MessageStatus.RECEIVED


async def test_reply_lifecycle_and_exactly_once_guard(settings: Settings) -> None:
    async with session_scope(settings) as session:
        rec = await repo.record_inbound(session, inbound("wamid.in"))
        assert not await repo.reply_already_sent(session, "wamid.in")
        out, created = await repo.record_outbound_pending(
            session, rec.conversation.id or 0, "wamid.in", "hi!", source="faq"
        )
        assert created and out.status == MessageStatus.PENDING
        again, created_again = await repo.record_outbound_pending(
            session, rec.conversation.id or 0, "wamid.in", "other"
        )
        assert not created_again and again.id == out.id and again.text == "hi!"
        assert not await repo.reply_already_sent(session, "wamid.in")
        await repo.mark_sent(session, out, "wamid.out")
    async with session_scope(settings) as session:
        assert await repo.reply_already_sent(session, "wamid.in")
        reply = await repo.find_reply(session, "wamid.in")
        assert reply is not None and reply.wamid == "wamid.out" and reply.status == "sent"


async def test_mark_failed_records_error(settings: Settings) -> None:
    async with session_scope(settings) as session:
        rec = await repo.record_inbound(session, inbound("wamid.f"))
        out, _ = await repo.record_outbound_pending(
            session, rec.conversation.id or 0, "wamid.f", "x"
        )
        await repo.mark_failed(session, out, 131047, "Re-engagement message")
    async with session_scope(settings) as session:
        reply = await repo.find_reply(session, "wamid.f")
        assert reply is not None
        assert (reply.status, reply.error_code) == ("failed", 131047)
        assert await repo.reply_already_sent(session, "wamid.f")


async def _sent_message(settings: Settings, wamid_in: str, wamid_out: str) -> None:
    async with session_scope(settings) as session:
        rec = await repo.record_inbound(session, inbound(wamid_in))
        out, _ = await repo.record_outbound_pending(
            session, rec.conversation.id or 0, wamid_in, "a"
        )
        await repo.mark_sent(session, out, wamid_out)


def status(wamid: str, kind: str, code: int | None = None) -> StatusUpdate:
    return StatusUpdate.model_validate(
        {
            "wamid": wamid,
            "phone_number_id": PHONE,
            "status": kind,
            "error_code": code,
            "error_title": "boom" if code else None,
        }
    )


async def test_statuses_only_move_forward(settings: Settings) -> None:
    await _sent_message(settings, "wamid.s-in", "wamid.s-out")
    steps = [
        ("delivered", repo.StatusOutcome.APPLIED, "delivered"),
        ("sent", repo.StatusOutcome.STALE, "delivered"),
        ("read", repo.StatusOutcome.APPLIED, "read"),
        ("delivered", repo.StatusOutcome.STALE, "read"),
        ("failed", repo.StatusOutcome.STALE, "read"),
        ("deleted", repo.StatusOutcome.IGNORED, "read"),
    ]
    for kind, outcome, stored in steps:
        async with session_scope(settings) as session:
            assert await repo.apply_status(session, status("wamid.s-out", kind)) == outcome
            msg = await repo.get_message(session, "wamid.s-out")
            assert msg is not None and msg.status == stored
    async with session_scope(settings) as session:
        assert await repo.apply_status(session, status("wamid.nope", "read")) == "unknown"
        # Inbound messages are not touched by statuses.
        assert await repo.apply_status(session, status("wamid.s-in", "read")) == "unknown"


async def test_failed_status_records_error(settings: Settings) -> None:
    await _sent_message(settings, "wamid.x-in", "wamid.x-out")
    async with session_scope(settings) as session:
        outcome = await repo.apply_status(session, status("wamid.x-out", "failed", 131026))
        assert outcome == repo.StatusOutcome.APPLIED
    async with session_scope(settings) as session:
        msg = await repo.get_message(session, "wamid.x-out")
        assert msg is not None
        assert (msg.status, msg.error_code, msg.error_title) == ("failed", 131026, "boom")
        assert await repo.apply_status(session, status("wamid.x-out", "read")) == "stale"


async def test_history_returns_last_turns_in_order(settings: Settings) -> None:
    async with session_scope(settings) as session:
        for i in range(4):
            rec = await repo.record_inbound(session, inbound(f"wamid.h{i}", f"q{i}"))
            out, _ = await repo.record_outbound_pending(
                session, rec.conversation.id or 0, f"wamid.h{i}", f"a{i}"
            )
            await repo.mark_sent(session, out, f"wamid.ho{i}")
        current = await repo.record_inbound(session, inbound("wamid.now", "current"))
        await repo.record_inbound(session, inbound("wamid.img", None))
        other = await repo.record_inbound(session, inbound("wamid.o", "other user", wa_id="1"))
    async with session_scope(settings) as session:
        turns = await repo.history(
            session, current.conversation.id or 0, 3, before_message_id=current.message.id
        )
        assert [m.text for m in turns] == ["a2", "q3", "a3"]
        assert await repo.history(session, current.conversation.id or 0, 0) == []
        assert other.conversation.id != current.conversation.id


async def test_purge_deletes_only_old_messages(settings: Settings) -> None:
    async with session_scope(settings) as session:
        old = await repo.record_inbound(session, inbound("wamid.old", wa_id="1"))
        await repo.record_inbound(session, inbound("wamid.new", wa_id="2"))
        old.message.created_at = datetime.now(UTC) - timedelta(days=20)
        old.conversation.updated_at = datetime.now(UTC) - timedelta(days=20)
        session.add(old.message)
        session.add(old.conversation)
    async with session_scope(settings) as session:
        assert await repo.purge_older_than(session, 14) == 1
    async with session_scope(settings) as session:
        assert await repo.get_message(session, "wamid.old") is None
        assert await repo.get_message(session, "wamid.new") is not None
        assert await repo.purge_older_than(session, 14) == 0
        rows = (await session.execute(text("SELECT count(*) FROM conversations"))).scalar()
        assert rows == 1


async def test_messages_of_leaves_out_what_is_past_retention(settings: Settings) -> None:
    """What a person sees of a conversation (``show``, the handover notification) stops at
    retention, though the hourly purge has not deleted the older messages yet."""
    async with session_scope(settings) as session:
        old = await repo.record_inbound(session, inbound("wamid.r-old", "from 15 days ago"))
        await repo.record_inbound(session, inbound("wamid.r-day", "from yesterday"))
        await repo.record_inbound(session, inbound("wamid.r-now", "from today"))
        conversation_id = old.conversation.id or 0
        for wamid, age in (("wamid.r-old", timedelta(days=15)), ("wamid.r-day", timedelta(days=1))):
            message = await repo.get_message(session, wamid)
            assert message is not None
            message.created_at = datetime.now(UTC) - age
            session.add(message)
    async with session_scope(settings) as session:
        shown = await holds.messages_of(session, conversation_id, retention_days=14)
        assert [m.text for m in shown] == ["from yesterday", "from today"]
        last = await holds.messages_of(session, conversation_id, 1, retention_days=14)
        assert [m.text for m in last] == ["from today"]
        longer = await holds.messages_of(session, conversation_id, retention_days=30)
        assert [m.text for m in longer] == ["from 15 days ago", "from yesterday", "from today"]
        # The list counts what a person can see: two messages, the last inbound today.
        (listed,) = await holds.list_conversations(session, retention_days=14)
        assert listed.messages == 2 and listed.last_inbound_at is not None
        assert listed.last_inbound_at > datetime.now(UTC) - timedelta(hours=1)
        (everything,) = await holds.list_conversations(session)
        assert everything.messages == 3
        # The purge's cut-off is the same: it deletes exactly what was left out.
        assert await repo.purge_older_than(session, 14) == 1
    async with session_scope(settings) as session:
        kept = await holds.messages_of(session, conversation_id, retention_days=30)
        assert [m.text for m in kept] == ["from yesterday", "from today"]


async def test_the_models_history_leaves_out_what_is_past_retention(settings: Settings) -> None:
    async with session_scope(settings) as session:
        old = await repo.record_inbound(session, inbound("wamid.m-old", "from 15 days ago"))
        await repo.record_inbound(session, inbound("wamid.m-now", "from today"))
        conversation_id = old.conversation.id or 0
        old.message.created_at = datetime.now(UTC) - timedelta(days=15)
        session.add(old.message)
    async with session_scope(settings) as session:
        within = await repo.history(session, conversation_id, 10, retention_days=14)
        assert [m.text for m in within] == ["from today"]
        everything = await repo.history(session, conversation_id, 10)
        assert [m.text for m in everything] == ["from 15 days ago", "from today"]


async def test_message_model_defaults() -> None:
    msg = Message(conversation_id=1, direction="inbound", status="received")
    assert msg.kind == "text" and msg.created_at.tzinfo is not None


async def test_models_match_migrations(settings: Settings) -> None:
    from alembic import command
    from sqlalchemy.engine import Connection

    from bot.storage.db import alembic_config

    cfg = alembic_config(settings)

    def check(connection: Connection) -> None:
        cfg.attributes["connection"] = connection
        command.check(cfg)  # raises when the models and the revisions differ

    async with get_engine(settings).connect() as conn:
        await conn.run_sync(check)


async def test_take_over_reply_respects_live_claims(settings: Settings) -> None:
    async with session_scope(settings) as session:
        rec = await repo.record_inbound(session, inbound("wamid.c"))
        out, _ = await repo.record_outbound_pending(
            session, rec.conversation.id or 0, "wamid.c", "x", claimed_by="task-1"
        )
    fresh = timedelta(minutes=10)
    async with session_scope(settings) as session:
        assert await repo.take_over_reply(session, out, "task-1", fresh)  # its own retry
        assert await repo.take_over_reply(session, out, None, fresh)  # no claim to check
        assert not await repo.take_over_reply(session, out, "task-2", fresh)  # alive elsewhere
        assert await repo.take_over_reply(session, out, "task-2", timedelta(0))  # stale: taken
    async with session_scope(settings) as session:
        reply = await repo.find_reply(session, "wamid.c")
        assert reply is not None and reply.claimed_by == "task-2"
        assert not await repo.take_over_reply(session, reply, "task-1", fresh)
        await repo.mark_sent(session, reply, "wamid.c-out")
        assert not await repo.take_over_reply(session, reply, "task-2", fresh)


async def test_an_echo_joins_the_users_history_once(settings: Settings) -> None:
    from bot.whatsapp.events import EchoMessage

    async with session_scope(settings) as session:
        await repo.record_inbound(session, inbound("wamid.q", "Is it in red?"))
    echo = EchoMessage(wamid="wamid.echo", phone_number_id=PHONE, wa_id="15550001111",
                       kind="text", text="Yes, a person here: in red too.")
    async with session_scope(settings) as session:
        assert await repo.record_echo(session, echo) is True
        assert await repo.record_echo(session, echo) is False  # Meta redelivered it
    async with session_scope(settings) as session:
        conversation = await repo.get_or_create_conversation(session, PHONE, "15550001111")
        turns = await repo.history(session, conversation.id or 0, 10)
    assert [(m.direction, m.source, m.text) for m in turns][-2:] == [
        ("inbound", None, "Is it in red?"),
        ("outbound", "echo", "Yes, a person here: in red too."),
    ]


async def test_quarantined_elements_are_stored_once_and_purged(settings: Settings) -> None:
    from bot.storage.ingest import IngestStore
    from bot.whatsapp.payload import Quarantined

    item = Quarantined(element="message", path="entry[0].changes[0].value.messages[1]",
                       reason="id: Field required", phone_number_id=PHONE, field="messages",
                       raw='{"type": "text", "text": {"body": "lone \\ud800 surrogate"}}')
    web = IngestStore(settings.database_url)  # what the web tier writes with, without SQLAlchemy
    try:
        assert await web.put_quarantined([item, item]) == 1
        assert await web.put_quarantined([item]) == 0
    finally:
        await web.aclose()
    async with session_scope(settings) as session:
        await repo.purge_older_than(session, 14)
        kept = (await session.execute(text("SELECT count(*) FROM quarantined_events"))).scalar()
    assert kept == 1  # recent: kept
    later = datetime.now(UTC) + timedelta(days=15)
    async with session_scope(settings) as session:
        await repo.purge_older_than(session, 14, now=later)
        rows = (await session.execute(text("SELECT count(*) FROM quarantined_events"))).scalar()
    assert rows == 0


async def test_the_inbox_from_the_web_tier_to_the_worker_and_the_purge(settings: Settings) -> None:
    """What the web tier stores (driver only) the worker reads (SQLAlchemy) and deletes; what no
    task finished goes with the purge; timestamps compare the same way on both databases."""
    from bot.storage import inbox
    from bot.storage.ingest import ECHO, MESSAGE, IngestStore, event_json
    from bot.whatsapp.events import EchoMessage

    msg = inbound("wamid.in-1", "a question with a lone \ud800 surrogate")
    echo = EchoMessage(wamid="wamid.echo-1", phone_number_id=PHONE, wa_id="34600000001",
                       kind="text", text="a person answers")
    web = IngestStore(settings.database_url)
    try:
        rows = [("wamid.in-1", MESSAGE, event_json(msg)), ("wamid.echo-1", ECHO, event_json(echo))]
        first, again = await asyncio.gather(web.put_inbox(rows), web.put_inbox(rows[:1]))
        assert (first, again) == ({"wamid.in-1", "wamid.echo-1"}, set())  # one batch, once
        assert await web.put_inbox(rows) == set()  # a redelivery stores nothing
        await web.put_inbox([("wamid.dup", MESSAGE, event_json(inbound("wamid.dup")))])
        await web.drop_inbox(["wamid.dup"])
        await web.ping()
    finally:
        await web.aclose()

    async with session_scope(settings) as session:
        loaded = await inbox.load(session, "wamid.in-1")
        assert loaded == msg  # as it came, lone surrogate included
        assert await inbox.load(session, "wamid.echo-1") == echo
        assert await inbox.load(session, "wamid.dup") is None
        assert await inbox.discard(session, ["wamid.in-1"]) == 1
        assert await inbox.load(session, "wamid.in-1") is None
        await repo.purge_older_than(session, 14)
        assert await inbox.load(session, "wamid.echo-1") is not None  # recent: kept
        await repo.purge_older_than(session, 14, now=datetime.now(UTC) + timedelta(days=15))
        assert await inbox.load(session, "wamid.echo-1") is None


# -- one person, one conversation ---------------------------------------------------------------


async def test_a_user_moving_from_phone_number_to_bsuid_keeps_one_history(
    settings: Settings,
) -> None:
    async with session_scope(settings) as session:
        # Before BSUIDs: only a phone number.
        first = await repo.record_inbound(session, inbound("wamid.p1", "first", user_id=None))
        # Since April 2026: phone number and BSUID together.
        both = await repo.record_inbound(session, inbound("wamid.p2", "second", user_id=LONG_BSUID))
        # Then a username: the BSUID only.
        only = await repo.record_inbound(
            session, inbound("wamid.p3", "third", wa_id="", user_id=LONG_BSUID)
        )
    ids = {first.conversation.id, both.conversation.id, only.conversation.id}
    assert len(ids) == 1
    conversation_id = first.conversation.id or 0
    async with session_scope(settings) as session:
        names = await repo.user_identities(session, conversation_id)
        texts = [m.text for m in await repo.history(session, conversation_id, 10)]
    assert names == [(IdentityKind.PHONE, "15550001111"), (IdentityKind.USER_ID, LONG_BSUID)]
    assert texts == ["first", "second", "third"]
    assert only.conversation.wa_id == LONG_BSUID  # reached by BSUID now


async def test_two_conversations_of_one_person_are_merged(settings: Settings) -> None:
    async with session_scope(settings) as session:
        by_phone = await repo.record_inbound(session, inbound("wamid.m1", "by phone"))
        by_bsuid = await repo.record_inbound(
            session, inbound("wamid.m2", "by bsuid", wa_id="", user_id="US.merge")
        )
        assert by_phone.conversation.id != by_bsuid.conversation.id
        # A message naming both shows they are one person.
        both = await repo.record_inbound(session, inbound("wamid.m3", "both", user_id="US.merge"))
    assert both.conversation.id == by_phone.conversation.id  # the oldest survives
    async with session_scope(settings) as session:
        texts = [m.text for m in await repo.history(session, both.conversation.id or 0, 10)]
        gone = await session.get(repo.Conversation, by_bsuid.conversation.id)
    assert texts == ["by phone", "by bsuid", "both"] and gone is None


async def test_identity_changes_are_applied(settings: Settings) -> None:
    async with session_scope(settings) as session:
        before = await repo.record_inbound(session, inbound("wamid.c1", user_id="US.old"))
        change = inbound(
            "wamid.c2",
            None,
            user_id="US.old",
            identity_change=IdentityChange(
                type="user_changed_number",
                wa_id="15559998888",
                user_id="US.new",
                previous_wa_id="15550001111",
                previous_user_id="US.old",
            ),
        ).model_copy(update={"kind": "system"})
        after = await repo.record_inbound(session, change)
        names = await repo.user_identities(session, after.conversation.id or 0)
        assert after.conversation.id == before.conversation.id
        assert set(names) == {(IdentityKind.PHONE, "15559998888"), (IdentityKind.USER_ID, "US.new")}
        assert after.conversation.wa_id == "15559998888"
        # The old number is free: whoever writes from it now is someone else.
        stranger = await repo.record_inbound(session, inbound("wamid.c3"))
        assert stranger.conversation.id != before.conversation.id
        # The new BSUID alone finds the user.
        again = await repo.record_inbound(session, inbound("wamid.c4", wa_id="", user_id="US.new"))
        assert again.conversation.id == before.conversation.id
        # A BSUID-only change.
        bsuid_change = inbound(
            "wamid.c5",
            None,
            wa_id="",
            user_id="US.new",
            identity_change=IdentityChange(
                type="user_changed_user_id", user_id="US.newer", previous_user_id="US.new"
            ),
        ).model_copy(update={"kind": "system"})
        changed = await repo.record_inbound(session, bsuid_change)
        names = await repo.user_identities(session, changed.conversation.id or 0)
    assert set(names) == {(IdentityKind.PHONE, "15559998888"), (IdentityKind.USER_ID, "US.newer")}


async def test_a_status_teaches_the_recipients_bsuid(settings: Settings) -> None:
    async with session_scope(settings) as session:
        rec = await repo.record_inbound(session, inbound("wamid.s1"))
        reply, _ = await repo.record_outbound_pending(
            session, rec.conversation.id or 0, "wamid.s1", "hi"
        )
        await repo.mark_sent(session, reply, "wamid.s1.out")
        outcome = await repo.apply_status(
            session,
            StatusUpdate(
                wamid="wamid.s1.out",
                phone_number_id=PHONE,
                recipient_id="15550001111",
                recipient_user_id="US.learned",
                status="delivered",
            ),
        )
        assert outcome == repo.StatusOutcome.APPLIED
        later = await repo.record_inbound(
            session, inbound("wamid.s2", wa_id="", user_id="US.learned")
        )
    assert later.conversation.id == rec.conversation.id


async def test_migration_keeps_existing_conversations(
    settings: Settings, tmp_path: Path
) -> None:
    """A database at revision 0001 with conversations keyed by phone number and by BSUID is
    upgraded without losing a row, and each user keeps their history."""
    from bot.storage.db import run_migrations_async

    old = Settings(database_url=settings.database_url.replace("bot.db", "old.db"))
    if old.database_url == settings.database_url:  # PostgreSQL: a fresh schema of its own
        async with get_engine(settings).begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await dispose_engines()
    await run_migrations_async(old, "0001_initial")
    now = datetime.now(UTC)
    ids: list[int] = []
    async with get_engine(old).begin() as conn:
        for wa in ("15550001111", "US.legacy"):
            cid = (
                await conn.execute(
                    text(
                        "INSERT INTO conversations (phone_number_id, wa_id, created_at, "
                        "updated_at) VALUES (:p, :w, :t, :t) RETURNING id"
                    ),
                    {"p": PHONE, "w": wa, "t": now},
                )
            ).scalar_one()
            ids.append(cid)
            await conn.execute(
                text(
                    "INSERT INTO messages (conversation_id, direction, wamid, kind, text, "
                    "status, created_at, updated_at) VALUES (:c, 'inbound', :m, 'text', "
                    "'old text', 'received', :t, :t)"
                ),
                {"c": cid, "m": f"wamid.old{cid}", "t": now},
            )
    await dispose_engines()
    await run_migrations_async(old)
    async with session_scope(old) as session:
        phone = await repo.record_inbound(session, inbound("wamid.new1"))
        legacy = await repo.record_inbound(
            session, inbound("wamid.new2", wa_id="", user_id="US.legacy")
        )
        long_one = await repo.record_inbound(
            session, inbound("wamid.new3", wa_id="", user_id=LONG_BSUID)
        )
        assert [phone.conversation.id, legacy.conversation.id] == ids
        assert long_one.conversation.wa_id == LONG_BSUID  # fits: 256 characters
        history = await repo.history(session, ids[0], 10)
    assert [m.text for m in history] == ["old text", "hello"]
