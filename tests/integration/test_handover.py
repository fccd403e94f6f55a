"""Handover to a person in the worker, against real Redis and PostgreSQL and the fakes of Meta
and OpenAI: every trigger, the silence while held, the handover message, the signed
notification (a local receiver on 127.0.0.1), staff echoes and foreign statuses, staff replies.

The Celery tasks run eagerly (``Task.apply``), as in ``test_worker.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import update

import bot.tasks as tasks
from bot import admin
from bot.core.config import Settings
from bot.core.metrics import HANDOVERS
from bot.handover import TOOL_NAME, verify_signature
from bot.storage import repository as repo
from bot.storage.db import session_scope
from bot.storage.models import Conversation, Message
from bot.whatsapp.events import EchoMessage, InboundMessage
from released.fakes import FakeMeta, FakeOpenAI
from tests.integration.worker_support import PHONE, USER, inbound, process, reply_to, stored

pytestmark = pytest.mark.integration

NOTIFY_SECRET = "a-notification-secret-for-tests"


class Receiver:
    """A notification receiver on 127.0.0.1 answering the scripted statuses, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), 1_000_000)
                body = self.rfile.read(length)
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/released"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _eager_notifications(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queueing a notification runs it at once, in this process (no broker here)."""

    def apply_async(args: list[Any], **_: Any) -> Any:
        return tasks.notify_handover.apply(args=args)

    monkeypatch.setattr(tasks.notify_handover, "apply_async", apply_async)


@pytest.fixture
def handover(
    settings: Settings, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    s = settings.model_copy(update={
        "handover_enabled": True,
        "fallback_message": None,
        "handover_notify_url": receiver.url,
        "handover_notify_secret": SecretStr(NOTIFY_SECRET),
    })
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    _eager_notifications(monkeypatch)
    return s


def conversation(settings: Settings, wa_id: str = USER) -> Conversation:
    async def get() -> Conversation:
        async with session_scope(settings) as session:
            conv = await repo.resolve_conversation(session, PHONE, repo.identities(wa_id))
            return conv

    return tasks.run_async(get())


def counted(reason: str) -> float:
    return HANDOVERS.labels(reason=reason)._value.get()  # type: ignore[attr-defined,no-any-return]


def test_a_user_asking_for_a_person_is_handed_over_and_the_bot_goes_quiet(
    handover: Settings, meta: FakeMeta, oai: FakeOpenAI, receiver: Receiver
) -> None:
    before = counted("user_request")
    process(inbound("wamid.P1", "What are your opening hours?"))
    result = process(inbound("wamid.P2", "Quiero HABLAR con una persona, por favor"))
    assert result["outcome"] == "replied" and result["source"] == "handover"
    assert len(oai.response_requests()) == 1  # the phrase needed no model call
    sent = meta.sent()[-1]
    assert sent["context_message_id"] == "wamid.P2"
    assert "passed your conversation to a person" in sent["text"]
    assert counted("user_request") == before + 1

    # The team is told once, signed, with the conversation so far.
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert verify_signature(NOTIFY_SECRET, body, headers["x-released-signature-256"])
    note = json.loads(body)
    assert headers["x-released-delivery"] == note["id"]
    conv = conversation(handover)
    assert note["event"] == "handover" and note["reason"] == "user_request"
    assert note["conversation"] == conv.id and note["user"] == USER
    assert [m["text"] for m in note["messages"]][:3] == [
        "What are your opening hours?", "Monday to Friday, 9:00 to 18:00.",
        "Quiero HABLAR con una persona, por favor",
    ]
    assert datetime.fromisoformat(note["heldUntil"]) > datetime.now(UTC) + timedelta(hours=23)

    # Held: the user's next messages are stored and counted, and nobody is answered by the bot.
    sends = len(meta.sent())
    for n in range(3):
        again = process(inbound(f"wamid.P{3 + n}", "¿hola? ¿hay alguien?"))
        assert again["outcome"] == "not_answered" and again["reason"] == "held"
    assert len(meta.sent()) == sends and len(oai.response_requests()) == 1
    conv = conversation(handover)
    assert conv.held_reason == "user_request" and conv.held_messages == 3
    assert len(receiver.received) == 1  # no second notification for the same handover

    # Released: the bot answers again.
    tasks.run_async(admin.release_conversation(handover, conv.id or 0))
    back = process(inbound("wamid.P9", "What are your opening hours?"))
    assert back["outcome"] == "replied" and back["source"] == "model"


def test_the_model_can_hand_over_with_its_tool(
    handover: Settings, meta: FakeMeta, oai: FakeOpenAI, receiver: Receiver
) -> None:
    oai.script_replies([{"function_call": {"name": TOOL_NAME,
                                           "arguments": {"reason": "wants a refund"}}}])
    result = process(inbound("wamid.T1", "My parcel arrived broken, I want my money back"))
    assert result["source"] == "handover"
    request = oai.response_requests()[-1]
    assert [t["name"] for t in request["tools"] if t["type"] == "function"] == [TOOL_NAME]
    assert "hand_over_to_person" in request["instructions"]
    assert "passed your conversation to a person" in meta.sent_texts()[-1]
    assert receiver.bodies()[-1]["reason"] == "model_request"
    assert conversation(handover).held_reason == "model_request"


def test_the_nth_fallback_in_a_row_hands_over_instead(
    handover: Settings, meta: FakeMeta, oai: FakeOpenAI, receiver: Receiver
) -> None:
    oai.script_errors([{"kind": "bad_request", "times": 10}])  # no retry fixes it
    first = process(inbound("wamid.F1", "Do you sell bicycles?"))
    assert first["source"] == "fallback"
    text = meta.sent_texts()[-1]
    assert "can't answer that right now" in text and '"talk to a person"' in text
    assert conversation(handover).consecutive_fallbacks == 1
    second = process(inbound("wamid.F2", "And tricycles?"))
    assert second["source"] == "handover"
    assert "passed your conversation to a person" in meta.sent_texts()[-1]
    conv = conversation(handover)
    assert conv.held_reason == "fallbacks" and conv.consecutive_fallbacks == 0
    assert receiver.bodies()[-1]["reason"] == "fallbacks"


def test_an_answer_in_between_resets_the_fallbacks(
    handover: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    oai.script_errors([{"kind": "bad_request", "times": 1}])
    assert process(inbound("wamid.R1", "Do you sell bicycles?"))["source"] == "fallback"
    assert process(inbound("wamid.R2"))["source"] == "model"
    oai.script_errors([{"kind": "bad_request", "times": 1}])
    assert process(inbound("wamid.R3", "Do you sell bicycles?"))["source"] == "fallback"
    assert conversation(handover).held_until is None


def test_an_order_is_handed_over(
    handover: Settings, meta: FakeMeta, oai: FakeOpenAI, receiver: Receiver
) -> None:
    result = process(inbound("wamid.O1", None, kind="order", details={
        "items": [{"product_retailer_id": "SKU-1", "quantity": 2, "item_price": 10.0,
                   "currency": "EUR"}]}))
    assert result["source"] == "handover"
    assert meta.sent_texts()[-1] == (
        "Thanks for your order: 2 x SKU-1 (10.00 EUR). A person from our team will confirm "
        "it shortly."
    )
    assert receiver.bodies()[-1]["reason"] == "order"
    assert not oai.response_requests()


def test_without_handover_nobody_is_promised(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings.model_copy(update={"fallback_message": None})
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    assert process(inbound("wamid.N1", "I want to talk to a person"))["source"] == "model"
    request = oai.response_requests()[-1]
    assert "tools" not in request and "nobody is notified" in request["instructions"]
    oai.script_errors([{"kind": "bad_request", "times": 3}])
    for n in range(3):
        assert process(inbound(f"wamid.N{2 + n}", "Bicycles?"))["source"] == "fallback"
    assert "person" not in meta.sent_texts()[-1]
    process(inbound("wamid.N9", None, kind="order", details={"items": []}))
    assert "person" not in meta.sent_texts()[-1]
    assert conversation(s).held_until is None


def test_a_staff_echo_holds_the_conversation_even_without_handover(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    before = counted("staff_echo")
    echo = {"wamid": "wamid.ECHO1", "phone_number_id": PHONE, "wa_id": USER, "kind": "text",
            "text": "Hola Ana, soy Lucía de la tienda"}
    assert tasks.process_echo.apply(args=[echo]).get() == "stored"
    assert tasks.process_echo.apply(args=[echo]).get() == "duplicate"
    assert counted("staff_echo") == before + 1
    conv = conversation(settings)
    assert conv.held_reason == "staff_echo" and conv.held_by == "WhatsApp Business app"
    result = process(inbound("wamid.E2", "What are your opening hours?"))
    assert result["reason"] == "held"
    assert meta.sent() == [] and oai.response_requests() == []


def test_an_old_echo_after_a_release_holds_nothing(settings: Settings, meta: FakeMeta) -> None:
    process(inbound("wamid.OE1"))
    conv = conversation(settings)
    tasks.run_async(admin.release_conversation(settings, conv.id or 0))
    old = {"wamid": "wamid.ECHO2", "phone_number_id": PHONE, "wa_id": USER, "kind": "text",
           "text": "late", "timestamp": (datetime.now(UTC) - timedelta(minutes=5)).isoformat()}
    assert tasks.process_echo.apply(args=[old]).get() == "stored"
    assert conversation(settings).held_until is None
    assert process(inbound("wamid.OE2"))["outcome"] == "replied"


def test_a_status_of_a_message_the_bot_did_not_send_holds(
    settings: Settings, meta: FakeMeta, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "STATUS_UNKNOWN_DELAY", 0.0)
    status = {"wamid": "wamid.OTHERTOOL1", "phone_number_id": PHONE, "recipient_id": USER,
              "status": "delivered"}
    assert tasks.record_status.apply(args=[status]).get() == "unknown"
    conv = conversation(settings)
    assert conv.held_reason == "foreign_status"
    assert process(inbound("wamid.S2"))["reason"] == "held"


def test_a_status_while_a_bot_reply_is_unconfirmed_is_not_foreign(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def pending() -> None:
        async with session_scope(settings) as session:
            record = await repo.record_inbound(session, InboundMessage.model_validate(
                inbound("wamid.U1")))
            await repo.record_outbound_pending(session, record.conversation.id or 0,
                                               "wamid.U1", "answer", source="model")

    tasks.run_async(pending())
    monkeypatch.setattr(tasks, "STATUS_UNKNOWN_DELAY", 0.0)
    status = {"wamid": "wamid.MAYBEOURS", "phone_number_id": PHONE, "recipient_id": USER,
              "status": "sent"}
    tasks.record_status.apply(args=[status]).get()
    assert conversation(settings).held_until is None


def test_a_pending_bot_reply_is_dropped_when_a_person_took_over(
    settings: Settings, meta: FakeMeta
) -> None:
    async def pending_then_echo() -> None:
        async with session_scope(settings) as session:
            record = await repo.record_inbound(session, InboundMessage.model_validate(
                inbound("wamid.D1")))
            await repo.record_outbound_pending(session, record.conversation.id or 0,
                                               "wamid.D1", "the bot's stale answer",
                                               source="model")

    tasks.run_async(pending_then_echo())
    echo = {"wamid": "wamid.ECHO3", "phone_number_id": PHONE, "wa_id": USER, "kind": "text",
            "text": "I'll take it from here"}
    tasks.process_echo.apply(args=[echo]).get()
    result = process(inbound("wamid.D1"))  # the retry of the first attempt
    assert result["reason"] == "held" and meta.sent() == []
    reply = reply_to(settings, "wamid.D1")
    assert reply is not None and reply.status == "failed"
    assert reply.error_title == "not sent: a person took the conversation over"


def test_a_hold_that_expires_lets_the_bot_answer_again(settings: Settings) -> None:
    echo = {"wamid": "wamid.ECHO4", "phone_number_id": PHONE, "wa_id": USER, "kind": "text",
            "text": "hi"}
    tasks.process_echo.apply(args=[echo]).get()
    assert process(inbound("wamid.X1"))["reason"] == "held"

    async def expire() -> None:
        async with session_scope(settings) as session:
            await session.execute(update(Conversation).values(
                held_until=datetime.now(UTC) - timedelta(seconds=1)))

    tasks.run_async(expire())
    assert process(inbound("wamid.X2"))["outcome"] == "replied"


def test_the_notification_is_retried_and_delivered_once(
    handover: Settings, receiver: Receiver
) -> None:
    receiver.statuses = [503, 500]  # the receiver is down for two tries
    process(inbound("wamid.NR1", "I want to talk to a human"))
    assert [status for status in receiver.statuses] == []
    bodies = receiver.bodies()
    assert len(bodies) == 3 and len({b["id"] for b in bodies}) == 1
    # The same task delivered again (a worker died before acknowledging it): nothing is sent.
    payload = {"id": bodies[0]["id"], "conversation": bodies[0]["conversation"],
               "reason": "user_request", "heldUntil": bodies[0]["heldUntil"]}
    assert tasks.notify_handover.apply(args=[payload]).get() == "duplicate"
    assert len(receiver.received) == 3


def test_a_receiver_that_refuses_is_not_retried_and_answers_go_on(
    handover: Settings, meta: FakeMeta, receiver: Receiver
) -> None:
    receiver.statuses = [400]
    result = process(inbound("wamid.NF1", "talk to a human please"))
    assert result["source"] == "handover" and len(receiver.received) == 1
    payload = {"id": "x", "conversation": "not a number"}
    assert tasks.notify_handover.apply(args=[payload]).get() == "invalid"


def test_an_unreachable_receiver_never_fails_the_answer(
    settings: Settings, meta: FakeMeta, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The notification runs eagerly here, and the port refuses at once: this shows that its
    # failure does not fail the answer. That the answer never waits for the receiver needs a
    # real worker: tests/e2e/test_handover_e2e.py, with a receiver that never answers.
    s = settings.model_copy(update={
        "handover_enabled": True, "max_task_retries": 1,
        "handover_notify_url": "http://127.0.0.1:9/nobody-listens",
        "handover_notify_secret": SecretStr(NOTIFY_SECRET),
    })
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    _eager_notifications(monkeypatch)
    result = process(inbound("wamid.NU1", "talk to a person"))
    assert result["outcome"] == "replied" and result["source"] == "handover"
    assert "passed your conversation" in meta.sent_texts()[-1]


def test_a_staff_reply_is_sent_as_the_business_and_stored(
    settings: Settings, meta: FakeMeta
) -> None:
    process(inbound("wamid.SR1"))
    conv = conversation(settings)
    message_id = tasks.run_async(admin.store_reply(settings, conv.id or 0, "Hola, soy Lucía"))
    assert tasks.send_staff_reply.apply(args=[{"message": message_id}]).get() == "replied"
    sent = meta.sent()[-1]
    assert sent["to"] == USER and sent["text"] == "Hola, soy Lucía"
    assert sent["context_message_id"] is None

    async def row() -> Message | None:
        async with session_scope(settings) as session:
            return await session.get(Message, message_id)

    stored = tasks.run_async(row())
    assert stored is not None and (stored.status, stored.wamid) == ("sent", sent["id"])
    # Run again (a redelivery): nothing is sent twice.
    assert tasks.send_staff_reply.apply(args=[{"message": message_id}]).get() == "duplicate"
    assert len(meta.sent()) == 2
    assert conversation(settings).held_reason == "admin"


def test_the_operators_count_and_retention_while_held(
    settings: Settings, meta: FakeMeta
) -> None:
    from sqlalchemy import text

    from bot.storage.ingest import IngestStore

    echo = {"wamid": "wamid.ECHO9", "phone_number_id": PHONE, "wa_id": USER, "kind": "text",
            "text": "staff here"}
    tasks.process_echo.apply(args=[echo]).get()
    assert process(inbound("wamid.K1", "are you there?"))["reason"] == "held"
    assert process(inbound("wamid.K1", "are you there?"))["reason"] == "held"  # redelivered
    assert conversation(settings).held_messages == 1

    async def counts() -> tuple[int, int]:
        async with session_scope(settings) as session:
            # The operator's count for the agent's status (and its per-number form).
            operator = (await session.execute(text(
                "SELECT count(*) FROM conversations WHERE held_until > now()"))).scalar_one()
            mine = (await session.execute(text(
                "SELECT count(*) FROM conversations WHERE held_until > now() "
                "AND phone_number_id = :pn"), {"pn": PHONE})).scalar_one()
            assert mine == operator
        ingest = IngestStore(settings.database_url)
        try:
            web = await ingest.count_held()
        finally:
            await ingest.aclose()
        return int(operator), web

    assert tasks.run_async(counts()) == (1, 1)

    async def purge_later() -> int:
        async with session_scope(settings) as session:
            return await repo.purge_older_than(
                session, settings.retention_days,
                now=datetime.now(UTC) + timedelta(days=settings.retention_days + 1))

    # Retention applies to what came in while held, as to everything else.
    assert stored(settings, "wamid.K1") is not None
    assert tasks.run_async(purge_later()) >= 2
    assert stored(settings, "wamid.K1") is None and stored(settings, "wamid.ECHO9") is None


def test_a_person_taking_over_while_the_model_thinks_wins(
    settings: Settings, meta: FakeMeta, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import service

    compose = service.compose_answer

    async def slow_model(*args: Any, **kwargs: Any) -> Any:
        answer = await compose(*args, **kwargs)
        # Staff write from the Business app before the model's answer is stored.
        await service.record_echo(EchoMessage.model_validate(
            {"wamid": "wamid.ECHO-RACE", "phone_number_id": PHONE, "wa_id": USER,
             "kind": "text", "text": "I'm here, Ana"}), settings)
        return answer

    monkeypatch.setattr(service, "compose_answer", slow_model)
    result = process(inbound("wamid.RACE1"))
    assert result["outcome"] == "not_answered" and result["reason"] == "held"
    assert meta.sent() == []
    reply = reply_to(settings, "wamid.RACE1")
    assert reply is not None and reply.status == "failed"
