"""Drill: Redis killed (SIGKILL) and restarted during traffic.

About 50 messages arrive over a few seconds from several senders, as Meta would send them.
Redis dies in the middle and comes back after a short pause on the same port and directory;
its append-only file brings back the queue, the unacknowledged tasks and the de-duplication
claims. While it is down the web tier answers 503 (never 500), Meta redelivers the same body
with the same wamid until it gets 200, and in the end every message is answered exactly once.

The worker is supervised as Kubernetes supervises it (restarted when it exits). Seen in this
drill with Celery/kombu 5.7, in some runs: when a task's acknowledgement fails on the dead
connection just before the consumer notices the loss, the worker dies with "Unrecoverable error:
AttributeError('NoneType' object has no attribute 'hostname')" (kombu's redis channel, closed
after the transport was collected, tries to restore its unacknowledged messages) instead of
reconnecting. Nothing is lost (the tasks are in Redis's unacked set and come back after the
visibility timeout), but only because something restarts the worker; ``worker_restarts`` in
the summary says whether it happened.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bot.devstack import LocalStack
from released.fakes import FakeMeta, FakeOpenAI

from .conftest import Kubelet, Tally, Webhook, questions, restart_redis, wa_id, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

MESSAGES = 50
RATE = 10.0  # messages per second
DOWN_FOR = 1.5
TRANSPORT_ERRORS = {"ConnectError", "ReadError", "RemoteProtocolError"}


def test_redis_restart_during_traffic_answers_everything_once(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI, webhook: Webhook
) -> None:
    started = time.monotonic()
    openai_fake.set_latency(0.3)  # the worker is inside tasks when Redis dies
    tally = Tally("redis SIGKILL + restart")
    plan = []
    for i, (question, answer) in enumerate(questions(MESSAGES)):
        wamid, payload = webhook.message(question, wa_id=wa_id(1000 + i))
        tally.add(wamid, answer)
        plan.append(payload)

    restarted = threading.Event()

    def chaos() -> None:
        time.sleep(MESSAGES / RATE / 3)
        restart_redis(stack, down_for=DOWN_FOR)
        restarted.set()

    def send(i: int) -> int:
        time.sleep(i / RATE)
        return webhook.deliver(plan[i], give_up_after=40).attempts

    with Kubelet(stack) as kubelet:
        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            attempts = list(pool.map(send, range(MESSAGES)))
        chaos_thread.join(timeout=30)
        assert restarted.is_set()

        seen = webhook.seen
        assert set(seen) <= {200, 503, *TRANSPORT_ERRORS}, seen
        assert seen[503] > 0, f"no delivery met Redis down: {seen}"
        assert seen[200] == MESSAGES

        wait_until(
            lambda: httpx.get(f"{stack.urls['web']}/readyz", timeout=2).status_code == 200,
            timeout=20,
            what="/readyz after the restart",
        )
        tally.wait_answered(meta, timeout=90)
        tally.settle_and_check(
            meta,
            settle=3.0,
            webhook_503=seen[503],
            redeliveries=sum(attempts) - MESSAGES,
            worker_restarts=kubelet.restarts,
            runtime_s=round(time.monotonic() - started, 1),
        )
