"""Drill: the model API failing: 429 with Retry-After, 500, 503 and timeouts.

Transient failures are retried with backoff (honouring ``Retry-After``) and the model answers;
a lasting outage makes the bot answer from the FAQs after ``OPENAI_MAX_RETRIES`` retries. Either
way each message is answered exactly once, with its FAQ's answer: never silence.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.devstack import LocalStack
from bot.llm.client import RATE_LIMIT_RETRIES
from released.fakes import FakeMeta, FakeOpenAI

from .conftest import Tally, Webhook, db_rows, send_questions

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

STACK_ENV = {"OPENAI_TIMEOUT_SECONDS": "1.5", "OPENAI_MAX_RETRIES": "3"}

RATE_LIMIT = {"kind": "rate_limit", "retry_after": 1}
TIMEOUT = {"kind": "timeout", "delay": 3}
ERROR_MIX: list[Any] = [RATE_LIMIT, "server_error", TIMEOUT, "unavailable"]


def _sources(stack: LocalStack, tally: Tally) -> dict[str, int]:
    rows = db_rows(
        stack, "SELECT reply_to, source, status FROM messages WHERE direction = 'outbound'"
    )
    mine = [(source, status) for reply_to, source, status in rows if reply_to in tally.expected]
    assert all(status == "sent" for _, status in mine), mine
    found: dict[str, int] = {}
    for source, _ in mine:
        found[source] = found.get(source, 0) + 1
    return found


def test_transient_model_errors_are_retried_and_answered_once(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI, webhook: Webhook
) -> None:
    started = time.monotonic()
    openai_fake.script_errors(ERROR_MIX * 3)  # the first 12 model calls fail, one way or another
    tally = Tally("openai 429/500/503/timeout, transient")
    send_questions(webhook, tally, 12, offset=2000)
    tally.wait_answered(meta, timeout=60)
    assert openai_fake.pending_errors() == []
    sources = _sources(stack, tally)
    tally.settle_and_check(
        meta,
        model_calls=openai_fake.calls().get("POST /v1/responses", 0),
        sources=sources,
        runtime_s=round(time.monotonic() - started, 1),
    )
    assert openai_fake.calls().get("POST /v1/responses", 0) >= 24  # every one retried


def test_model_outage_answers_from_the_faqs_once(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI, webhook: Webhook
) -> None:
    started = time.monotonic()
    openai_fake.script_errors(ERROR_MIX * 50)  # more than the bot will ever try
    tally = Tally("openai outage -> FAQ fallback")
    send_questions(webhook, tally, 6, offset=3000)
    tally.wait_answered(meta, timeout=90)
    calls = openai_fake.calls().get("POST /v1/responses", 0)
    sources = _sources(stack, tally)
    tally.settle_and_check(
        meta, model_calls=calls, sources=sources, runtime_s=round(time.monotonic() - started, 1)
    )
    assert sources == {"faq": 6}
    # 1 + OPENAI_MAX_RETRIES attempts each (a 429 is tried again inside its attempt, behind
    # the paused bucket, at most RATE_LIMIT_RETRIES times), then the FAQs: bounded.
    assert calls <= 6 * (1 + 3) * (1 + RATE_LIMIT_RETRIES)
    openai_fake.clear_errors()


def _process_retries(stack: LocalStack) -> float:
    text = httpx.get(stack.urls["worker_metrics"], timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "released_tasks_total"
        and sample.labels.get("task") == "process_message"
        and sample.labels.get("outcome") == "retry"
    )


def test_a_429_slows_the_agent_instead_of_spending_retries(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI, webhook: Webhook
) -> None:
    """OpenAI answers 429 (Retry-After 1 s) to the first calls: the agent's shared bucket
    pauses, every queued answer waits behind the pause and then gets the model's answer; no
    message spends a task retry on it."""
    started = time.monotonic()
    retries_before = _process_retries(stack)
    openai_fake.script_errors([RATE_LIMIT] * 3)
    tally = Tally("openai 429 storm -> shared pause")
    send_questions(webhook, tally, 8, offset=3500)
    tally.wait_answered(meta, timeout=60)
    calls = openai_fake.calls().get("POST /v1/responses", 0)
    sources = _sources(stack, tally)
    retries = _process_retries(stack) - retries_before
    tally.settle_and_check(
        meta, model_calls=calls, sources=sources, task_retries=retries,
        runtime_s=round(time.monotonic() - started, 1),
    )
    assert sources == {"model": 8}
    assert calls == 8 + 3  # each 429 cost one call, not a retry of its message
    assert retries == 0
