"""The web tier's admin API in-process (real Redis, SQLite): authentication, listing, showing,
holding, releasing and replying to conversations, and what holds do to the stored state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import update

import bot.api.admin as admin_api
from bot.core.config import Settings
from bot.main import create_app
from bot.queue import CELERY_QUEUE
from bot.storage import holds
from bot.storage import repository as repo
from bot.storage.db import dispose_engines, run_migrations, session_scope
from bot.storage.models import Conversation, Message, MessageStatus, utcnow
from bot.whatsapp.events import InboundMessage

PN = "106540352242922"
APP_SECRET = "0123456789abcdef0123456789abcdef"
TOKEN = "admin-token-for-this-test-0123456789"
OLD_TOKEN = "the-previous-admin-token-9876543210"
DB_INDEX = 10


@pytest.fixture
def test_redis_url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + f"/{DB_INDEX}"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def make_settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "phone_number_id": PN,
        "meta_app_secret": SecretStr(APP_SECRET),
        "meta_verify_token": SecretStr("verify-token-1234"),
        "redis_url": redis_url,
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "admin_token": SecretStr(TOKEN),
        "admin_token_previous": SecretStr(OLD_TOKEN),
    }
    values.update(overrides)
    settings = Settings(**values)
    run_migrations(settings)
    return settings


@pytest.fixture
def settings(test_redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(test_redis_url, tmp_path)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, setup_logging=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bot",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as c:
            yield c
    await dispose_engines()


async def user_writes(settings: Settings, wamid: str, text: str = "hello",
                      wa_id: str = "34600000001", ago: timedelta | None = None) -> int:
    """Store an inbound message (as the worker would) and return its conversation's id."""
    async with session_scope(settings) as session:
        record = await repo.record_inbound(session, InboundMessage(
            wamid=wamid, phone_number_id=PN, wa_id=wa_id, contact_name="Ana", kind="text",
            text=text,
        ))
        if ago is not None:
            await session.execute(
                update(Message).where(Message.wamid == wamid)  # type: ignore[arg-type]
                .values(created_at=utcnow() - ago)
            )
        assert record.conversation.id is not None
        return record.conversation.id


async def test_the_api_is_not_there_without_a_token(test_redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(test_redis_url, tmp_path, admin_token=None,
                             admin_token_previous=None)
    app = create_app(settings, setup_logging=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bot") as c,
    ):
        for token in (None, TOKEN, ""):
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            response = await c.get("/admin/conversations", headers=headers)
            assert response.status_code == 404
        assert (await c.post("/admin/conversations/1/release")).status_code == 404


async def test_a_wrong_or_missing_token_is_refused(client: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        response = await client.get("/admin/conversations", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in response.text
    # During a rotation the previous token works too.
    ok = await client.get("/admin/conversations",
                          headers={"Authorization": f"Bearer {OLD_TOKEN}"})
    assert ok.status_code == 200


async def test_list_show_hold_release(client: httpx.AsyncClient, settings: Settings) -> None:
    first = await user_writes(settings, "wamid.A1", "hola", wa_id="34600000001")
    second = await user_writes(settings, "wamid.B1", "hi", wa_id="34600000002")
    listing = (await client.get("/admin/conversations")).json()["conversations"]
    assert {c["id"] for c in listing} == {first, second}
    assert all(c["state"] == "bot" and c["messages"] == 1 for c in listing)
    assert (await client.get("/admin/conversations?state=held")).json() == {"conversations": []}

    held = await client.post(f"/admin/conversations/{first}/hold",
                             json={"seconds": 600, "reason": "Lucía is on it"})
    assert held.status_code == 200
    body = held.json()
    assert body["state"] == "held" and body["heldReason"] == "admin"
    assert body["heldBy"] == "Lucía is on it"
    assert [c["id"] for c in (await client.get("/admin/conversations?state=held")).json()[
        "conversations"]] == [first]
    assert [c["id"] for c in (await client.get("/admin/conversations?state=bot")).json()[
        "conversations"]] == [second]

    shown = (await client.get(f"/admin/conversations/{first}")).json()
    assert shown["state"] == "held" and shown["user"] == "34600000001"
    assert [m["text"] for m in shown["messages"]] == ["hola"]
    assert shown["identities"] == [{"kind": "phone", "value": "34600000001"}]
    assert shown["windowOpenUntil"] is not None

    # A hold in force is set to what the person asks (shorter too), without a body: the default.
    again = (await client.post(f"/admin/conversations/{first}/hold", json={"seconds": 60}))
    assert again.json()["state"] == "held"
    async with session_scope(settings) as session:
        conv = await session.get(Conversation, first)
        assert conv is not None and conv.held_until is not None
        assert conv.held_until - utcnow() < timedelta(seconds=61)
    assert (await client.post(f"/admin/conversations/{second}/hold")).json()["state"] == "held"

    released = (await client.post(f"/admin/conversations/{first}/release")).json()
    assert released["state"] == "bot" and released["wasHeld"] is True
    assert (await client.post(f"/admin/conversations/{first}/release")).json()["wasHeld"] is False


async def test_bad_requests_get_clear_errors(client: httpx.AsyncClient, settings: Settings) -> None:
    assert (await client.get("/admin/conversations/999")).status_code == 404
    assert "no conversation 999" in (await client.post("/admin/conversations/999/hold")).text
    assert (await client.get("/admin/conversations?state=nope")).status_code == 422
    conv = await user_writes(settings, "wamid.C1")
    assert (await client.post(f"/admin/conversations/{conv}/hold",
                              json={"seconds": 0})).status_code == 422
    assert (await client.post(f"/admin/conversations/{conv}/hold",
                              json={"seconds": 10**9})).status_code == 422
    assert (await client.post(f"/admin/conversations/{conv}/reply",
                              json={"text": "   "})).status_code == 422
    assert (await client.post(f"/admin/conversations/{conv}/reply",
                              json={"text": "x" * 5000})).status_code == 422
    # Nothing of that held or stored anything.
    shown = (await client.get(f"/admin/conversations/{conv}")).json()
    assert shown["state"] == "bot" and len(shown["messages"]) == 1


async def test_show_stops_at_retention(client: httpx.AsyncClient, settings: Settings) -> None:
    days = settings.retention_days
    conv = await user_writes(settings, "wamid.RT1", "past retention", ago=timedelta(days=days + 1))
    await user_writes(settings, "wamid.RT2", "within retention", ago=timedelta(days=days - 1))
    await user_writes(settings, "wamid.RT3", "today")
    # The purge has not run: the old message is still stored, and shown to nobody.
    async with session_scope(settings) as session:
        assert await repo.get_message(session, "wamid.RT1") is not None
    shown = (await client.get(f"/admin/conversations/{conv}")).json()
    assert [m["text"] for m in shown["messages"]] == ["within retention", "today"]


async def test_reply_outside_the_24_hour_window_is_refused(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    conv = await user_writes(settings, "wamid.D1", ago=timedelta(hours=25))
    response = await client.post(f"/admin/conversations/{conv}/reply", json={"text": "Hi!"})
    assert response.status_code == 409
    assert "24 hours" in response.json()["detail"] and "template" in response.json()["detail"]
    shown = (await client.get(f"/admin/conversations/{conv}")).json()
    assert len(shown["messages"]) == 1 and shown["state"] == "bot"


async def test_reply_is_stored_held_and_queued_without_its_text(
    client: httpx.AsyncClient, settings: Settings, test_redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_api, "REPLY_WAIT_SECONDS", 0.3)
    conv = await user_writes(settings, "wamid.E1", "¿tenéis talla M?")
    response = await client.post(f"/admin/conversations/{conv}/reply",
                                 json={"text": "Sí, te la guardo hasta mañana."})
    # No worker runs here: the reply waits in the queue, stored as pending.
    assert response.status_code == 202
    message = response.json()["message"]
    assert message["source"] == "staff" and message["status"] == "pending"
    shown = (await client.get(f"/admin/conversations/{conv}")).json()
    assert shown["state"] == "held" and shown["heldReason"] == "admin"
    assert [m["text"] for m in shown["messages"]][-1] == "Sí, te la guardo hasta mañana."
    raw = sync_redis.Redis.from_url(test_redis_url)
    queued = [json.loads(m) for m in raw.lrange(CELERY_QUEUE, 0, -1)]
    raw.close()
    assert [m["headers"]["task"] for m in queued] == [admin_api.SEND_STAFF_REPLY_TASK]
    assert "guardo" not in json.dumps(queued)  # only the message id travels through Redis


async def test_reply_reports_what_the_worker_did(
    client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await user_writes(settings, "wamid.F1")
    sent_ids: list[int] = []

    async def fake_send(name: str, args: list[Any], **_: Any) -> str:
        # Stand in for the worker: the first reply is sent, the second refused by Meta.
        message_id = args[0]["message"]
        sent_ids.append(message_id)
        async with session_scope(settings) as session:
            message = await session.get(Message, message_id)
            assert message is not None
            if len(sent_ids) == 1:
                await repo.mark_sent(session, message, "wamid.SENT1")
            else:
                await repo.mark_failed(session, message, 131026, "Message undeliverable")
        return "task-id"

    app_publisher = client._transport.app.state.publisher  # type: ignore[attr-defined]
    monkeypatch.setattr(app_publisher, "send_task", fake_send)
    ok = await client.post(f"/admin/conversations/{conv}/reply", json={"text": "Hi Ana"})
    assert ok.status_code == 200 and ok.json()["message"]["wamid"] == "wamid.SENT1"
    refused = await client.post(f"/admin/conversations/{conv}/reply", json={"text": "Hi?"})
    assert refused.status_code == 502 and "131026" in refused.json()["detail"]


async def test_reply_that_cannot_be_queued_is_recorded_failed(
    client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    conv = await user_writes(settings, "wamid.G1")

    async def broken(*_: Any, **__: Any) -> str:
        raise ConnectionError("broker down")

    app_publisher = client._transport.app.state.publisher  # type: ignore[attr-defined]
    monkeypatch.setattr(app_publisher, "send_task", broken)
    response = await client.post(f"/admin/conversations/{conv}/reply", json={"text": "Hi"})
    assert response.status_code == 503
    shown = (await client.get(f"/admin/conversations/{conv}")).json()
    assert shown["messages"][-1]["status"] == MessageStatus.FAILED.value


async def test_metrics_report_held_conversations(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    conv = await user_writes(settings, "wamid.H1")
    await user_writes(settings, "wamid.H2", wa_id="34600000009")
    before = (await client.get("/metrics")).text
    assert sample(before, "released_conversations_held") == 0
    held = await client.post(f"/admin/conversations/{conv}/hold", json={"seconds": 60})
    assert held.status_code == 200
    text = (await client.get("/metrics")).text
    assert sample(text, "released_conversations_held") == 1
    # The counter's series exists from the start (every reason is pre-created): its value
    # tells whether this hold was counted.
    admin = {"reason": "admin"}
    assert sample(text, "released_handovers_total", admin) == (
        sample(before, "released_handovers_total", admin) + 1
    )
    assert sample(text, "released_handovers_total", {"reason": "staff_echo"}) == (
        sample(before, "released_handovers_total", {"reason": "staff_echo"})
    )


def sample(exposition: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of the sample ``name{labels}`` in a Prometheus text exposition."""
    found = [
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name and s.labels == (labels or {})
    ]
    assert len(found) == 1, (name, labels, found)
    return float(found[0])


async def test_holds_only_lengthen_and_stale_events_hold_nothing(settings: Settings) -> None:
    conv = await user_writes(settings, "wamid.I1")
    now = utcnow()
    async with session_scope(settings) as session:
        assert await holds.hold(session, conv, reason="staff_echo",
                                until=now + timedelta(hours=2)) is True
        assert await holds.hold(session, conv, reason="staff_echo",
                                until=now + timedelta(hours=1)) is False
        assert await holds.hold(session, conv, reason="staff_echo",
                                until=now - timedelta(seconds=1)) is False
    async with session_scope(settings) as session:
        c = await session.get(Conversation, conv)
        assert c is not None and c.held_until is not None
        assert c.held_until > now + timedelta(minutes=119)  # not shortened
        assert await holds.note_held_message(session, conv) is True
        assert await holds.release(session, conv) is True
        assert await holds.note_held_message(session, conv) is False
    async with session_scope(settings) as session:
        # An echo from before the release holds nothing; a later one does.
        assert await holds.hold(session, conv, reason="staff_echo",
                                until=utcnow() + timedelta(hours=1),
                                event_at=now) is False
        assert await holds.hold(session, conv, reason="staff_echo",
                                until=utcnow() + timedelta(hours=1),
                                event_at=utcnow() + timedelta(seconds=1)) is True
        assert await holds.count_held(session) == 1
        assert await holds.count_fallback(session, conv, True) == 1
        assert await holds.count_fallback(session, conv, True) == 2
        assert await holds.count_fallback(session, conv, False) == 0
