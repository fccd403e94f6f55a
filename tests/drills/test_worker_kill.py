"""Drill: ``kill -9`` of the Celery worker while it is inside tasks.

Ten messages are in flight, the model takes 2 s per answer, and the whole worker (one process
running two tasks at once in its threads pool) is SIGKILLed while both tasks are waiting for
the model.
Tasks are acknowledged late, so the ones it held stay unacknowledged in Redis and are handed out
again after ``CELERY_VISIBILITY_TIMEOUT`` (6 s here); the ones still queued wait for the new
worker. Every message must be answered exactly once.
"""

from __future__ import annotations

import time

import pytest

from bot.devstack import LocalStack
from released.fakes import FakeMeta, FakeOpenAI

from .conftest import Tally, Webhook, questions, wa_id, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

MESSAGES = 10
MODEL_LATENCY = 2.0


def test_worker_killed_mid_task_answers_everything_once(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI, webhook: Webhook
) -> None:
    started = time.monotonic()
    openai_fake.set_latency(MODEL_LATENCY)
    tally = Tally("worker kill -9 mid-task")
    for i, (question, answer) in enumerate(questions(MESSAGES)):
        wamid, payload = webhook.message(question, wa_id=wa_id(i))
        tally.add(wamid, answer)
        webhook.deliver(payload)

    # Both of the worker's slots are inside a task, waiting for the model.
    wait_until(
        lambda: openai_fake.calls().get("POST /v1/responses", 0) >= 2,
        timeout=30,
        what="two model calls in flight",
    )
    time.sleep(MODEL_LATENCY / 4)
    stack.kill("worker")
    killed_at = time.monotonic()
    before = tally.counts(meta)
    assert before["answered"] < MESSAGES, "the worker finished before it could be killed"

    stack.start_worker()
    counts = tally.wait_answered(meta, timeout=90)
    recovered = time.monotonic() - killed_at
    tally.settle_and_check(
        meta,
        settle=3.0,
        answered_before_kill=before["answered"],
        model_calls=openai_fake.calls().get("POST /v1/responses", 0),
        recovery_s=round(recovered, 1),
        runtime_s=round(time.monotonic() - started, 1),
    )
    assert counts["answered"] == MESSAGES
