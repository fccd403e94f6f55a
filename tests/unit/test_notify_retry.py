"""``bot.tasks.notify_handover`` while the receiver is down: the countdowns it asks Celery for.

The real task and the real ``bot.service.notify_handover`` run against a receiver on 127.0.0.1
(SQLite for the conversation, no broker): each run is one delivery of the task with its retry
count, as a worker gets it, and Celery's own ``Task.retry`` publishes the next one through
``apply_async``, captured here with the ``countdown`` it carries.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import Retry
from pydantic import SecretStr
from sqlalchemy import update
from sqlmodel import col

import bot.tasks as tasks
from bot.core.config import Settings
from bot.storage import repository as repo
from bot.storage.db import run_migrations, session_scope
from bot.storage.models import Message
from bot.whatsapp.events import InboundMessage

PHONE = "106540352242922"
SECRET = "a-notification-secret-for-tests"
MAX_RETRIES = 5


class Receiver:
    """Answers each POST with the next scripted ``(status, headers)``, then 200."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), 1_000_000)
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


class NoRedis:
    """What ``notify_handover`` asks of Redis: nothing was delivered before."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    async def exists(self, key: str) -> int:
        return int(key in self.keys)

    async def set(self, key: str, value: str, ex: int | None = None) -> None:
        self.keys.add(key)


def make_settings(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    s = Settings(
        phone_number_id=PHONE,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        handover_enabled=True,
        handover_notify_url=url,
        handover_notify_secret=SecretStr(SECRET),
        max_task_retries=MAX_RETRIES,
    )
    run_migrations(s)
    runtime = SimpleNamespace(settings=s, redis=NoRedis())

    async def _runtime(_: Settings) -> Any:
        return runtime

    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    monkeypatch.setattr(tasks, "_runtime", _runtime)
    return s


def handover_payload(settings: Settings) -> dict[str, Any]:
    """A conversation handed over: one message past retention, one within."""

    async def store() -> int:
        async with session_scope(settings) as session:
            for wamid, text in (("wamid.OLD", "long ago"), ("wamid.NOW", "a person, please")):
                record = await repo.record_inbound(
                    session,
                    InboundMessage(
                        wamid=wamid,
                        phone_number_id=PHONE,
                        wa_id="34600000001",
                        kind="text",
                        text=text,
                    ),
                )
            old = datetime.now(UTC) - timedelta(days=settings.retention_days + 1)
            await session.execute(
                update(Message).where(col(Message.wamid) == "wamid.OLD").values(created_at=old)
            )
            return record.conversation.id or 0

    conversation = tasks.run_async(store())
    until = datetime.now(UTC) + timedelta(hours=24)
    return {
        "id": "d-1",
        "conversation": conversation,
        "reason": "user_request",
        "heldUntil": until.isoformat(),
    }


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What Celery's ``retry`` publishes: the options of each ``apply_async``."""
    sent: list[dict[str, Any]] = []

    def apply_async(*args: Any, **options: Any) -> None:
        sent.append(options)

    monkeypatch.setattr(tasks.notify_handover, "apply_async", apply_async)
    yield sent
    tasks.shutdown()


def deliver(payload: dict[str, Any], retries: int) -> str | None:
    """Run the task as a worker runs its ``retries``-th retry; ``None`` when it asked for one."""
    task = tasks.notify_handover
    task.push_request(
        args=[payload],
        kwargs={},
        id="notify-1",
        retries=retries,
        called_directly=False,
        is_eager=False,
        delivery_info={},
    )
    try:
        return str(task.run(payload))
    except Retry:
        return None
    finally:
        task.pop_request()


def test_the_countdowns_grow_honour_retry_after_and_stop_at_the_last_try(
    tmp_path: Path,
    receiver: Receiver,
    published: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path, receiver.url, monkeypatch)
    payload = handover_payload(settings)
    receiver.script = [(503, {})] * 4 + [(429, {"Retry-After": "30"}), (502, {})]

    for retries in range(MAX_RETRIES):
        assert deliver(payload, retries) is None
    assert [p["retries"] for p in published] == [1, 2, 3, 4, 5]
    countdowns = [p["countdown"] for p in published]
    # Exponential with full jitter: retry n waits [0.5, 1] x 2 x 2**n seconds ...
    for n, countdown in enumerate(countdowns[:4]):
        assert 2.0 * 2**n / 2 <= countdown <= 2.0 * 2**n, (n, countdowns)
    assert countdowns[0] < countdowns[2] < countdowns[3]
    assert countdowns[3] > 2 * countdowns[0]
    # ... unless the receiver said when: a 429's Retry-After, plus at most a second of jitter.
    assert 30 <= countdowns[4] <= 31

    # The last try (retries == MAX_TASK_RETRIES) asks for no other.
    assert deliver(payload, MAX_RETRIES) == "failed"
    assert len(published) == MAX_RETRIES
    assert len(receiver.bodies) == MAX_RETRIES + 1 and not receiver.script
    # Every try carried the same notification, without what is past retention.
    assert {b["id"] for b in receiver.bodies} == {"d-1"}
    assert [m["text"] for m in receiver.bodies[0]["messages"]] == ["a person, please"]


def test_an_unreachable_receiver_is_retried_later_and_later(
    tmp_path: Path, published: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path, f"http://127.0.0.1:{port}/hooks", monkeypatch)
    payload = handover_payload(settings)
    for retries in range(4):
        assert deliver(payload, retries) is None
    countdowns = [p["countdown"] for p in published]
    for n, countdown in enumerate(countdowns):
        assert 2.0 * 2**n / 2 <= countdown <= 2.0 * 2**n, (n, countdowns)
    assert countdowns[0] < countdowns[2] < countdowns[3]


def test_a_retry_after_beyond_the_visibility_timeout_is_capped(
    tmp_path: Path,
    receiver: Receiver,
    published: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path, receiver.url, monkeypatch)
    capped = settings.model_copy(update={"celery_visibility_timeout": 60})
    monkeypatch.setattr(tasks, "get_settings", lambda: capped)
    payload = handover_payload(settings)
    receiver.script = [(429, {"Retry-After": "3600"})]
    assert deliver(payload, 0) is None
    # A countdown task waits unacknowledged in Redis: it must come back before Redis would
    # hand it out again (half the visibility timeout).
    assert published[0]["countdown"] == 30
