"""docs/messages.md, row by row: what the worker does with each kind of message, old messages,
users known by BSUID, a refused Meta account and a user over their rate.

Webhooks are built with ``released.fakes.webhooks`` (today's payload shapes), parsed by the web
tier's parser, and handed to the real ``bot.tasks.process_message`` (run eagerly, see
``test_worker.py``) against real PostgreSQL and Redis and the contract-checked fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import bot.tasks as tasks
from bot import service
from bot.core.config import Settings
from bot.whatsapp.events import InboundMessage
from bot.whatsapp.payload import parse_delivery
from released.fakes import FakeMeta, FakeOpenAI
from released.fakes import webhooks as wh
from tests.integration.worker_support import PHONE, process, reply_to, stored

pytestmark = pytest.mark.integration

USER = wh.WhatsAppUser(phone="15557654321", name="Ana")
QUESTION = "What are your opening hours?"
ANSWER = "Monday to Friday, 9:00 to 18:00."


@pytest.fixture(autouse=True)
def clean_agent_state(redis_url: str) -> Iterator[None]:
    """Account flag, held messages and rate buckets of this agent: none before, none after."""
    import redis

    client = redis.Redis.from_url(redis_url)

    def clear() -> None:
        keys = [k for pattern in (f"released:meta-*{PHONE}*", f"released:ratelimit:*{PHONE}*")
                for k in client.scan_iter(pattern)]
        if keys:
            client.delete(*keys)

    clear()
    yield
    clear()
    client.close()


def event(payload: dict[str, Any]) -> dict[str, Any]:
    """The queued form of the one message in a webhook payload."""
    delivery = parse_delivery(payload, PHONE)
    assert not delivery.quarantined, delivery.quarantined
    [msg] = delivery.messages
    return msg.model_dump(mode="json")


def build(maker: Callable[..., dict[str, Any]], **kw: Any) -> dict[str, Any]:
    kw.setdefault("user", USER)
    return event(maker(phone_number_id=PHONE, **kw))


def model_calls(oai: FakeOpenAI) -> int:
    return oai.calls().get("POST /v1/responses", 0)


def reads_of(meta: FakeMeta, wamid: str) -> list[dict[str, Any]]:
    return [r for r in meta.reads() if r["message_id"] == wamid]


# -- the table -----------------------------------------------------------------------------------

#: (row, builder, arguments, reply expected (substring) or None, the model asked?)
ROWS: list[tuple[str, Callable[..., dict[str, Any]], dict[str, Any], str | None, bool]] = [
    ("text", wh.text_message_event, {"text": QUESTION}, ANSWER, True),
    (
        "button reply",
        wh.interactive_reply_event,
        {"reply_id": "hours", "title": QUESTION},
        ANSWER,
        True,
    ),
    ("template button", wh.button_event, {"text": QUESTION}, ANSWER, True),
    (
        "photo with caption",
        wh.media_message_event,
        {"kind": "image", "caption": QUESTION},
        ANSWER,
        True,
    ),
    ("photo alone", wh.media_message_event, {"kind": "image"}, "only read text", False),
    ("voice note", wh.media_message_event, {"kind": "audio", "voice": True}, "listen", False),
    (
        "location",
        wh.location_event,
        {"name": "Cafe Sol", "address": "Plaza Mayor 1"},
        "your location (Cafe Sol, Plaza Mayor 1)",
        False,
    ),
    ("contact card", wh.contacts_message_event, {}, "sharing the contact", False),
    ("order", wh.order_event, {}, "your order: 2 x SKU-1 (9.50 EUR)", False),
    ("welcome", wh.request_welcome_event, {}, "How can I help you today?", False),
    ("unsupported", wh.unsupported_event, {}, "only read text", False),
    ("sticker", wh.sticker_event, {}, None, False),
    ("reaction", wh.reaction_event, {"reacted_message_id": "wamid.ours"}, None, False),
    ("group message", wh.group_message_event, {"text": QUESTION}, None, False),
]


@pytest.mark.parametrize(
    ("row", "maker", "kwargs", "reply", "asks_model"), ROWS, ids=[r[0] for r in ROWS]
)
def test_each_kind_of_message_gets_its_behaviour(
    settings: Settings,
    meta: FakeMeta,
    oai: FakeOpenAI,
    row: str,
    maker: Callable[..., dict[str, Any]],
    kwargs: dict[str, Any],
    reply: str | None,
    asks_model: bool,
) -> None:
    payload = build(maker, **kwargs)
    result = process(payload)
    wamid = payload["wamid"]
    assert stored(settings, wamid) is not None  # every message is recorded
    assert (model_calls(oai) == 1) is asks_model
    reads = reads_of(meta, wamid)
    if reply is None:
        assert result["outcome"] == "not_answered"
        assert meta.sent() == []
        assert all(r["typing_indicator"] is None for r in reads)  # nothing is coming
        return
    assert result["outcome"] == "replied", result
    [sent] = meta.sent()
    assert reply in sent["text"] and sent["context_message_id"] == wamid
    assert sent["to"] == USER.phone
    # Marked as read with the typing indicator, before the answer.
    assert [r["typing_indicator"] for r in reads] == [{"type": "text"}]
    if asks_model:
        request = oai.response_requests()[-1]
        question = request["input"][-1]["content"]
        assert question.endswith(QUESTION)
        if row == "photo with caption":
            assert question.startswith("[The user attached a photo")


def test_an_edit_is_answered_as_its_new_text_and_a_deletion_is_not(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    first = build(wh.text_message_event, text="Do you open on Sundays?")
    process(first)
    edit = build(
        wh.edit_event, original_message_id=first["wamid"], text="How long do you keep messages?"
    )
    result = process(edit)
    assert result["outcome"] == "replied"
    assert oai.response_requests()[-1]["input"][-1]["content"] == "How long do you keep messages?"
    assert meta.sent_texts()[-1] == "Fourteen days, then they are deleted."

    revoke = build(wh.revoke_event, original_message_id=first["wamid"])
    assert process(revoke)["outcome"] == "not_answered"
    assert len(meta.sent()) == 2
    original = stored(settings, first["wamid"])
    assert original is not None and original.text is None  # the user deleted it


# -- old messages --------------------------------------------------------------------------------


def _sent_at(hours_ago: float) -> int:
    return int((datetime.now(UTC) - timedelta(hours=hours_ago)).timestamp())


def test_a_message_past_the_24_hour_window_gets_no_free_text(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    late = build(wh.text_message_event, text=QUESTION, timestamp=_sent_at(25))
    result = process(late)
    assert (result["outcome"], result["reason"]) == ("not_answered", "outside_window")
    assert meta.sent() == [] and model_calls(oai) == 0
    reply = reply_to(settings, late["wamid"])
    assert reply is not None and (reply.status, reply.error_code) == ("failed", 131047)
    assert reply.error_title is not None and "24 hours" in reply.error_title
    assert process(late)["outcome"] == "duplicate"  # recorded once


def test_a_reengagement_template_is_sent_when_configured(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_template = settings.model_copy(
        update={"reengagement_template": "we_are_back", "reengagement_template_language": "en_US"}
    )
    monkeypatch.setattr(tasks, "get_settings", lambda: with_template)
    late = build(wh.text_message_event, text=QUESTION, timestamp=_sent_at(30))
    result = process(late)
    assert result["outcome"] == "replied" and result["source"] == "template"
    [sent] = meta.sent()
    assert sent["type"] == "template"
    assert sent["body"]["template"] == {"name": "we_are_back", "language": {"code": "en_US"}}
    assert model_calls(oai) == 0


def test_a_message_older_than_the_redelivery_window_is_ignored(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    replay = build(wh.text_message_event, text=QUESTION, timestamp=_sent_at(8 * 24))
    result = process(replay)
    assert (result["outcome"], result["reason"]) == ("not_answered", "too_old")
    assert stored(settings, replay["wamid"]) is None
    assert meta.sent() == [] and meta.reads() == [] and model_calls(oai) == 0


# -- users known by BSUID ------------------------------------------------------------------------


def test_a_bsuid_only_user_is_answered_with_recipient(
    settings: Settings, meta: FakeMeta
) -> None:
    hidden = wh.WhatsAppUser.username_only("Bea")
    payload = build(wh.text_message_event, text=QUESTION, user=hidden)
    assert process(payload)["outcome"] == "replied"
    [sent] = meta.sent()
    assert (sent["to"], sent["recipient"]) == (None, hidden.user_id)
    assert "to" not in sent["body"] and sent["body"]["recipient"] == hidden.user_id


# -- a refused Meta account ----------------------------------------------------------------------


@pytest.fixture
def eager(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tasks the worker queues (held messages resumed, account checks) run at once."""
    monkeypatch.setitem(tasks.app.conf, "task_always_eager", True)
    yield


def test_while_meta_refuses_the_token_messages_are_held_then_answered(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI, eager: None
) -> None:
    meta.expire_token()
    held = [build(wh.text_message_event, text=QUESTION) for _ in range(3)]
    results = [process(p) for p in held]
    assert [r["outcome"] for r in results] == ["held"] * 3
    assert model_calls(oai) == 0  # no model call for an answer that cannot be sent
    assert meta.sent() == []
    assert all(reply_to(settings, p["wamid"]) is None for p in held)

    meta.set_token_state("valid")
    check = tasks.check_meta_account.apply().get()
    assert check["healthy"] is True and check["resumed"] == 3
    texts = meta.sent_texts()
    assert texts == [ANSWER] * 3
    assert {s["context_message_id"] for s in meta.sent()} == {p["wamid"] for p in held}
    assert model_calls(oai) == 3
    assert process(held[0])["outcome"] == "duplicate"


def test_a_send_refused_for_the_account_is_resent_when_it_works_again(
    settings: Settings,
    meta: FakeMeta,
    oai: FakeOpenAI,
    eager: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer was composed, then Meta refused the send (missing permission): the stored
    answer is sent once the account works, without asking the model again."""
    from bot.whatsapp.client import GraphPermanentError
    from released.providers.meta import parse_error

    original = tasks.service.GraphClient.send_text

    async def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        info = parse_error(403, {"error": {"code": 200, "message": "(#200) Permissions error"}})
        raise GraphPermanentError("Graph API send: HTTP 403, code 200", info=info)

    monkeypatch.setattr(tasks.service.GraphClient, "send_text", refused)
    payload = build(wh.text_message_event, text=QUESTION)
    result = process(payload)
    assert result["outcome"] == "held", result
    pending = reply_to(settings, payload["wamid"])
    assert pending is not None and (pending.status, pending.text) == ("pending", ANSWER)

    monkeypatch.setattr(tasks.service.GraphClient, "send_text", original)
    later = build(wh.text_message_event, text="How long do you keep messages?")
    assert process(later)["outcome"] == "replied"  # the probe found the account working
    assert sorted(meta.sent_texts()) == sorted([ANSWER, "Fourteen days, then they are deleted."])
    assert model_calls(oai) == 2  # the held message's answer was not asked for again
    sent = reply_to(settings, payload["wamid"])
    assert sent is not None and sent.status in ("sent", "delivered", "read")


def test_held_messages_whose_window_closed_are_recorded_as_failed(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    meta.revoke_token()
    payload = build(wh.text_message_event, text=QUESTION, timestamp=_sent_at(23))
    assert process(payload)["outcome"] == "held"

    async def expire() -> int:
        rt = service.create_runtime(settings)
        try:
            return await service.expire_held(rt, now=time.time() + 2 * 3600)
        finally:
            await rt.aclose()

    assert tasks.run_async(expire()) == 1
    reply = reply_to(settings, payload["wamid"])
    assert reply is not None and reply.status == "failed" and reply.error_code == 190
    assert reply.error_title is not None and "Meta refused the account (token 190)" in (
        reply.error_title
    )
    assert meta.sent() == [] and model_calls(oai) == 0
    meta.set_token_state("valid")


# -- fairness ------------------------------------------------------------------------------------


def test_a_user_over_their_rate_is_deferred_without_holding_back_others(
    settings: Settings, meta: FakeMeta, oai: FakeOpenAI
) -> None:
    strict = settings.model_copy(
        update={"user_rate_limit_per_minute": 6.0, "user_rate_limit_burst": 1}
    )
    flooder = wh.WhatsAppUser(phone="15550009999")
    other = wh.WhatsAppUser(phone="15550008888")

    async def run() -> list[Any]:
        rt = service.create_runtime(strict)
        out: list[Any] = []
        try:
            for user in (flooder, flooder, other):
                msg = InboundMessage.model_validate(
                    build(wh.text_message_event, text=QUESTION, user=user)
                )
                try:
                    out.append((await service.handle_message(msg, rt)).outcome)
                except service.Deferred as exc:
                    out.append(exc.seconds)
        finally:
            await rt.aclose()
        return out

    first, second, third = tasks.run_async(run())
    assert first == service.Outcome.REPLIED
    assert isinstance(second, float) and 9.0 <= second <= 10.5  # the next slot, 10 s later
    assert third == service.Outcome.REPLIED  # another user is not held back
    assert len(meta.sent()) == 2 and model_calls(oai) == 2


def test_a_retry_that_finds_the_account_refused_holds_its_stored_answer(
    settings: Settings,
    meta: FakeMeta,
    oai: FakeOpenAI,
    eager: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first send failed transiently; meanwhile another worker found the token refused.
    The retry holds the message with its stored answer (released from its claim), and the
    answer is sent once the token works, by the task that picks the message up then."""
    from bot.account import AccountHealth
    from bot.whatsapp.client import GraphRetryableError
    from released.providers.meta import parse_error

    original = tasks.service.GraphClient.send_text
    calls = {"n": 0}

    async def flaky(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            meta.expire_token()
            info = parse_error(401, {"error": {"code": 190, "message": "expired"}})
            await AccountHealth(tasks.service.connect_redis(settings.redis_url), PHONE).flag(info)
            raise GraphRetryableError("Graph API send: timed out")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(tasks.service.GraphClient, "send_text", flaky)
    payload = build(wh.text_message_event, text=QUESTION)
    assert process(payload)["outcome"] == "held"
    pending = reply_to(settings, payload["wamid"])
    assert pending is not None and (pending.status, pending.claimed_by) == ("pending", None)

    meta.set_token_state("valid")
    assert tasks.check_meta_account.apply().get()["resumed"] == 1
    assert meta.sent_texts() == [ANSWER]
    assert model_calls(oai) == 1


def test_the_workers_redis_commands_are_all_granted_to_the_agents_user(
    settings: Settings,
    meta: FakeMeta,
    oai: FakeOpenAI,
    eager: None,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held messages, the account probe, the per-user bucket, the 429 pause and the send lock
    run with only the commands the operator grants the agent's Redis user
    (``REDIS_ACL_PERMISSIONS``): a refused command would silently switch them off."""
    import secrets
    from urllib.parse import urlsplit

    import redis
    from whatsapp_operator.builders.workloads import REDIS_ACL_PERMISSIONS

    from bot.llm.ratelimit import openai_bucket

    admin = redis.Redis.from_url(redis_url)
    user, password = f"bot-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}",
                          *REDIS_ACL_PERMISSIONS.split())
    parts = urlsplit(redis_url)
    restricted = settings.model_copy(
        update={"redis_url": f"redis://{user}:{password}@{parts.hostname}:{parts.port}/0",
                "user_rate_limit_per_minute": 6.0}
    )
    monkeypatch.setattr(tasks, "get_settings", lambda: restricted)
    admin.execute_command("ACL", "LOG", "RESET")
    try:
        meta.expire_token()
        held = build(wh.text_message_event, text=QUESTION)
        assert process(held)["outcome"] == "held"
        meta.set_token_state("valid")
        assert tasks.check_meta_account.apply().get()["resumed"] == 1
        assert process(build(wh.text_message_event, text=QUESTION))["outcome"] == "replied"

        async def pause() -> float:
            rt = service.create_runtime(restricted)
            try:
                return await openai_bucket(restricted, rt.redis).penalize(0.1)
            finally:
                await rt.aclose()

        assert tasks.run_async(pause()) > 0
        assert len(meta.sent()) == 2
        refused = [e for e in admin.acl_log(count=100) if e.get("username") == user
                   and str(e.get("object")) not in {"client", "client|setinfo"}]
        assert refused == []
    finally:
        tasks.shutdown()
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()
