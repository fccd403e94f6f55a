"""Retention means retention: after the purge, a message's text is nowhere the bot stores it.

Real processes (``LocalStack``: Redis with its append-only file, uvicorn, the Celery worker,
``released purge``), PostgreSQL. Canaries are planted as a user's question, as the answer (an
FAQ the model answers with), as a message the business wrote from the WhatsApp Business app
(an echo), inside an element the web tier quarantines, as a question held while Meta refuses
the agent's token, and as a question that is queued while the worker is down (an agent
suspended before its queue drained) and never answered. Then the
clock moves past the retention period (every stored timestamp is moved back by more than
``RETENTION_DAYS``: the database's own clock cannot be moved), ``released purge`` runs as the
CronJob runs it, and the canaries are searched for in:

- the database: everything ``pg_dump`` writes of it;
- Redis: every key's value, every file in its directory (the multi-part append-only file as it
  was never rewritten, and a snapshot taken now without compression);
- the logs of the web tier, the worker and the purge (the fakes' logs are Meta's and OpenAI's
  side of the wire, where the text legitimately goes).

Controls prove the search can fail: before the purge the database holds the canaries, and a
value written to Redis on purpose is found in its append-only file.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
import redis

from bot.devstack import LocalStack
from bot.whatsapp.simulate import new_wamid, signed_delivery, text_message_payload
from released.fakes import FakeMeta
from tests.servers import _pg_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RETENTION_DAYS = 3
#: Every table of the bot and its timestamp columns (moved back to simulate the clock).
TIMESTAMPS = {
    "messages": ("created_at", "updated_at"),
    "conversations": ("created_at", "updated_at"),
    "user_identities": ("created_at", "updated_at"),
    "quarantined_events": ("created_at",),
    "inbox": ("created_at",),
}
#: Logs that are the bot's (not the fakes', which stand for Meta and OpenAI).
BOT_LOGS = ("web", "worker", "purge", "redis")


#: Base64 runs: Celery's envelope carries a task's arguments base64-encoded.
_BASE64 = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")


def searchable(data: bytes) -> bytes:
    """``data`` and every base64 run in it decoded, so that an encoded canary is found too."""
    decoded = []
    for run in _BASE64.findall(data):
        try:
            decoded.append(base64.b64decode(run + b"=" * (-len(run) % 4)))
        except (binascii.Error, ValueError):
            continue
    return b"\n".join([data, *decoded])


def canary(name: str) -> str:
    return f"CANARY-{name}-{secrets.token_hex(6)}"


@pytest.fixture
def stack(tmp_path: Path, postgres_db: str) -> Iterator[tuple[LocalStack, dict[str, str]]]:
    canaries = {name: canary(name) for name in
                ("question", "answer", "echo", "quarantined", "held", "unanswered")}
    faqs = tmp_path / "faqs.json"
    faqs.write_text(json.dumps([
        {"q": f"What is the secret word {canaries['question']}?", "a": canaries["answer"]},
    ]))
    local = LocalStack(
        workdir=tmp_path / "stack",
        web_port=0,
        with_purge=False,  # run by the test once the clock has moved
        extra_env={
            "DATABASE_URL": postgres_db,
            "FAQS_PATH": str(faqs),
            "RETENTION_DAYS": str(RETENTION_DAYS),
            "LOG_FORMAT": "json",
            "OPENAI_RATE_LIMIT_PER_SECOND": "100",
        },
    )
    local.start()
    try:
        admin = redis.Redis.from_url(local.urls["redis"])
        admin.config_set("rdbcompression", "no")  # so that a snapshot can be searched as is
        admin.close()
        yield local, canaries
    finally:
        local.stop()


def post(local: LocalStack, payload: dict[str, Any]) -> None:
    body, headers = signed_delivery(payload, local.env["META_APP_SECRET"])
    response = httpx.post(f"{local.urls['web']}/webhook", content=body, headers=headers,
                          timeout=30)
    assert response.status_code == 200, response.text


def echo_payload(phone_number_id: str, text: str) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{
            "field": "smb_message_echoes",
            "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550000001",
                             "phone_number_id": phone_number_id},
                "message_echoes": [{
                    "from": "15550000001", "to": "34600000009", "id": new_wamid(),
                    "timestamp": str(int(time.time())), "type": "text",
                    "text": {"body": text},
                }],
            },
        }]}],
    }  # fmt: skip


def wait_until(what: str, check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.2)


def database_text(url: str) -> str:
    dump = subprocess.run([_pg_bin("pg_dump"), "--data-only", "--inserts", url],
                          capture_output=True, text=True, check=True, timeout=60)
    return dump.stdout


def redis_values(url: str) -> str:
    """Every key and value Redis holds, as text."""
    client = redis.Redis.from_url(url)
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        value: Any = b""
        if kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        out.append(f"{key!r} {value!r}")
    client.close()
    return "\n".join(out)


def redis_files(local: LocalStack) -> bytes:
    """Every file Redis wrote: the append-only file's parts, and a snapshot taken now."""
    client = redis.Redis.from_url(local.urls["redis"])
    client.save()
    client.close()
    return b"".join(p.read_bytes() for p in sorted((local.workdir / "redis").rglob("*"))
                    if p.is_file())


def move_clock_back(url: str, days: int) -> None:
    """Everything stored is ``days`` older: as if the clock had moved forward."""
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        for table, columns in TIMESTAMPS.items():
            sets = ", ".join(f"{c} = {c} - make_interval(days => %s)" for c in columns)
            cur.execute(f"UPDATE {table} SET {sets}", [days] * len(columns))  # noqa: S608
    conn.close()


def test_no_canary_survives_the_retention_period(
    stack: tuple[LocalStack, dict[str, str]], postgres_db: str
) -> None:
    local, canaries = stack
    phone = local.env["PHONE_NUMBER_ID"]
    meta = FakeMeta.attach(local.urls["fake_meta"])

    # A question answered (with a canary in the answer too), an echo, a quarantined element.
    question = new_wamid()
    post(local, text_message_payload(phone, f"What is the secret word {canaries['question']}?",
                                     wamid=question))
    post(local, echo_payload(phone, canaries["echo"]))
    odd = text_message_payload(phone, canaries["quarantined"])
    del odd["entry"][0]["changes"][0]["value"]["messages"][0]["id"]  # quarantined: no id
    post(local, odd)
    wait_until("answer", lambda: [m for m in meta.sent()
                                  if m.get("context_message_id") == question])
    [reply] = [m for m in meta.sent() if m.get("context_message_id") == question]
    assert canaries["answer"] in json.dumps(reply)

    # Meta refuses the token: a question is held (in Redis, by its wamid) until it works again.
    meta.expire_token()
    held = new_wamid()
    post(local, text_message_payload(phone, canaries["held"], wamid=held))
    client = redis.Redis.from_url(local.urls["redis"])
    wait_until("held message", lambda: client.zrange(f"released:meta-held:{phone}", 0, -1))
    client.close()

    # The worker goes (an agent suspended before its queue drained): a question waits, queued.
    local.kill("worker")
    unanswered = new_wamid()
    post(local, text_message_payload(phone, canaries["unanswered"], wamid=unanswered))
    client = redis.Redis.from_url(local.urls["redis"])
    assert client.llen("celery") >= 1
    client.set("control", "CONTROL-value-in-the-append-only-file")
    client.close()
    wait_until("echo and inbox rows", lambda: canaries["echo"] in database_text(postgres_db))

    # Controls: the searches below find what is there.
    stored = database_text(postgres_db)
    for name in canaries:
        assert canaries[name] in stored, name
    assert b"CONTROL-value-in-the-append-only-file" in redis_files(local)
    assert b"wamid" in searchable(redis_files(local))  # the queued tasks, decoded

    # Past the retention period, the purge runs as the CronJob runs it.
    move_clock_back(postgres_db, RETENTION_DAYS + 1)
    purge = subprocess.run([sys.executable, "-m", "bot.cli", "purge"], env=local.env,
                           capture_output=True, text=True, timeout=120)
    (local.workdir / "purge.log").write_text(purge.stdout + purge.stderr)
    assert purge.returncode == 0, purge.stderr[-2000:]

    everywhere = {
        "database": database_text(postgres_db).encode(),
        "redis keys": redis_values(local.urls["redis"]).encode(),
        "redis files": redis_files(local),
        **{f"{name}.log": local.log_text(name).encode() for name in BOT_LOGS},
    }
    everywhere = {where: searchable(data) for where, data in everywhere.items()}
    found = [(name, where) for name, value in canaries.items()
             for where, text in everywhere.items() if value.encode() in text]
    assert found == [], f"message text outlived the retention period: {found}"
    # The question, its answer, the echo and the held question were messages; the unanswered
    # one only waited in the inbox.
    assert "purged 4 messages" in purge.stdout + purge.stderr
