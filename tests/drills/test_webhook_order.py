"""Drill: duplicated and out-of-order webhooks, on SQLite and on PostgreSQL.

Meta delivers at least once and in no particular order: every message arrives three times,
interleaved with the others and from concurrent connections (one webhook also carries two
messages at once), and the delivery statuses of the replies (sent, delivered, read) arrive
shuffled, duplicated, and several in one webhook in reverse order. One answer per message; the
stored status of every reply ends at the most advanced one, ``read``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from bot.devstack import LocalStack
from released.fakes import FakeMeta
from tests.servers import Server, scratch_database

from .conftest import (
    SUMMARY,
    Tally,
    Webhook,
    db_rows,
    questions,
    status_payload,
    wa_id,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MESSAGES = 12
COPIES = 3


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack_database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    server: Server = request.getfixturevalue("postgres_server")
    with scratch_database(server, prefix="drill") as url:
        yield url


def _backend(stack: LocalStack) -> str:
    return "sqlite" if stack.env["DATABASE_URL"].startswith("sqlite") else "postgresql"


def test_duplicated_interleaved_messages_are_answered_once(
    stack: LocalStack, meta: FakeMeta, webhook: Webhook
) -> None:
    started = time.monotonic()
    rng = random.Random(5)
    tally = Tally(f"duplicated webhooks x{COPIES} ({_backend(stack)})")
    payloads: list[dict[str, Any]] = []
    for i, (question, answer) in enumerate(questions(MESSAGES)):
        # Two users write several messages each: their conversations are shared.
        wamid, payload = webhook.message(question, wa_id=wa_id(7000 + i % 2 + (i >= 8) * i))
        tally.add(wamid, answer)
        payloads.append(payload)
    # One webhook carrying two new messages at once, itself delivered three times.
    (q1, a1), (q2, a2) = questions(2)
    w1, batch = webhook.message(q1, wa_id=wa_id(7100))
    w2, second = webhook.message(q2, wa_id=wa_id(7100))
    batch["entry"][0]["changes"][0]["value"]["messages"].append(
        second["entry"][0]["changes"][0]["value"]["messages"][0]
    )
    tally.add(w1, a1)
    tally.add(w2, a2)
    payloads.append(batch)

    deliveries = [p for p in payloads for _ in range(COPIES)]
    rng.shuffle(deliveries)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(webhook.deliver, deliveries))
    assert all(r.attempts == 1 for r in results), "a duplicate was not acknowledged with 200"

    tally.wait_answered(meta, timeout=60)
    inbound = db_rows(stack, "SELECT COUNT(*) FROM messages WHERE direction = 'inbound'")
    tally.settle_and_check(
        meta,
        deliveries=len(deliveries),
        stored_inbound=inbound[0][0],
        runtime_s=round(time.monotonic() - started, 1),
    )
    assert inbound[0][0] == tally.sent


def test_out_of_order_statuses_end_at_read(
    stack: LocalStack, meta: FakeMeta, webhook: Webhook
) -> None:
    started = time.monotonic()
    rng = random.Random(7)
    tally = Tally("statuses")
    for i, (question, answer) in enumerate(questions(MESSAGES)):
        wamid, payload = webhook.message(question, wa_id=wa_id(7200 + i))
        tally.add(wamid, answer)
        webhook.deliver(payload)
    tally.wait_answered(meta, timeout=60)
    replies = {r["id"]: r["to"] for r in meta.sent()}
    assert len(replies) == MESSAGES

    pnid = stack.env["PHONE_NUMBER_ID"]
    deliveries: list[dict[str, Any]] = []
    for reply_wamid, to in replies.items():
        # Each status twice, one by one, shuffled...
        singles = [s for s in ("sent", "delivered", "read") for _ in range(2)]
        deliveries += [status_payload(pnid, [(reply_wamid, s)], to) for s in singles]
        # ...and all three in one webhook, most advanced first.
        deliveries.append(
            status_payload(pnid, [(reply_wamid, s) for s in ("read", "delivered", "sent")], to)
        )
    rng.shuffle(deliveries)
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(webhook.deliver, deliveries))

    def statuses() -> dict[str, str]:
        marks = ",".join("?" * len(replies))
        query = f"SELECT wamid, status FROM messages WHERE wamid IN ({marks})"  # noqa: S608
        rows = db_rows(stack, query, *replies)
        return {str(w): str(s) for w, s in rows}

    def all_read() -> bool:
        return set(statuses().values()) == {"read"}

    try:
        wait_until(all_read, timeout=30, what="every reply's stored status at 'read'")
        time.sleep(2.0)  # late, stale statuses must not move it back
    finally:
        final = statuses()
        SUMMARY.append(
            {
                "drill": f"out-of-order statuses ({_backend(stack)})",
                "sent": MESSAGES,
                "answered": tally.counts(meta)["answered"],
                "duplicates": tally.counts(meta)["duplicates"],
                "wrong_text": 0,
                "status_webhooks": len(deliveries),
                "final": dict(sorted({s: list(final.values()).count(s) for s in final.values()}
                                     .items())),
                "runtime_s": round(time.monotonic() - started, 1),
            }
        )
    assert set(final.values()) == {"read"}, final
    tally.settle_and_check(meta, settle=0.0)
    SUMMARY.pop()  # counted above


def test_statuses_of_one_reply_in_one_webhook_end_at_read(
    stack: LocalStack, meta: FakeMeta, webhook: Webhook
) -> None:
    """Meta batches statuses: ``read`` and ``delivered`` of one reply in one webhook become two
    tasks that the two worker processes run at the same moment."""
    started = time.monotonic()
    pairs = 30
    tally = Tally("concurrent statuses")
    for i, (question, answer) in enumerate(questions(pairs)):
        wamid, payload = webhook.message(question, wa_id=wa_id(7400 + i))
        tally.add(wamid, answer)
        webhook.deliver(payload)
    tally.wait_answered(meta, timeout=60)
    replies = {r["id"]: r["to"] for r in meta.sent()}
    pnid = stack.env["PHONE_NUMBER_ID"]
    for reply_wamid, to in replies.items():
        both = [(reply_wamid, "read"), (reply_wamid, "delivered")]
        webhook.deliver(status_payload(pnid, both, to))
        time.sleep(0.05)

    def final() -> dict[str, int]:
        marks = ",".join("?" * len(replies))
        query = f"SELECT status FROM messages WHERE wamid IN ({marks})"  # noqa: S608
        rows = db_rows(stack, query, *replies)
        found: dict[str, int] = {}
        for (status,) in rows:
            found[str(status)] = found.get(str(status), 0) + 1
        return found

    # Every status task has run once nothing is left to move past 'sent'.
    wait_until(lambda: "sent" not in final(), timeout=30, what="every status applied")
    time.sleep(1.0)
    result = final()
    SUMMARY.append(
        {
            "drill": f"read+delivered in one webhook ({_backend(stack)})",
            "sent": pairs,
            **{k: v for k, v in tally.counts(meta).items() if k != "sent"},
            "final": dict(sorted(result.items())),
            "runtime_s": round(time.monotonic() - started, 1),
        }
    )
    assert result == {"read": pairs}, result
