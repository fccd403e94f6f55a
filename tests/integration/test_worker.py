"""The worker's tasks against real Redis and PostgreSQL and the fakes of Meta and OpenAI.

The Celery tasks run eagerly (``Task.apply``: retries re-run at once, without the countdown),
in this thread, on the per-process event loop of ``bot.tasks`` like in a worker.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import bot.tasks as tasks
from bot import retention
from bot.core.config import Settings
from bot.dedup import DONE, dedup_key
from bot.storage import repository as repo
from bot.storage.db import session_scope
from released.fakes import FakeMeta, FakeOpenAI
from tests.integration.worker_support import (
    PHONE,
    SEND,
    USER,
    inbound,
    process,
    reply_to,
    stored,
)

pytestmark = pytest.mark.integration


def test_faq_question_is_answered_once_quoting_the_message(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    result = process(inbound("wamid.Q1"))
    assert result["outcome"] == "replied" and result["source"] == "model"
    sent = meta.sent()
    assert len(sent) == 1
    assert sent[0]["to"] == USER and sent[0]["context_message_id"] == "wamid.Q1"
    assert sent[0]["text"] == "Monday to Friday, 9:00 to 18:00."
    assert [r["message_id"] for r in meta.reads()] == ["wamid.Q1"]
    request = oai.response_requests()[0]
    assert "Q: What are your opening hours?" in request["instructions"]
    assert request["input"][-1] == {"role": "user", "content": "What are your opening hours?"}

    inbound_row = stored(settings, "wamid.Q1")
    assert inbound_row is not None and inbound_row.status == "received"
    reply = reply_to(settings, "wamid.Q1")
    assert reply is not None
    assert (reply.status, reply.wamid, reply.source) == ("sent", sent[0]["id"], "model")

    # Meta delivers the same message again: nothing is sent, the model is not asked.
    again = process(inbound("wamid.Q1"))
    assert again["outcome"] == "duplicate" and again["reply_wamid"] == sent[0]["id"]
    assert len(meta.sent()) == 1
    assert len(oai.response_requests()) == 1


def test_an_answered_message_is_marked_done_for_the_web_tier(
    settings: Settings, meta: FakeMeta
) -> None:
    """The worker marks the wamid's claim done once the message's inbox row is gone, so that
    a later redelivery's row is deleted again by the web tier (``bot.dedup``)."""
    client = redis.Redis.from_url(settings.redis_url)
    key = dedup_key(PHONE, "wamid.D1")
    try:
        client.set(key, "1", ex=3600)  # claimed when the web tier queued it
        assert process(inbound("wamid.D1"))["outcome"] == "replied"
        assert client.get(key) == DONE.encode()
        assert 3500 < client.ttl(key) <= 3600
    finally:
        client.delete(key)
        client.close()


def test_history_is_sent_to_the_model(settings: Settings, oai: FakeOpenAI) -> None:
    process(inbound("wamid.H1"))
    process(inbound("wamid.H2", "How long do you keep messages?"))
    last = oai.response_requests()[-1]["input"]
    assert [m["role"] for m in last] == ["user", "assistant", "user"]
    assert last[1]["content"] == "Monday to Friday, 9:00 to 18:00."


def test_messages_past_retention_are_not_sent_to_the_model(
    settings: Settings, oai: FakeOpenAI
) -> None:
    """Before the hourly purge deletes them, messages past retention are still stored: the
    model is not given them."""
    process(inbound("wamid.RH1"))

    async def age() -> None:
        async with session_scope(settings) as session:
            question = await repo.get_message(session, "wamid.RH1")
            answer = await repo.find_reply(session, "wamid.RH1")
            for msg in (question, answer):
                assert msg is not None
                msg.created_at = datetime.now(UTC) - timedelta(days=settings.retention_days + 1)
                session.add(msg)

    tasks.run_async(age())
    process(inbound("wamid.RH2", "How long do you keep messages?"))
    last = oai.response_requests()[-1]["input"]
    assert [m["role"] for m in last] == ["user"]
    assert stored(settings, "wamid.RH1") is not None  # not purged yet: left out all the same


def test_model_failures_fall_back_to_the_faq(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    oai.script_errors([{"kind": "server_error", "times": 20}])
    result = process(inbound("wamid.M1", "opening hours?"))
    assert result["outcome"] == "replied" and result["source"] == "faq"
    # openai_max_retries=2: the first attempt and two retries asked the model.
    assert oai.calls().get("POST /v1/responses") == 3
    assert meta.sent_texts() == ["Monday to Friday, 9:00 to 18:00."]

    result = process(inbound("wamid.M2", "Do you sell bicycles?"))
    assert result["source"] == "fallback"
    assert meta.sent_texts()[-1] == "Thanks! A person will answer soon."
    oai.clear_errors()


def test_openai_rate_limit_is_retried_then_answered_by_the_model(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    oai.script_errors(["rate_limit"])
    result = process(inbound("wamid.R1"))
    assert result["source"] == "model"
    assert oai.calls().get("POST /v1/responses") == 2
    assert len(meta.sent()) == 1


def test_reengagement_error_is_recorded_as_failed_without_retry(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    meta.script_errors([{"kind": "re_engagement", "endpoint": "messages", "times": 5}])
    result = process(inbound("wamid.F1"))
    assert result["outcome"] == "failed" and result["error_code"] == 131047
    sends = [r for r in meta.requests(SEND) if (r["body"] or {}).get("type") == "text"]
    assert len(sends) == 1  # no retry
    reply = reply_to(settings, "wamid.F1")
    assert reply is not None
    assert (reply.status, reply.error_code) == ("failed", 131047)
    assert reply.wamid is None
    # A redelivery does not try again either.
    assert process(inbound("wamid.F1"))["outcome"] == "duplicate"
    meta.clear_errors()


def test_graph_rate_limit_is_retried_with_the_stored_answer(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    # The mark-as-read call goes first; then the send hits the throughput limit twice.
    meta.script_errors([{"kind": "rate_limit", "times": 1}])  # mark as read: ignored
    result = process(inbound("wamid.G0"))
    assert result["outcome"] == "replied"
    meta.reset()
    oai.reset()

    calls: list[str] = []
    original = tasks.service.GraphClient.send_text

    async def flaky(self: Any, to: str, text: str, **kw: Any) -> Any:
        calls.append(text)
        if len(calls) <= 2:
            raise tasks.service.GraphRetryableError("throughput", code=130429, retry_after=1)
        return await original(self, to, text, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks.service.GraphClient, "send_text", flaky)
        result = process(inbound("wamid.G1"))
    assert result["outcome"] == "replied"
    assert calls == ["Monday to Friday, 9:00 to 18:00."] * 3
    assert len(oai.response_requests()) == 1  # the answer was stored, not asked again
    assert len(meta.sent()) == 1


def test_send_still_failing_on_last_attempt_is_recorded(settings: Settings, meta: FakeMeta) -> None:
    meta.script_errors([{"kind": "unavailable", "endpoint": "messages", "times": 50}])
    result = process(inbound("wamid.U1"))
    assert result["outcome"] == "failed" and result["error_code"] == 2
    reply = reply_to(settings, "wamid.U1")
    assert reply is not None and reply.status == "failed"
    sends = [r for r in meta.requests(SEND) if (r["body"] or {}).get("type") == "text"]
    assert len(sends) == settings.max_task_retries + 1
    meta.clear_errors()


def test_messages_without_text_get_a_polite_answer_without_the_model(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    result = process(inbound("wamid.I1", None, kind="image", details={"mime_type": "image/jpeg"}))
    assert result["source"] == "canned"
    assert "only read text" in meta.sent_texts()[0]
    assert oai.calls().get("POST /v1/responses") is None
    # A caption goes to the model, with what was attached named.
    assert process(inbound("wamid.I2", "opening hours", kind="image"))["source"] == "model"
    question = oai.response_requests()[-1]["input"][-1]["content"]
    assert question.startswith("[The user attached a photo") and question.endswith("opening hours")


def test_reactions_are_stored_not_answered(settings: Settings, meta: FakeMeta) -> None:
    result = process(inbound("wamid.RE", "👍", kind="reaction"))
    assert result["outcome"] == "not_answered"
    assert meta.sent() == []
    assert stored(settings, "wamid.RE") is not None


def test_invalid_payload_is_dropped(settings: Settings, meta: FakeMeta) -> None:
    assert process({"wamid": "", "kind": "text"})["outcome"] == "invalid"
    assert meta.sent() == []


def status(wamid: str, kind: str, **kw: Any) -> dict[str, Any]:
    return {"wamid": wamid, "phone_number_id": PHONE, "recipient_id": USER, "status": kind, **kw}


def test_statuses_update_stored_messages(settings: Settings, meta: FakeMeta) -> None:
    sent_wamid = process(inbound("wamid.S1"))["reply_wamid"]
    for kind, expected in [
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("read", "read"),
        ("delivered", "read"),
    ]:
        tasks.record_status.apply(args=[status(sent_wamid, kind)]).get()
        reply = reply_to(settings, "wamid.S1")
        assert reply is not None and reply.status == expected

    other = process(inbound("wamid.S2"))["reply_wamid"]
    failed = status(other, "failed", error_code=131026, error_title="Message Undeliverable")
    assert tasks.record_status.apply(args=[failed]).get() == "applied"
    reply = reply_to(settings, "wamid.S2")
    assert reply is not None
    assert (reply.status, reply.error_code, reply.error_title) == (
        "failed",
        131026,
        "Message Undeliverable",
    )
    # Unknown wamids are retried a few times (the sender may not have stored it yet), then
    # dropped.
    assert tasks.record_status.apply(args=[status("wamid.nope", "read")]).get() == "unknown"


def test_purge_deletes_only_old_messages(settings: Settings) -> None:
    process(inbound("wamid.P-old"))
    process(inbound("wamid.P-new"))

    async def age() -> None:
        async with session_scope(settings) as session:
            msg = await repo.get_message(session, "wamid.P-old")
            assert msg is not None
            msg.created_at = datetime.now(UTC) - timedelta(days=settings.retention_days + 1)
            session.add(msg)

    tasks.run_async(age())
    assert tasks.run_async(retention.purge(settings)) == 1
    assert stored(settings, "wamid.P-old") is None
    assert stored(settings, "wamid.P-new") is not None
    assert reply_to(settings, "wamid.P-old") is not None  # its reply is recent
    assert tasks.run_async(retention.purge(settings)) == 0


def test_retry_countdown_backs_off_with_jitter_and_honors_retry_after() -> None:
    for retries in range(6):
        ceiling = min(300.0, 2.0 * 2**retries)
        for _ in range(20):
            assert ceiling / 2 <= tasks.retry_countdown(retries) <= ceiling
    assert tasks.retry_countdown(10) <= 300
    assert 7 <= tasks.retry_countdown(0, 7) <= 8
    assert tasks.retry_countdown(0, 5000, cap=60) == 60


def test_celery_app_configuration() -> None:
    conf = tasks.app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == Settings().celery_visibility_timeout
    assert options["unacked_restore_throttle"] == 1
    # Several tasks at once in one process; nothing scheduled by Celery (the purge is a
    # CronJob running `released purge`, the account check a worker's own timer).
    assert conf.worker_pool == "threads"
    assert not conf.beat_schedule
    assert set(tasks.app.tasks) >= {
        "bot.tasks.process_message",
        "bot.tasks.record_status",
        "bot.tasks.process_echo",
        "bot.tasks.check_meta_account",
    }
    assert "bot.tasks.purge_old_messages" not in tasks.app.tasks


def test_two_workers_racing_on_one_message_send_once(settings: Settings, meta: FakeMeta) -> None:
    import asyncio

    from bot import service
    from bot.whatsapp.events import InboundMessage

    msg = InboundMessage.model_validate(inbound("wamid.RACE"))

    async def race() -> list[service.MessageResult]:
        # Two runtimes, as in two worker processes (one shared database).
        first = service.create_runtime(settings)
        second = service.create_runtime(settings)
        try:
            return list(
                await asyncio.gather(
                    service.handle_message(msg, first), service.handle_message(msg, second)
                )
            )
        finally:
            await first.aclose()
            await second.aclose()

    results = tasks.run_async(race())
    assert sorted(r.outcome.value for r in results) == ["duplicate", "replied"]
    assert len(meta.sent()) == 1


def test_pending_reply_is_resent_only_by_its_own_task(settings: Settings, meta: FakeMeta) -> None:
    # A first delivery of the task stored its answer, then its send failed transiently and the
    # worker died before the retry.
    meta.script_errors([{"kind": "unavailable", "endpoint": "messages", "times": 2}])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "max_task_retries", 0)  # the only attempt is the last one...
        mp.setattr(tasks.service, "_record_failed", _no_record)  # ...and dies before recording
        tasks.process_message.apply(args=[inbound("wamid.C1")], task_id="task-A").get()
    reply = reply_to(settings, "wamid.C1")
    assert reply is not None and (reply.status, reply.claimed_by) == ("pending", "task-A")
    meta.clear_errors()
    meta.reset()
    # Another task for the same message (a duplicate that escaped the web tier's dedup)
    # leaves the live claim alone...
    result = tasks.process_message.apply(args=[inbound("wamid.C1")], task_id="task-B").get()
    assert result["outcome"] == "duplicate" and meta.sent() == []
    # ...while the redelivery of the task that claimed it sends it.
    result = tasks.process_message.apply(args=[inbound("wamid.C1")], task_id="task-A").get()
    assert result["outcome"] == "replied" and len(meta.sent()) == 1


def test_two_runs_of_one_task_send_its_reply_once(settings: Settings, meta: FakeMeta) -> None:
    """Redis hands an unacknowledged task to a second worker once the visibility timeout
    passes, also while a starved worker still runs it: both runs hold the same claim. The
    send lock lets one of them send."""
    import asyncio

    from bot import service
    from bot.whatsapp.events import InboundMessage

    msg = InboundMessage.model_validate(inbound("wamid.TWICE"))
    tasks.run_async(_store_pending(settings, msg, "task-T"))
    meta.set_latency(0.5)  # the sends overlap

    async def both() -> list[service.MessageResult]:
        first = service.create_runtime(settings)
        second = service.create_runtime(settings)
        try:
            return list(
                await asyncio.gather(
                    service.handle_message(msg, first, claim_id="task-T"),
                    service.handle_message(msg, second, claim_id="task-T"),
                )
            )
        finally:
            await first.aclose()
            await second.aclose()

    try:
        results = tasks.run_async(both())
    finally:
        meta.set_latency(0.0)
    assert sorted(r.outcome.value for r in results) == ["duplicate", "replied"]
    assert len(meta.sent()) == 1
    # Later runs see it sent.
    again = tasks.process_message.apply(args=[inbound("wamid.TWICE")], task_id="task-T").get()
    assert again["outcome"] == "duplicate" and len(meta.sent()) == 1


async def _store_pending(settings: Settings, msg: Any, claim: str) -> None:
    async with session_scope(settings) as session:
        record = await repo.record_inbound(session, msg)
        await repo.record_outbound_pending(
            session, record.conversation.id or 0, msg.wamid, "Stored answer", claimed_by=claim
        )


async def _no_record(*_: Any) -> None:
    return None
