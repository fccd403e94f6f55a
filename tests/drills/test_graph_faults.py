"""Drill: the Graph API failing: 500, 503, throughput limit 130429, pair rate limit 131056, and
131047 (more than 24 hours since the user wrote: a free-form reply is refused for good).

Transient errors and rate limits are retried with exponential backoff and the reply goes out
exactly once; 131047 is recorded as ``failed`` with its code and never retried.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot.devstack import LocalStack
from released.fakes import FakeMeta

from .conftest import SUMMARY, Tally, Webhook, db_rows, questions, send_questions, wa_id, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MESSAGES_ENDPOINT = "messages"


def send_attempts(meta: FakeMeta, wamids: set[str]) -> dict[str, list[int]]:
    """HTTP statuses of every attempt to send a reply to each of ``wamids`` (reads excluded)."""
    found: dict[str, list[int]] = {w: [] for w in wamids}
    for req in meta.requests(MESSAGES_ENDPOINT):
        body: Any = req.get("body")
        if not isinstance(body, dict) or body.get("status") == "read":
            continue
        quoted = (body.get("context") or {}).get("message_id")
        if quoted in found:
            found[quoted].append(int(req.get("status") or 0))
    return found


def test_graph_5xx_and_rate_limits_are_retried_and_sent_once(
    stack: LocalStack, meta: FakeMeta, webhook: Webhook
) -> None:
    started = time.monotonic()
    meta.script_errors(["server_error", "unavailable", "rate_limit", "pair_rate_limit"] * 4)
    tally = Tally("graph 500/503/130429/131056")
    send_questions(webhook, tally, 8, offset=4000)
    tally.wait_answered(meta, timeout=60)
    assert meta.pending_errors() == []
    attempts = send_attempts(meta, set(tally.expected))
    failed = sum(1 for statuses in attempts.values() for s in statuses if s != 200)
    tally.settle_and_check(
        meta,
        send_attempts=sum(len(s) for s in attempts.values()),
        failed_sends=failed,
        runtime_s=round(time.monotonic() - started, 1),
    )
    assert failed > 0  # the drill did hit the sends, not only the read marks


def test_graph_rate_limit_storm_then_recovery(
    stack: LocalStack, meta: FakeMeta, webhook: Webhook
) -> None:
    started = time.monotonic()
    meta.script_errors([{"kind": "rate_limit", "times": 10_000}])
    tally = Tally("graph 130429 storm (4 s)")
    send_questions(webhook, tally, 6, offset=5000)
    wamids = set(tally.expected)
    wait_until(
        lambda: all(len(a) >= 2 for a in send_attempts(meta, wamids).values()),
        timeout=30,
        what="every reply retried during the storm",
    )
    time.sleep(max(0.0, 4.0 - (time.monotonic() - started)))
    assert tally.counts(meta)["answered"] == 0
    meta.clear_errors()
    tally.wait_answered(meta, timeout=60)
    attempts = send_attempts(meta, wamids)
    tally.settle_and_check(
        meta,
        send_attempts=sum(len(s) for s in attempts.values()),
        max_attempts=max(len(s) for s in attempts.values()),
        runtime_s=round(time.monotonic() - started, 1),
    )


def test_outside_24h_window_is_recorded_failed_and_not_retried(
    stack: LocalStack, meta: FakeMeta, webhook: Webhook
) -> None:
    started = time.monotonic()
    meta.script_errors([{"kind": "re_engagement", "times": 10_000}])
    question, _ = questions(1)[0]
    wamid, payload = webhook.message(question, wa_id=wa_id(6000))
    webhook.deliver(payload)

    def failed_row() -> list[tuple[Any, ...]]:
        return db_rows(
            stack,
            "SELECT status, error_code FROM messages WHERE reply_to = ? AND status = 'failed'",
            wamid,
        )

    rows = wait_until(failed_row, timeout=30, what="the reply recorded as failed")
    assert rows == [("failed", 131047)]
    # Meta redelivers the webhook: still nothing is sent again.
    webhook.deliver(payload)
    time.sleep(4.0)  # longer than any retry countdown of this stack (3 s)
    attempts = send_attempts(meta, {wamid})[wamid]
    assert attempts == [400], attempts
    assert meta.sent() == []
    assert failed_row() == [("failed", 131047)]
    meta.clear_errors()
    SUMMARY.append(
        {
            "drill": "graph 131047 (24 h window)",
            "sent": 1,
            "answered": 0,
            "duplicates": 0,
            "wrong_text": 0,
            "recorded_failed": 1,
            "send_attempts": len(attempts),
            "runtime_s": round(time.monotonic() - started, 1),
        }
    )
