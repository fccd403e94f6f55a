"""The web tier end to end in-process: webhook handshake and deliveries, de-dup, queueing,
probes and metrics, against a real Redis server (the ``redis_url`` session fixture).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
import structlog
from celery import Celery
from celery.contrib.testing.worker import start_worker
from fastapi import FastAPI
from kombu import Connection  # type: ignore[attr-defined]
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import text

from bot.api.deps import get_database_check
from bot.core.config import MissingSecretsError, Settings
from bot.core.logging import configure_logging
from bot.dedup import DEDUP_TTL_SECONDS, dedup_key, finished, first_seen, mark_done, release
from bot.main import create_app
from bot.queue import (
    CELERY_QUEUE,
    PROCESS_ECHO_TASK,
    PROCESS_MESSAGE_TASK,
    RECORD_STATUS_TASK,
    TaskPublisher,
    build_task_message,
    enqueue_message,
    enqueue_message_once,
    enqueue_status,
)
from bot.storage import inbox
from bot.storage.db import run_migrations, session_scope
from bot.whatsapp.events import EchoMessage, InboundMessage, StatusUpdate
from bot.whatsapp.signature import sign
from bot.whatsapp.simulate import signed_delivery, text_message_payload
from tests.servers import free_port

PAYLOADS = Path(__file__).parent / "payloads"
PN = "106540352242922"
APP_SECRET = "0123456789abcdef0123456789abcdef"
VERIFY_TOKEN = "test-verify-token-4567"
ACCESS_TOKEN = "EAAtest-access-token-89"
DB_INDEX = 11


@pytest.fixture
def test_redis_url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + f"/{DB_INDEX}"
    client = sync_redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def raw(test_redis_url: str) -> Iterator[sync_redis.Redis]:
    client = sync_redis.Redis.from_url(test_redis_url)
    yield client
    client.close()


def make_settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "phone_number_id": PN,
        "meta_app_secret": SecretStr(APP_SECRET),
        "meta_verify_token": SecretStr(VERIFY_TOKEN),
        "meta_access_token": SecretStr(ACCESS_TOKEN),
        "redis_url": redis_url,
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(test_redis_url: str, tmp_path: Path) -> Settings:
    settings = make_settings(test_redis_url, tmp_path)
    run_migrations(settings)  # quarantined elements are stored in the database
    return settings


async def quarantined_rows(settings: Settings) -> list[dict[str, Any]]:
    """The ``quarantined_events`` rows, oldest first."""
    async with session_scope(settings) as session:
        result = await session.execute(
            text("SELECT element, cause, path, wamid, reason, raw FROM quarantined_events"
                 " ORDER BY id")
        )
        return [dict(r._mapping) for r in result]


async def open_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in open_client(create_app(settings, setup_logging=False)):
        yield c


def sample(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


async def post(
    client: httpx.AsyncClient, body: bytes, *, secret: str | None = APP_SECRET
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    return await client.post("/webhook", content=body, headers=headers)


def queued(raw: sync_redis.Redis) -> list[tuple[str, Any]]:
    """(task name, first positional arg) of every queued task, oldest first."""
    out = []
    for item in reversed(raw.lrange(CELERY_QUEUE, 0, -1)):
        envelope = json.loads(item)
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        assert kwargs == {}
        assert len(args) == 1
        out.append((envelope["headers"]["task"], args[0]))
    return out


async def queued_events(raw: sync_redis.Redis, settings: Settings) -> list[tuple[str, Any]]:
    """(task name, event) of every queued task, oldest first. A message's or an echo's task
    carries only the wamid of its inbox row (no text crosses Redis): the event is read there."""
    out = []
    for task, arg in queued(raw):
        if task in (PROCESS_MESSAGE_TASK, PROCESS_ECHO_TASK):
            assert arg == {"inbox": arg["inbox"]}, arg
            async with session_scope(settings) as session:
                event = await inbox.load(session, arg["inbox"])
            assert event is not None, arg
            arg = event.model_dump(mode="json")
        out.append((task, arg))
    return out


# ---------------------------------------------------------------------------------------------
# Verification handshake


async def test_verify_handshake_ok(client: httpx.AsyncClient) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158"}
    response = await client.get("/webhook", params=params)
    assert response.status_code == 200
    assert response.text == "1158"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN},
        {},
    ],
)
async def test_verify_handshake_refused(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    response = await client.get("/webhook", params=params)
    assert response.status_code == 403
    assert "1" not in response.text


async def test_previous_verify_token_is_accepted_during_rotation(
    test_redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(test_redis_url, tmp_path, meta_verify_token=SecretStr("new-token-1"),
                             meta_verify_token_previous=SecretStr(VERIFY_TOKEN))
    async for client in open_client(create_app(settings, setup_logging=False)):
        for token in ("new-token-1", VERIFY_TOKEN):
            params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "7"}
            response = await client.get("/webhook", params=params)
            assert (response.status_code, response.text) == (200, "7")
        params = {"hub.mode": "subscribe", "hub.verify_token": "older", "hub.challenge": "7"}
        assert (await client.get("/webhook", params=params)).status_code == 403


# ---------------------------------------------------------------------------------------------
# Signatures


@pytest.mark.parametrize("secret", [None, "not-the-app-secret"])
async def test_bad_or_missing_signature_is_401_and_nothing_happens(
    client: httpx.AsyncClient, raw: sync_redis.Redis, secret: str | None
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = await post(client, sample("text"), secret=secret)
    assert response.status_code == 401
    assert raw.llen(CELERY_QUEUE) == 0
    assert raw.dbsize() == 0  # no de-dup claim either
    assert [e["event"] for e in logs] == ["webhook.bad_signature"]
    assert APP_SECRET not in repr(logs)


async def test_signature_over_other_bytes_is_401(
    client: httpx.AsyncClient, raw: sync_redis.Redis
) -> None:
    body = sample("text")
    response = await client.post(
        "/webhook",
        content=body.replace(b"red?", b"blue"),
        headers={"X-Hub-Signature-256": sign(body, APP_SECRET)},
    )
    assert response.status_code == 401
    assert raw.llen(CELERY_QUEUE) == 0


# ---------------------------------------------------------------------------------------------
# Malformed bodies and elements


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{this is not json", "not valid JSON"),
        (b'"just a string"', "not a JSON object"),
        (b"", "not valid JSON"),
    ],
)
async def test_a_signed_body_that_is_no_json_object_is_400_with_reason(
    client: httpx.AsyncClient, raw: sync_redis.Redis, body: bytes, fragment: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = await post(client, body)
    assert response.status_code == 400
    assert fragment in response.json()["detail"]
    assert raw.llen(CELERY_QUEUE) == 0
    assert logs[-1]["event"] == "webhook.malformed"
    assert fragment in logs[-1]["reason"]


@pytest.mark.parametrize(
    ("body", "element", "fragment"),
    [
        (b'{"entry": []}', "delivery", "object"),
        (b'{"object": "whatsapp_business_account", "entry": [{"changes": "x"}]}', "entry",
         "changes"),
    ],
)
async def test_a_signed_but_malformed_envelope_is_200_and_quarantined(
    client: httpx.AsyncClient, settings: Settings, raw: sync_redis.Redis,
    body: bytes, element: str, fragment: str,
) -> None:
    response = await post(client, body)
    assert response.status_code == 200  # Meta would retry a 4xx for 7 days
    assert raw.llen(CELERY_QUEUE) == 0
    [row] = await quarantined_rows(settings)
    assert row["element"] == element
    assert fragment in row["reason"]


async def test_one_odd_element_never_refuses_the_others(
    client: httpx.AsyncClient, settings: Settings, raw: sync_redis.Redis
) -> None:
    """The issue's cases: a wamid too long, an interactive reply without ``type`` (understood),
    a word where Meta sends a number, next to good messages and a status."""
    data = json.loads(sample("text"))
    value = data["entry"][0]["changes"][0]["value"]
    good = value["messages"][0]
    value["messages"] = [
        dict(good, id="w" * 300),
        {"from": "16505551234", "id": "wamid.notype", "type": "interactive",
         "interactive": {"button_reply": {"id": "yes", "title": "Yes please"}}},
        {"from": "16505551234", "id": "wamid.badloc", "type": "location",
         "location": {"latitude": "north-ish", "longitude": 1}},
        dict(good, id="wamid.good"),
    ]
    value["statuses"] = json.loads(sample("status_sent"))["entry"][0]["changes"][0]["value"][
        "statuses"]
    body = json.dumps(data).encode()
    with structlog.testing.capture_logs() as logs:
        response = await post(client, body)
    assert response.status_code == 200
    tasks = await queued_events(raw, settings)
    assert [(t, a["wamid"]) for t, a in tasks] == [
        (PROCESS_MESSAGE_TASK, "wamid.notype"),
        (PROCESS_MESSAGE_TASK, "wamid.good"),
        (RECORD_STATUS_TASK, "wamid.sent1"),
    ]
    assert tasks[0][1]["text"] == "Yes please"
    rows = await quarantined_rows(settings)
    assert [(r["element"], r["cause"], r["path"]) for r in rows] == [
        ("message", "invalid", "entry[0].changes[0].value.messages[0]"),
        ("message", "invalid", "entry[0].changes[0].value.messages[2]"),
    ]
    assert "wamid" in rows[0]["reason"] and "www" not in rows[0]["reason"]
    assert "location.latitude" in rows[1]["reason"] and "north-ish" not in rows[1]["reason"]
    assert json.loads(rows[1]["raw"])["location"]["latitude"] == "north-ish"
    [line] = [e for e in logs if e["event"] == "webhook.quarantined"]
    assert (line["count"], line["new"], line["queued"]) == (2, 2, 3)
    assert "north-ish" not in repr(logs)

    # Meta redelivers (say the 200 was lost): nothing is queued or stored twice.
    assert (await post(client, body)).status_code == 200
    assert len(queued(raw)) == 4  # the status again (idempotent), no message twice
    assert len(await quarantined_rows(settings)) == 2
    metrics = (await client.get("/metrics")).text
    assert 'released_webhook_quarantined_total{cause="invalid",element="message"}' in metrics


async def test_a_payload_cannot_enqueue_thousands_of_tasks(
    test_redis_url: str, tmp_path: Path, raw: sync_redis.Redis
) -> None:
    settings = make_settings(test_redis_url, tmp_path, webhook_max_events=50)
    run_migrations(settings)
    data = json.loads(sample("text"))
    value = data["entry"][0]["changes"][0]["value"]
    value["messages"] = [dict(value["messages"][0], id=f"wamid.flood{i}") for i in range(5000)]
    async for client in open_client(create_app(settings, setup_logging=False)):
        response = await post(client, json.dumps(data).encode())
    assert response.status_code == 200
    assert len(queued(raw)) == 50
    rows = await quarantined_rows(settings)
    assert len(rows) == 4950
    assert {r["cause"] for r in rows} == {"over_cap"}
    assert rows[0]["wamid"] == "wamid.flood50"


async def test_database_failure_is_503_and_the_redelivery_completes(
    test_redis_url: str, tmp_path: Path, raw: sync_redis.Redis
) -> None:
    settings = make_settings(test_redis_url, tmp_path)  # no migrations: no table yet
    data = json.loads(sample("text"))
    value = data["entry"][0]["changes"][0]["value"]
    value["messages"].append({"type": "text"})
    body = json.dumps(data).encode()
    async for client in open_client(create_app(settings, setup_logging=False)):
        # A message's text goes to the database before its task is queued: nothing is queued
        # (and no wamid claimed) while the database cannot take it; Meta redelivers.
        assert (await post(client, body)).status_code == 503
        assert len(queued(raw)) == 0
        run_migrations(settings)
        assert (await post(client, body)).status_code == 200
        assert (await post(client, body)).status_code == 200
    assert len(queued(raw)) == 1  # Meta's redeliveries queued nothing twice
    assert len(await quarantined_rows(settings)) == 1


async def test_calls_and_template_updates_are_not_statuses(
    client: httpx.AsyncClient, raw: sync_redis.Redis
) -> None:
    response = await post(client, sample("calls"))
    assert response.status_code == 200
    data = json.loads(sample("status_sent"))
    data["entry"][0]["changes"][0]["field"] = "message_template_status_update"
    assert (await post(client, json.dumps(data).encode())).status_code == 200
    assert raw.llen(CELERY_QUEUE) == 0
    metrics = (await client.get("/metrics")).text
    assert 'released_webhook_changes_ignored_total{field="calls"} 1.0' in metrics


async def test_message_echoes_reach_the_worker_as_echoes(
    client: httpx.AsyncClient, settings: Settings, raw: sync_redis.Redis
) -> None:
    body = sample("echo")
    assert (await post(client, body)).status_code == 200
    assert (await post(client, body)).status_code == 200  # redelivered: de-duplicated
    [(task, arg)] = await queued_events(raw, settings)
    assert task == PROCESS_ECHO_TASK
    echo = EchoMessage.model_validate(arg)
    assert (echo.wa_id, echo.kind) == ("16505551234", "text")


# ---------------------------------------------------------------------------------------------
# Body size and memory


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    body = b'{"object": "x", "pad": "' + b"a" * (3 * 1024 * 1024 + 10) + b'"}'
    response = await post(client, body)
    assert response.status_code == 413
    assert response.headers["connection"] == "close"


async def test_meta_sized_body_is_accepted(
    client: httpx.AsyncClient, raw: sync_redis.Redis
) -> None:
    """Meta sends up to 3 MB; a 2.9 MB delivery is answered 200 and its message queued."""
    data = json.loads(sample("text"))
    data["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "x" * 2_900_000
    response = await post(client, json.dumps(data).encode())
    assert response.status_code == 200
    assert len(queued(raw)) == 1


async def test_chunked_oversized_body_is_refused_while_it_streams(settings: Settings) -> None:
    """No Content-Length: the body is refused within one chunk of the cap, and the rest of
    what the sender has is never read (a 200 MiB chunked POST was read whole)."""
    app = create_app(settings, setup_logging=False)
    chunk = b"a" * 65536
    total_chunks = 200 * 16  # 200 MiB
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < total_chunks}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/webhook", "raw_path": b"/webhook",
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "headers": [(b"content-type", b"application/json"),
                    (b"x-hub-signature-256", b"sha256=00"),
                    (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    from bot.main import WebhookFastPath
    async with app.router.lifespan_context(app):
        await WebhookFastPath(app)(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    assert pulled * len(chunk) <= settings.webhook_max_body_bytes + len(chunk)
    from bot.api.webhook import BUDGET
    assert BUDGET.held == 0


async def test_bodies_beyond_the_process_budget_get_503(
    test_redis_url: str, tmp_path: Path, raw: sync_redis.Redis
) -> None:
    from bot.api.webhook import BUDGET
    settings = make_settings(test_redis_url, tmp_path, webhook_body_budget_bytes=3_000_000)
    run_migrations(settings)
    async for client in open_client(create_app(settings, setup_logging=False)):
        BUDGET.held = 2_999_900  # other deliveries being read at this moment
        try:
            busy = await post(client, sample("text"))
        finally:
            BUDGET.held = 0
        assert busy.status_code == 503
        assert raw.llen(CELERY_QUEUE) == 0
        assert (await post(client, sample("text"))).status_code == 200
    assert BUDGET.held == 0


# ---------------------------------------------------------------------------------------------
# Deliveries


async def test_text_message_is_queued_once(
    client: httpx.AsyncClient, settings: Settings, raw: sync_redis.Redis
) -> None:
    body = sample("text")
    first = await post(client, body)
    assert first.status_code == 200
    assert first.json() == {"status": "ok"}
    [(task, arg)] = await queued_events(raw, settings)
    assert task == PROCESS_MESSAGE_TASK
    msg = InboundMessage.model_validate(arg)
    assert msg.kind == "text"
    assert msg.text == "Does the coffee maker come in red?"
    assert msg.phone_number_id == PN
    ttl = raw.ttl(dedup_key(PN, msg.wamid))
    assert DEDUP_TTL_SECONDS - 60 < ttl <= DEDUP_TTL_SECONDS

    with structlog.testing.capture_logs() as logs:
        again = await post(client, body)
    assert again.status_code == 200
    assert len(queued(raw)) == 1
    assert "webhook.duplicate" in [e["event"] for e in logs]


async def inbox_row(settings: Settings, wamid: str) -> InboundMessage | EchoMessage | None:
    async with session_scope(settings) as session:
        return await inbox.load(session, wamid)


async def test_a_copy_of_a_message_still_queued_keeps_its_text_for_the_worker(
    client: httpx.AsyncClient, settings: Settings, raw: sync_redis.Redis
) -> None:
    """Meta's copies of one delivery race: copy B claims the wamid while copy A stores the
    inbox row. A sees a claim for a row it stored itself; the message is still queued, so A
    must leave the row: deleting it lost the message (the worker found nothing to answer)."""
    body = sample("text")
    wamid = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    raw.set(dedup_key(PN, wamid), "1", ex=60)  # claimed and queued by the other copy
    assert (await post(client, body)).status_code == 200
    assert raw.llen(CELERY_QUEUE) == 0  # not queued twice
    row = await inbox_row(settings, wamid)
    assert row is not None and row.text == "Does the coffee maker come in red?"


async def test_a_redelivery_after_the_answer_does_not_keep_the_text(
    client: httpx.AsyncClient, settings: Settings, raw: sync_redis.Redis
) -> None:
    """Once the worker has answered, it deletes the row and marks the claim done; a
    redelivery stores the row again and the web tier deletes it again at once."""
    body = sample("text")
    wamid = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert (await post(client, body)).status_code == 200
    assert await inbox_row(settings, wamid) is not None
    async with session_scope(settings) as session:  # what the worker does when it is done
        await inbox.discard(session, [wamid])
    redis = Redis.from_url(settings.redis_url)
    try:
        await mark_done(redis, PN, [wamid])
    finally:
        await redis.aclose()
    assert raw.ttl(dedup_key(PN, wamid)) > DEDUP_TTL_SECONDS - 60  # the claim keeps its expiry

    assert (await post(client, body)).status_code == 200
    assert await inbox_row(settings, wamid) is None
    assert raw.llen(CELERY_QUEUE) == 1  # answered once


async def test_marking_done_creates_no_claim(raw: sync_redis.Redis, test_redis_url: str) -> None:
    redis = Redis.from_url(test_redis_url)
    try:
        await mark_done(redis, PN, ["wamid.never-claimed"])
        assert await finished(redis, [(PN, "wamid.never-claimed")]) == set()
    finally:
        await redis.aclose()
    assert raw.exists(dedup_key(PN, "wamid.never-claimed")) == 0


async def test_statuses_are_queued(client: httpx.AsyncClient, raw: sync_redis.Redis) -> None:
    for name in ("status_sent", "status_failed"):
        assert (await post(client, sample(name))).status_code == 200
    tasks = queued(raw)
    assert [t for t, _ in tasks] == [RECORD_STATUS_TASK, RECORD_STATUS_TASK]
    failed = StatusUpdate.model_validate(tasks[1][1])
    assert (failed.status, failed.error_code) == ("failed", 131047)


async def test_foreign_phone_number_id_is_acknowledged_and_ignored(
    client: httpx.AsyncClient, raw: sync_redis.Redis
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = await post(client, sample("foreign_phone"))
    assert response.status_code == 200
    assert raw.llen(CELERY_QUEUE) == 0
    assert raw.dbsize() == 0
    [line] = [e for e in logs if e["event"] == "webhook.foreign_phone_number_id"]
    assert line["phone_number_ids"] == ["999999999999999"]


async def test_non_whatsapp_object_is_acknowledged(
    client: httpx.AsyncClient, raw: sync_redis.Redis
) -> None:
    response = await post(client, b'{"object": "page", "entry": []}')
    assert response.status_code == 200
    assert raw.llen(CELERY_QUEUE) == 0


async def test_every_sample_is_accepted(
    client: httpx.AsyncClient, settings: Settings, raw: sync_redis.Redis
) -> None:
    expected: dict[str, str] = {}
    for path in sorted(PAYLOADS.glob("*.json")):
        response = await post(client, path.read_bytes())
        assert response.status_code == 200, path.name
        data = json.loads(path.read_bytes())
        value = data["entry"][0]["changes"][0]["value"]
        if value["metadata"]["phone_number_id"] != PN:
            continue
        for m in value.get("messages", []):
            expected[m["id"]] = PROCESS_MESSAGE_TASK
        for s in value.get("statuses", []):
            expected[s["id"] + s["status"]] = RECORD_STATUS_TASK
        for e in value.get("message_echoes", []):
            expected[e["id"]] = PROCESS_ECHO_TASK
    events = await queued_events(raw, settings)
    got = {
        (arg["wamid"] + arg["status"] if task == RECORD_STATUS_TASK else arg["wamid"]): task
        for task, arg in events
    }
    assert got == expected
    kinds = {
        InboundMessage.model_validate(arg).kind
        for task, arg in events
        if task == PROCESS_MESSAGE_TASK
    }
    assert {"text", "button", "interactive", "image", "location", "unsupported", "edit",
            "revoke", "request_welcome", "system"} <= kinds


async def test_broker_failure_is_503_and_releases_the_claim(
    settings: Settings, raw: sync_redis.Redis
) -> None:
    app = create_app(settings, setup_logging=False)
    async for client in open_client(app):
        # The broker stops answering: a publisher pointing at a closed port.
        app.state.publisher = TaskPublisher(f"redis://127.0.0.1:{free_port()}/0")
        response = await post(client, sample("text"))
        assert response.status_code == 503
        assert raw.dbsize() == 0  # the wamid is not remembered: Meta's retry will be processed
        await app.state.publisher.aclose()


async def test_redis_down_is_503(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(make_settings(dead, tmp_path), setup_logging=False)
    async for client in open_client(app):
        response = await post(client, sample("text"))
        assert response.status_code == 503
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("error")
        assert ready.json()["checks"]["database"] == "ok"


async def test_webhook_logs_hold_no_secret(settings: Settings) -> None:
    """Every line the web tier writes for these requests, as rendered: the lines are there
    (a test that passed with no logs proved nothing) and no secret is in them."""
    import io
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(settings.model_copy(update={"log_format": "json", "log_level": "DEBUG"}),
                      stream=buffer)
    try:
        async for client in open_client(create_app(settings, setup_logging=False)):
            await post(client, sample("text"), secret="wrong")
            await post(client, b"{bad json")
            await post(client, sample("text"))
            await post(client, sample("text"))  # a duplicate
            await client.get("/webhook", params={"hub.mode": "subscribe",
                                                 "hub.verify_token": VERIFY_TOKEN[:-1]})
            # A sender that puts our own secrets into a delivery: still never logged.
            await post(client, json.dumps({"object": APP_SECRET, "entry": VERIFY_TOKEN}).encode())
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    events = {line["event"] for line in lines}
    assert {"webhook.bad_signature", "webhook.malformed", "webhook.message_queued",
            "webhook.duplicate", "webhook.verify_failed"} <= events
    text = buffer.getvalue()
    for secret in (APP_SECRET, VERIFY_TOKEN, ACCESS_TOKEN, VERIFY_TOKEN[:-1]):
        assert secret not in text


async def test_web_tier_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    with pytest.raises(MissingSecretsError, match="META_APP_SECRET, META_VERIFY_TOKEN"):
        create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"),
                   setup_logging=False)


# ---------------------------------------------------------------------------------------------
# Probes and metrics


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"redis": "ok", "database": "ok"}}


async def test_readyz_reports_database_failure(settings: Settings) -> None:
    app = create_app(settings, setup_logging=False)

    async def broken() -> None:
        raise OSError("db at postgresql://u:hunter2@db is down")

    app.dependency_overrides[get_database_check] = lambda: broken
    async for client in open_client(app):
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"redis": "ok", "database": "error: OSError"}
    assert "hunter2" not in ready.text


async def test_metrics(client: httpx.AsyncClient, raw: sync_redis.Redis) -> None:
    await post(client, sample("text"))
    await post(client, sample("text"))
    await post(client, sample("text"), secret=None)
    await client.get("/webhook", params={"hub.mode": "subscribe"})
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "released_webhook_requests_total",
        "released_webhook_latency_seconds_bucket",
        "released_messages_received_total",
        "released_tasks_total",
        "released_openai_request_seconds",
        "released_openai_tokens_total",
        "released_openai_requests_total",
        "released_graph_requests_total",
        "released_fallback_answers_total",
    ):
        assert name in text, name
    for outcome in ("accepted", "duplicate", "bad_signature", "verify_failed"):
        line = f'released_webhook_requests_total{{outcome="{outcome}"}}'
        assert line in text
        value = float(text.split(line, 1)[1].split()[0])
        assert value >= 1
    assert 'released_messages_received_total{kind="text"}' in text
    assert f"released_queue_depth {float(raw.llen(CELERY_QUEUE))}" in text


def test_metrics_multiprocess_mode(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, samples of several processes are aggregated."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    script = (
        "from bot.core.metrics import TASKS\n"
        "TASKS.labels(task='bot.tasks.process_message', outcome='success').inc()\n"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
    render = "from bot.core.metrics import render_metrics\nprint(render_metrics()[0].decode())\n"
    out = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert 'released_tasks_total{outcome="success",task="bot.tasks.process_message"} 2.0' in out


# ---------------------------------------------------------------------------------------------
# De-duplication and queueing


async def test_first_seen(test_redis_url: str) -> None:
    redis = Redis.from_url(test_redis_url)
    try:
        assert await first_seen(redis, PN, "wamid.a")
        assert not await first_seen(redis, PN, "wamid.a")
        assert await first_seen(redis, "222", "wamid.a")  # keyed by phone number id
        assert await redis.ttl(dedup_key(PN, "wamid.a")) > DEDUP_TTL_SECONDS - 60
        await release(redis, PN, "wamid.a")
        assert await first_seen(redis, PN, "wamid.a", ttl_seconds=5)
        assert 0 < await redis.ttl(dedup_key(PN, "wamid.a")) <= 5
    finally:
        await redis.aclose()


async def test_enqueue_once_is_atomic_on_a_shared_redis(
    test_redis_url: str, raw: sync_redis.Redis
) -> None:
    publisher = TaskPublisher(test_redis_url)
    msg = InboundMessage(wamid="wamid.once", phone_number_id=PN, wa_id="1", kind="text")
    try:
        first = await enqueue_message_once(msg, publisher)
        again = await enqueue_message_once(msg, publisher, dedup_redis=publisher.redis)
    finally:
        await publisher.aclose()
    assert first is not None and again is None
    [(task, arg)] = queued(raw)
    assert (task, arg) == (PROCESS_MESSAGE_TASK, {"inbox": "wamid.once"})
    assert raw.ttl(dedup_key(PN, "wamid.once")) > DEDUP_TTL_SECONDS - 60


async def test_enqueue_once_claims_nothing_when_the_push_fails(
    test_redis_url: str, raw: sync_redis.Redis
) -> None:
    """Atomic path: a failing script (here: the queue key holds a string) leaves no claim."""
    raw.set(CELERY_QUEUE, "not a list")
    publisher = TaskPublisher(test_redis_url)
    msg = InboundMessage(wamid="wamid.fail", phone_number_id=PN, wa_id="1", kind="text")
    try:
        with pytest.raises(Exception, match="WRONGTYPE"):
            await enqueue_message_once(msg, publisher)
    finally:
        await publisher.aclose()
    assert raw.exists(dedup_key(PN, "wamid.fail")) == 0


async def test_enqueue_once_with_separate_dedup_redis(
    test_redis_url: str, raw: sync_redis.Redis
) -> None:
    """Broker and de-dup on different clients: claim, push, and release when the push fails."""
    dedup = Redis.from_url(test_redis_url)
    good = TaskPublisher(test_redis_url)
    dead = TaskPublisher(f"redis://127.0.0.1:{free_port()}/0")
    msg = InboundMessage(wamid="wamid.sep", phone_number_id=PN, wa_id="1", kind="text")
    try:
        with pytest.raises(Exception, match=r"(?i)connect"):
            await enqueue_message_once(msg, dead, dedup_redis=dedup)
        assert raw.exists(dedup_key(PN, "wamid.sep")) == 0
        assert await enqueue_message_once(msg, good, dedup_redis=dedup) is not None
        assert await enqueue_message_once(msg, good, dedup_redis=dedup) is None
    finally:
        await dedup.aclose()
        await good.aclose()
        await dead.aclose()
    assert len(queued(raw)) == 1


def test_envelope_matches_celery_send_task(test_redis_url: str, raw: sync_redis.Redis) -> None:
    """Our envelope has the same shape as the one Celery's own send_task writes."""
    app = Celery("released", broker=test_redis_url, set_as_current=False)
    app.send_task(PROCESS_MESSAGE_TASK, args=[{"a": 1}])
    app.close()
    popped = raw.rpop(CELERY_QUEUE)
    assert isinstance(popped, bytes)
    theirs = json.loads(popped)
    ours = build_task_message(PROCESS_MESSAGE_TASK, [{"a": 1}])
    assert ours.keys() == theirs.keys()
    assert ours["headers"].keys() == theirs["headers"].keys()
    assert ours["properties"].keys() == theirs["properties"].keys()
    for key in ("content-type", "content-encoding", "body"):
        assert ours[key] == theirs[key]
    assert ours["properties"]["delivery_info"] == theirs["properties"]["delivery_info"]
    assert ours["properties"]["body_encoding"] == theirs["properties"]["body_encoding"]


def test_kombu_decodes_the_message(test_redis_url: str) -> None:
    async def publish() -> None:
        publisher = TaskPublisher(test_redis_url)
        await enqueue_message(
            InboundMessage(wamid="wamid.k", phone_number_id=PN, wa_id="1", kind="text", text="hi"),
            publisher,
        )
        await publisher.aclose()

    asyncio.run(publish())
    with Connection(test_redis_url) as conn:  # type: ignore[no-untyped-call]
        queue = conn.SimpleQueue(CELERY_QUEUE)
        message = queue.get(timeout=5)
        args, _kwargs, _embed = message.decode()
        assert message.headers["task"] == PROCESS_MESSAGE_TASK
        assert args[0] == {"inbox": "wamid.k"}  # the text stays in the database
        message.ack()
        queue.close()


def test_a_real_celery_worker_runs_the_tasks(test_redis_url: str) -> None:
    app = Celery("released-test", broker=test_redis_url, set_as_current=False)
    app.conf.task_acks_late = True
    received: list[tuple[str, dict[str, Any]]] = []
    done = threading.Event()

    @app.task(name=PROCESS_MESSAGE_TASK)  # type: ignore[untyped-decorator]
    def process_message(payload: dict[str, Any]) -> None:
        received.append(("message", payload))
        if len(received) == 2:
            done.set()

    @app.task(name=RECORD_STATUS_TASK)  # type: ignore[untyped-decorator]
    def record_status(payload: dict[str, Any]) -> None:
        received.append(("status", payload))
        if len(received) == 2:
            done.set()

    msg = InboundMessage(
        wamid="wamid.w", phone_number_id=PN, wa_id="16505551234", kind="text", text="hola"
    )
    status = StatusUpdate(wamid="wamid.s", phone_number_id=PN, status="delivered")

    async def publish() -> None:
        publisher = TaskPublisher(test_redis_url)
        await enqueue_message(msg, publisher)
        await enqueue_status(status, publisher)
        await publisher.aclose()

    asyncio.run(publish())
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        assert done.wait(20)
    app.close()
    by_kind = dict(received)
    assert by_kind["message"] == {"inbox": msg.wamid}
    assert StatusUpdate.model_validate(by_kind["status"]) == status


async def test_fallback_to_celery_producer_for_other_brokers() -> None:
    """Non-Redis broker URLs go through Celery's own producer in a thread: the task lands on
    the broker's ``celery`` queue under its name, id and argument, as a worker reads it."""
    publisher = TaskPublisher("memory://")
    assert not publisher.uses_redis
    status = StatusUpdate(wamid="wamid.mem", phone_number_id=PN, status="read")
    try:
        task_id = await enqueue_status(status, publisher)
    finally:
        await publisher.aclose()

    # kombu's memory transport keeps its queues per process: read what the producer wrote.
    with Connection("memory://") as conn:  # type: ignore[no-untyped-call]
        queue = conn.SimpleQueue(CELERY_QUEUE)
        message = queue.get(timeout=5)
        args, kwargs, _embed = message.decode()
        message.ack()
        assert queue.qsize() == 0  # exactly one message
        queue.close()
    assert message.headers["task"] == RECORD_STATUS_TASK
    assert message.headers["id"] == task_id
    assert StatusUpdate.model_validate(args[0]) == status and kwargs == {}


# ---------------------------------------------------------------------------------------------
# The module-level app


APP_SECRET_FOR_UVICORN = "fedcba9876543210fedcba9876543210"


def test_import_connects_nowhere_and_uvicorn_serves(tmp_path: Path, test_redis_url: str) -> None:
    run_migrations(make_settings(test_redis_url, tmp_path))
    env = {
        **os.environ,
        "REDIS_URL": test_redis_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "PHONE_NUMBER_ID": PN,
        "LOG_FORMAT": "json",
        "META_APP_SECRET": APP_SECRET_FOR_UVICORN,
        "META_VERIFY_TOKEN": VERIFY_TOKEN,
    }
    # Importing builds nothing: no settings read, no app.
    check = "import bot.main as m; assert m._app is None; import fastapi;"
    check += "assert isinstance(m.app.fastapi_app, fastapi.FastAPI) and m.app is m.app"
    subprocess.run([sys.executable, "-c", check], env=env, check=True)

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bot.main:app", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, "uvicorn exited"
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        # POST /webhook takes the fast path, with the same checks as the FastAPI route.
        body, headers = signed_delivery(
            text_message_payload(PN, "hola", wamid="wamid.FAST"), APP_SECRET_FOR_UVICORN
        )
        assert httpx.post(f"http://127.0.0.1:{port}/webhook", content=body,
                          headers=headers).status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/webhook", content=body).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/nowhere").status_code == 404
        queued = sync_redis.Redis.from_url(test_redis_url).lrange(CELERY_QUEUE, 0, -1)
        assert any(b"wamid.FAST" in base64.b64decode(json.loads(q)["body"]) for q in queued)
        assert not any(b"hola" in base64.b64decode(json.loads(q)["body"]) for q in queued)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    # uvicorn's own lines come out through our JSON logging.
    json_lines = [line for line in output.splitlines() if line.startswith("{")]
    assert any(json.loads(line).get("logger", "").startswith("uvicorn") for line in json_lines)
