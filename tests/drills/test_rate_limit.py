"""Drill: the per-agent model rate holds while one worker answers many messages at once.

The worker runs 8 tasks at once in its threads pool; the agent's model rate is 2 requests a
second (``OPENAI_RATE_LIMIT_PER_SECOND``, a Redis token bucket shared by every slot and every
worker of the agent, bursts of 2) and the model takes 1 s per answer. 12 users ask one question
each at the same moment. Asserted, from the times the fake OpenAI received the requests: no
window of the run saw more requests than the bucket allows (its burst plus its rate times the
window), so the 12 requests spread over at least (12 - 2) / 2 = 5 s; the slots really ran at
once (requests closer together than the model's 1 s, which one slot at a time could not do);
every message was answered exactly once.
"""

from __future__ import annotations

import itertools
import time

import pytest

from bot.devstack import LocalStack
from released.fakes import FakeMeta, FakeOpenAI

from .conftest import Tally, Webhook, questions, wa_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

RATE = 2.0
BURST = 2.0  # the agent bucket's capacity: max(1, rate)
MESSAGES = 12
MODEL_LATENCY = 1.0
WORKER_CONCURRENCY = 8
STACK_ENV = {
    "OPENAI_RATE_LIMIT_PER_SECOND": str(RATE),
    # One question per user: the per-user bucket is not what is measured here.
    "USER_RATE_LIMIT_PER_MINUTE": "600",
    "USER_RATE_LIMIT_BURST": "10",
    # Waiting for a token must fit in the task's time (cancelled at 0.8 x this).
    "CELERY_VISIBILITY_TIMEOUT": "60",
}
#: Slack for the clocks of two processes and the bucket's rounding (seconds).
SLACK = 0.3


def test_the_agent_rate_holds_across_concurrent_slots(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI, webhook: Webhook
) -> None:
    started = time.monotonic()
    openai_fake.set_latency(MODEL_LATENCY)
    tally = Tally("agent rate limit, 8 slots")
    for i, (question, answer) in enumerate(questions(MESSAGES)):
        wamid, payload = webhook.message(question, wa_id=wa_id(500 + i))
        tally.add(wamid, answer)
        webhook.deliver(payload)
    tally.wait_answered(meta, timeout=120)
    openai_fake.set_latency(0.0)

    times = sorted(r["at"] for r in openai_fake.requests("POST /v1/responses"))
    assert len(times) >= MESSAGES, times
    span = times[-1] - times[0]
    # The bucket: in any window of w seconds, at most BURST + RATE * w requests.
    worst = max(
        (j - i + 1) - (BURST + RATE * (times[j] - times[i]))
        for i in range(len(times))
        for j in range(i, len(times))
    )
    assert worst <= RATE * SLACK, (worst, times)
    assert span >= (len(times) - BURST) / RATE - SLACK, (span, times)
    # Concurrency: a request arrived while the one before was still waiting for the model.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) < MODEL_LATENCY - SLACK, gaps
    tally.settle_and_check(
        meta,
        model_requests=len(times),
        spread_s=round(span, 2),
        min_gap_s=round(min(gaps), 3),
        runtime_s=round(time.monotonic() - started, 1),
    )
