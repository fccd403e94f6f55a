"""Drill: one user floods the bot; another user's answer is not held up behind the flood.

The agent's model rate is 2 answers a second (``OPENAI_RATE_LIMIT_PER_SECOND``). A flooder sends
30 questions in a burst, then a victim asks one. With the per-user bucket (12 answers a minute,
bursts of 2) the flooder's answers beyond their burst wait for their own reserved slots, or come
from the FAQs once their backlog passes ``USER_MAX_DEFER_SECONDS``, without taking the agent's
tokens: the victim is answered after at most the flooder's burst. The same drill on a stack
whose per-user bucket is out of the way shows the flood in front of the victim.

Printed (fault drills summary): the victim's answer time alone and behind the flood, on both
stacks, and their ratio. Asserted: every message answered exactly once; with the per-user
bucket, the flooder's model answers that come before the victim's are at most their burst plus
what their own rate allowed while the victim waited (an order, not a time); without it, the
whole flood comes first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from bot.devstack import LocalStack
from released.fakes import FakeMeta, FakeOpenAI

from .conftest import DRILL_ENV, Tally, Webhook, db_rows, questions, wa_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FLOOD = 30
BURST = 2
STACK_ENV = {
    "OPENAI_RATE_LIMIT_PER_SECOND": "2",
    "USER_RATE_LIMIT_PER_MINUTE": "12",
    "USER_RATE_LIMIT_BURST": str(BURST),
    "USER_MAX_DEFER_SECONDS": "30",
    # Deferred answers wait as ETA tasks: room for them under the visibility timeout.
    "CELERY_VISIBILITY_TIMEOUT": "60",
}
#: The same agent with the per-user bucket out of the way.
UNFAIR_ENV = {**STACK_ENV, "USER_RATE_LIMIT_PER_MINUTE": "6000000",
              "USER_RATE_LIMIT_BURST": "100000"}


@pytest.fixture(scope="module")
def unfair_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(
        workdir=tmp_path_factory.mktemp("drill-unfair"),
        web_port=0,
        with_purge=False,
        worker_concurrency=2,
        extra_env={**DRILL_ENV, **UNFAIR_ENV},
    )
    local.start()
    yield local
    local.stop()


def _answer_time(meta: FakeMeta, wamid: str, timeout: float = 120.0) -> float:
    """Seconds from now until Meta received the reply to ``wamid``."""
    started = time.monotonic()
    while not any(m["context_message_id"] == wamid for m in meta.sent()):
        assert time.monotonic() - started < timeout, f"no reply to {wamid}"
        time.sleep(0.02)
    return time.monotonic() - started


def _run(stack: LocalStack, name: str, offset: int) -> dict[str, float]:
    meta = FakeMeta.attach(stack.urls["fake_meta"])
    meta.reset()
    FakeOpenAI.attach(stack.urls["fake_openai"]).reset()
    pairs = questions(FLOOD + 2)
    tally = Tally(name)
    with Webhook(stack) as webhook:
        # The victim alone: the baseline.
        question, answer = pairs[0]
        alone_id, payload = webhook.message(question, wa_id=wa_id(offset))
        tally.add(alone_id, answer)
        webhook.deliver(payload)
        alone = _answer_time(meta, alone_id)
        time.sleep(1.0)  # the agent's bucket refills
        # The flood, then the victim.
        flooder = wa_id(offset + 1)
        for question, answer in pairs[1:FLOOD + 1]:
            wamid, payload = webhook.message(question, wa_id=flooder)
            tally.add(wamid, answer)
            webhook.deliver(payload)
        question, answer = pairs[FLOOD + 1]
        victim_id, payload = webhook.message(question, wa_id=wa_id(offset))
        tally.add(victim_id, answer)
        webhook.deliver(payload)
        behind_flood = _answer_time(meta, victim_id)
    tally.wait_answered(meta, timeout=120)
    # Replies are stored in the order they were composed: which of the flooder's model answers
    # came before the victim's?
    replies = db_rows(
        stack, "SELECT id, reply_to, source FROM messages WHERE direction = 'outbound'"
    )
    victim_reply = next(i for i, reply_to, _ in replies if reply_to == victim_id)
    flooder_ids = set(tally.expected) - {alone_id, victim_id}
    ahead = sum(1 for i, reply_to, source in replies
                if reply_to in flooder_ids and source == "model" and i < victim_reply)
    tally.settle_and_check(
        meta,
        victim_alone_s=round(alone, 2),
        victim_behind_flood_s=round(behind_flood, 2),
        ratio=round(behind_flood / alone, 1),
        flooder_model_answers_ahead=ahead,
    )
    return {"alone": alone, "behind_flood": behind_flood, "ahead": ahead}


def test_a_flooding_user_does_not_hold_back_the_others(
    stack: LocalStack, unfair_stack: LocalStack
) -> None:
    fair = _run(stack, f"flood x{FLOOD}: per-user bucket", 8000)
    unfair = _run(unfair_stack, f"flood x{FLOOD}: no per-user bucket", 8100)
    # With the bucket, the flooder's model answers ahead of the victim are their burst plus
    # what their own rate allowed while the victim waited (on a quiet machine: the burst).
    rate = float(STACK_ENV["USER_RATE_LIMIT_PER_MINUTE"]) / 60.0
    assert fair["ahead"] <= BURST + math.ceil(fair["behind_flood"] * rate) + 1
    # Without it the whole flood is answered first (all but what the two worker processes
    # run beside the victim): the reason the per-user bucket exists.
    assert unfair["ahead"] >= FLOOD - 2
