"""End to end: a signed webhook in, the grounded answer out through the Graph API, once.

Real processes: uvicorn serving ``bot.main:app``, a Celery worker (threads pool), Redis from
Debian's package, SQLite, and the local fakes of Meta and OpenAI reached through
``META_GRAPH_URL`` and ``OPENAI_BASE_URL``.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.devstack import DEFAULT_FAQS, LocalStack
from bot.whatsapp.simulate import new_wamid, signed_delivery, text_message_payload
from released.fakes import FakeMeta, FakeOpenAI

pytestmark = pytest.mark.e2e

FAQS = yaml.safe_load(DEFAULT_FAQS.read_text())
QUESTION = "What is Released?"
ANSWER = next(f["a"] for f in FAQS if f["q"] == QUESTION)


def deliver(stack: LocalStack, text: str, wamid: str, times: int = 1) -> None:
    payload = text_message_payload(stack.env["PHONE_NUMBER_ID"], text, wamid=wamid)
    body, headers = signed_delivery(payload, stack.env["META_APP_SECRET"])
    for _ in range(times):
        response = httpx.post(f"{stack.urls['web']}/webhook", content=body, headers=headers)
        assert response.status_code == 200, response.text


def replies_to(meta: FakeMeta, wamid: str) -> list[dict[str, Any]]:
    return [m for m in meta.sent() if m["context_message_id"] == wamid]


def wait_for_reply(meta: FakeMeta, wamid: str, timeout: float = 30.0) -> dict[str, Any]:
    found: list[dict[str, Any]] = meta.wait_for(lambda: replies_to(meta, wamid), timeout=timeout)
    return found[0]


def settle(meta: FakeMeta, wamid: str, seconds: float = 2.0) -> list[dict[str, Any]]:
    """Give a duplicate time to show up, then return every reply to ``wamid``."""
    time.sleep(seconds)
    return replies_to(meta, wamid)


def stored_messages(stack: LocalStack) -> list[tuple[str, str, str | None]]:
    db = Path(stack.env["DATABASE_URL"].split("///", 1)[1])
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT direction, status, text FROM messages ORDER BY id").fetchall()
    return [(str(d), str(s), t) for d, s, t in rows]


def worker_samples(stack: LocalStack) -> dict[tuple[str, str, str], float]:
    """The worker's /metrics as {(name, task-or-endpoint, outcome-or-status): value}."""
    text = httpx.get(stack.urls["worker_metrics"], timeout=5).text
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = (sample.name, labels.get("task", labels.get("endpoint", "")),
                   labels.get("outcome", labels.get("status", "")))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def test_grounded_answer_is_sent_once_and_stored(stack: LocalStack, meta: FakeMeta) -> None:
    wamid = new_wamid()
    deliver(stack, QUESTION, wamid)

    reply = wait_for_reply(meta, wamid)
    assert reply["text"] == ANSWER
    assert reply["to"] == "34600000001"
    assert settle(meta, wamid) == [reply]
    assert any(r["message_id"] == wamid for r in meta.reads())
    texts = [text for _, _, text in stored_messages(stack)]
    assert QUESTION in texts and ANSWER in texts

    # Prometheus sees the worker's side too: the task, the model call and the Graph API send.
    samples = worker_samples(stack)
    assert samples[("released_tasks_total", "process_message", "success")] >= 1
    assert samples[("released_graph_requests_total", "send", "200")] >= 1
    assert samples[("released_openai_request_seconds_count", "", "")] >= 1


def test_meta_delivering_twice_is_answered_once(stack: LocalStack, meta: FakeMeta) -> None:
    wamid = new_wamid()
    deliver(stack, QUESTION, wamid, times=2)
    wait_for_reply(meta, wamid)
    assert len(settle(meta, wamid)) == 1


def test_worker_killed_mid_task_loses_nothing(
    stack: LocalStack, meta: FakeMeta, openai_fake: FakeOpenAI
) -> None:
    # The model takes long enough that the worker is surely inside the task when it dies.
    openai_fake.set_latency(5.0)
    wamid = new_wamid()
    deliver(stack, QUESTION, wamid)
    openai_fake.wait_for(lambda: openai_fake.calls().get("POST /v1/responses"), timeout=20)

    stack.kill("worker")  # SIGKILL to the whole worker, as when its pod is killed
    assert replies_to(meta, wamid) == []
    openai_fake.set_latency(0.0)
    stack.start_worker()

    reply = wait_for_reply(meta, wamid, timeout=60)
    assert reply["text"] == ANSWER
    assert len(settle(meta, wamid)) == 1


def test_a_crashed_worker_is_restarted_like_a_pod(stack: LocalStack, meta: FakeMeta) -> None:
    worker = stack.processes["worker"]
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    assert stack.supervise() == ["worker"]
    assert stack.supervise() == []
    wamid = new_wamid()
    deliver(stack, QUESTION, wamid)
    assert wait_for_reply(meta, wamid, timeout=60)["text"] == ANSWER


def web_outcomes(stack: LocalStack) -> dict[str, float]:
    """``released_webhook_requests_total`` of the web tier, by outcome."""
    text = httpx.get(f"{stack.urls['web']}/metrics", timeout=5).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "released_webhook_requests_total"
    }


def test_a_sender_hanging_up_mid_body_is_not_an_error(stack: LocalStack, meta: FakeMeta) -> None:
    """Five senders hang up mid-body: each is seen as a disconnect (a log line and the
    ``disconnected`` outcome), nothing is queued or answered, no traceback, and the next
    delivery is answered as usual."""
    before = web_outcomes(stack)
    lines_before = stack.log_text("web").count("webhook.client_disconnected")
    host, port = stack.urls["web"].removeprefix("http://").split(":")
    for _ in range(5):
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"POST /webhook HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 1000\r\n\r\n{\"object\": \"whatsapp_")
    deadline = time.monotonic() + 10
    while web_outcomes(stack).get("disconnected", 0) < before.get("disconnected", 0) + 5:
        assert time.monotonic() < deadline, web_outcomes(stack)
        time.sleep(0.1)
    after = web_outcomes(stack)
    assert after["disconnected"] - before.get("disconnected", 0) == 5
    for outcome in ("accepted", "error", "malformed", "bad_signature"):
        assert after.get(outcome, 0) == before.get(outcome, 0), outcome
    log = stack.log_text("web")
    assert log.count("webhook.client_disconnected") - lines_before == 5
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log
    # The web tier is still there for the next delivery.
    wamid = new_wamid()
    deliver(stack, QUESTION, wamid)
    assert wait_for_reply(meta, wamid)["text"] == ANSWER
