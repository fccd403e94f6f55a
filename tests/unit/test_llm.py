"""The LLM side: FAQ loading and matching, instructions, the Responses API call and its error
mapping and fallback (through httpx.MockTransport), and the Redis token bucket (real Redis)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from pydantic import SecretStr

from bot.core.config import Settings
from bot.handover import asks_for_person, fallback_text
from bot.llm import faqs as faqs_mod
from bot.llm.client import Answer, ModelError, Turn, answer, ask_model, fallback_answer, make_client
from bot.llm.faqs import FAQ, FAQError, build_instructions, load_faqs, match_faq
from bot.llm.ratelimit import (
    RateLimitTimeout,
    TokenBucket,
    bucket_key,
    openai_bucket,
    user_bucket,
)
from bot.llm.responses import ResponsesClient

FAQS = [
    FAQ(q="What are your opening hours?", a="Mon-Fri 9:00-18:00."),
    FAQ(q="How long do you keep messages?", a="14 days."),
    FAQ(q="¿Qué es Released?", a="Bots de WhatsApp."),
    FAQ(q="What is Released?", a="WhatsApp bots on Kubernetes."),
]


# -- FAQs -----------------------------------------------------------------------------------


def test_load_faqs_yaml_json_and_wrapped(tmp_path: Path) -> None:
    y = tmp_path / "faqs.yaml"
    y.write_text("- q: Hours?\n  a: Nine to five.\n", encoding="utf-8")
    j = tmp_path / "faqs.json"
    j.write_text(json.dumps({"faqs": [{"q": "Price?", "a": "Free."}]}), encoding="utf-8")
    assert load_faqs(y) == [FAQ(q="Hours?", a="Nine to five.")]
    assert load_faqs(j) == [FAQ(q="Price?", a="Free.")]
    assert load_faqs(None) == []
    assert len(load_faqs(faqs_mod.EMBEDDED_FAQS_PATH)) >= 3


def test_load_faqs_reloads_when_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "faqs.yaml"
    path.write_text("- {q: 'A?', a: one}\n", encoding="utf-8")
    assert load_faqs(path)[0].a == "one"
    path.write_text("- {q: 'A?', a: two, extra: ignored}\n", encoding="utf-8")
    assert load_faqs(path)[0].a == "two"


@pytest.mark.parametrize(
    "content", ["- q: only a question\n", "{not yaml: [", "just a string", "- {q: '', a: x}\n"]
)
def test_bad_faq_files_raise_faq_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "faqs.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FAQError):
        load_faqs(path)
    with pytest.raises(FAQError):
        load_faqs(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("what are your opening hours?", "Mon-Fri 9:00-18:00."),
        ("OPENING HOURS", "Mon-Fri 9:00-18:00."),
        ("how long do you keep my messages", "14 days."),
        ("What is Released", "WhatsApp bots on Kubernetes."),
        ("que es released", "Bots de WhatsApp."),
        ("hi", None),
        ("what?", None),
        ("do you sell shoes", None),
        ("", None),
    ],
)
def test_match_faq(question: str, expected: str | None) -> None:
    match = match_faq(question, FAQS)
    assert (match[0].a if match else None) == expected


def test_build_instructions_has_persona_language_faqs_and_rule() -> None:
    settings = Settings(openai_instructions="You are Ana from Acme.", language="es")
    text = build_instructions(settings, FAQS)
    assert text.startswith("You are Ana from Acme.")
    assert "Spanish" in text
    assert "Answer only from these FAQs" in text
    assert "Q: What are your opening hours?\nA: Mon-Fri 9:00-18:00." in text
    assert "file_search" not in text
    with_store = build_instructions(Settings(openai_vector_store_id="vs_1"), [])
    assert "file_search" in with_store and "FAQs: (none)" in with_store


# -- the Responses API ----------------------------------------------------------------------


def response_body(text: str = "Hello from the model") -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-test",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 120,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 8,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 128,
        },
    }


class Recorder:
    def __init__(self, responder: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []
        self.responder = responder

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responder(request)

    def client(self, settings: Settings) -> ResponsesClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self))
        return make_client(settings, http_client=http)

    def json(self, i: int = -1) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.requests[i].content)
        return body


def settings_for(**kw: Any) -> Settings:
    kw.setdefault("openai_model", "gpt-test")
    kw.setdefault("openai_api_key", SecretStr("sk-test-key"))
    return Settings(openai_base_url="http://openai.test/v1", **kw)


async def test_ask_model_sends_grounded_request_and_reads_usage() -> None:
    settings = settings_for(openai_max_output_tokens=123)
    rec = Recorder(lambda r: httpx.Response(200, json=response_body()))
    history = [Turn("user", "hi"), Turn("assistant", "Hello!"), Turn("user", "  ")]
    result = await ask_model(
        "When do you open?", history, FAQS, settings, client=rec.client(settings)
    )
    assert result == Answer("Hello from the model", "model", 128, 120, 8)
    req = rec.requests[0]
    assert req.url.path == "/v1/responses"
    assert req.headers["authorization"] == "Bearer sk-test-key"
    body = rec.json()
    assert body["model"] == "gpt-test"
    assert body["max_output_tokens"] == 123
    assert "Q: What are your opening hours?" in body["instructions"]
    assert body["input"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "When do you open?"},
    ]
    assert "tools" not in body


async def test_file_search_only_when_the_faqs_do_not_fit() -> None:
    settings = settings_for(openai_vector_store_id="vs_abc")
    rec = Recorder(lambda r: httpx.Response(200, json=response_body()))
    await ask_model("q", [], FAQS, settings, client=rec.client(settings))
    assert "tools" not in rec.json()  # every FAQ is in the instructions: no search needed
    assert "file_search" not in rec.json()["instructions"]

    many = [FAQ(q=f"Question number {i}?", a="x" * 1000) for i in range(100)]
    await ask_model("q", [], many, settings, client=rec.client(settings))
    assert rec.json()["tools"] == [{"type": "file_search", "vector_store_ids": ["vs_abc"]}]
    assert "file_search" in rec.json()["instructions"]
    assert "Question number 0?" in rec.json()["instructions"]  # as many as fit are there


async def test_request_carries_effort_verbosity_cache_key_and_safety_identifier() -> None:
    settings = settings_for(
        openai_model="gpt-6-luna",
        openai_reasoning_effort="minimal",
        openai_verbosity="low",
        phone_number_id="555",
    )
    rec = Recorder(lambda r: httpx.Response(200, json=response_body()))
    await ask_model(
        "q", [], FAQS, settings, client=rec.client(settings), safety_identifier="abc123"
    )
    body = rec.json()
    assert body["reasoning"] == {"effort": "minimal"}
    assert body["text"] == {"verbosity": "low"}
    assert body["prompt_cache_key"] == "released-agent-555"
    assert body["safety_identifier"] == "abc123"

    # Models that do not reason refuse these parameters: they are left out.
    old = settings_for(openai_model="gpt-4.1-mini", openai_reasoning_effort="high")
    await ask_model("q", [], FAQS, old, client=rec.client(old))
    assert "reasoning" not in rec.json() and "text" not in rec.json()
    # Empty settings mean "the model's default".
    unset = Settings(openai_reasoning_effort="", openai_verbosity="")  # type: ignore[arg-type]
    assert unset.openai_reasoning_effort is None and unset.openai_verbosity is None


async def test_incomplete_response_is_never_sent() -> None:
    settings = settings_for()
    body = response_body("The opening hours are Mon")
    body["status"] = "incomplete"
    body["incomplete_details"] = {"reason": "max_output_tokens"}
    rec = Recorder(lambda r: httpx.Response(200, json=body))
    with pytest.raises(ModelError) as info:
        await ask_model("q", [], FAQS, settings, client=rec.client(settings))
    assert not info.value.retryable and "incomplete" in str(info.value)
    got = await answer("opening hours?", [], FAQS, settings, client=rec.client(settings),
                       fallback_on_error=False)
    assert got == Answer("Mon-Fri 9:00-18:00.", "faq")  # the FAQ, not the truncated text


async def test_429_pauses_the_shared_bucket_and_tries_again() -> None:
    settings = settings_for()
    answers = iter([
        httpx.Response(429, headers={"retry-after-ms": "1500"},
                       json={"error": {"message": "slow", "code": "rate_limit_exceeded"}}),
        httpx.Response(200, json=response_body("fine")),
    ])
    rec = Recorder(lambda r: next(answers))
    paused: list[float | None] = []
    tokens: list[int] = []

    async def before() -> None:
        tokens.append(1)

    async def on_limited(seconds: float | None) -> None:
        paused.append(seconds)

    got = await ask_model("q", [], FAQS, settings, client=rec.client(settings),
                          before_request=before, on_rate_limited=on_limited)
    assert got.text == "fine"
    assert paused == [1.5] and len(tokens) == 2  # the retry waited for a token again


async def test_sdk_retries_are_disabled_and_5xx_is_retryable() -> None:
    settings = settings_for()
    rec = Recorder(lambda r: httpx.Response(500, json={"error": {"message": "boom"}}))
    with pytest.raises(ModelError) as info:
        await ask_model("q", [], FAQS, settings, client=rec.client(settings))
    assert info.value.retryable and info.value.status == 500
    assert len(rec.requests) == 1  # max_retries=0


async def test_429_carries_retry_after() -> None:
    settings = settings_for()
    rec = Recorder(
        lambda r: httpx.Response(
            429,
            headers={"retry-after": "7"},
            json={"error": {"message": "slow down", "type": "requests", "code": "rate_limit"}},
        )
    )
    with pytest.raises(ModelError) as info:
        await ask_model("q", [], FAQS, settings, client=rec.client(settings))
    assert info.value.retryable and info.value.retry_after == 7.0


async def test_insufficient_quota_and_4xx_are_not_retryable() -> None:
    settings = settings_for()
    for status, code in ((429, "insufficient_quota"), (401, "invalid_api_key"), (400, None)):
        rec = Recorder(
            lambda r, s=status, c=code: httpx.Response(
                s, json={"error": {"message": "x", "code": c}}
            )
        )
        with pytest.raises(ModelError) as info:
            await ask_model("q", [], FAQS, settings, client=rec.client(settings))
        assert not info.value.retryable, (status, code)
        assert "sk-test-key" not in str(info.value)


async def test_connection_error_is_retried_once_inside_the_call() -> None:
    settings = settings_for()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    rec = Recorder(refuse)
    calls: list[float] = []

    async def before() -> None:
        calls.append(time.monotonic())

    with pytest.raises(ModelError) as info:
        await ask_model("q", [], FAQS, settings, client=rec.client(settings), before_request=before)
    assert info.value.retryable and info.value.status is None
    assert len(rec.requests) == 2 and len(calls) == 2  # each attempt takes a token


async def test_the_text_is_the_output_text_parts_of_the_messages() -> None:
    """What the SDK's ``output_text`` gives: reasoning and tool calls are not the answer."""
    settings = settings_for()
    body = response_body("Part one. ")
    body["output"][0]["content"].append({"type": "refusal", "refusal": "no"})
    body["output"][0]["content"].append({"type": "output_text", "text": "Part two.",
                                         "annotations": []})
    body["output"].insert(0, {"type": "reasoning", "id": "rs_1", "summary": []})
    body["output"].append({"type": "file_search_call", "id": "fs_1", "status": "completed",
                           "queries": ["q"]})
    rec = Recorder(lambda r: httpx.Response(200, json=body))
    got = await ask_model("q", [], FAQS, settings, client=rec.client(settings))
    assert got.text == "Part one. Part two."
    # The headers a client of the API sends, and nothing that names the SDK.
    headers = rec.requests[0].headers
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"


async def test_an_answer_that_is_not_a_json_object_falls_back() -> None:
    settings = settings_for()
    for response in (httpx.Response(200, text="<html>proxy</html>"), httpx.Response(200, json=[])):
        rec = Recorder(lambda r, resp=response: resp)
        with pytest.raises(ModelError) as info:
            await ask_model("q", [], FAQS, settings, client=rec.client(settings))
        assert not info.value.retryable and info.value.status == 200
        got = await answer("opening hours?", [], FAQS, settings, client=rec.client(settings),
                           fallback_on_error=False)
        assert got.source == "faq"


async def test_a_timeout_is_retryable_and_not_retried_inside_the_call() -> None:
    settings = settings_for()

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    rec = Recorder(slow)
    with pytest.raises(ModelError) as info:
        await ask_model("q", [], FAQS, settings, client=rec.client(settings))
    assert info.value.retryable and info.value.status is None
    assert str(info.value) == "OpenAI request timed out"
    assert len(rec.requests) == 1  # only a refused connection is tried again at once


async def test_answer_falls_back_to_faq_then_message() -> None:
    settings = settings_for(fallback_message="We'll get back to you.")
    rec = Recorder(lambda r: httpx.Response(503, json={"error": {"message": "down"}}))
    client = rec.client(settings)
    got = await answer("opening hours?", [], FAQS, settings, client=client)
    assert got == Answer("Mon-Fri 9:00-18:00.", "faq")
    got = await answer("do you sell shoes?", [], FAQS, settings, client=client)
    assert got == Answer("We'll get back to you.", "fallback")
    with pytest.raises(ModelError):
        await answer("opening hours?", [], FAQS, settings, client=client, fallback_on_error=False)


async def test_answer_falls_back_on_permanent_error_even_when_retrying() -> None:
    settings = settings_for()
    rec = Recorder(lambda r: httpx.Response(404, json={"error": {"message": "no such model"}}))
    got = await answer(
        "opening hours?", [], FAQS, settings, client=rec.client(settings), fallback_on_error=False
    )
    assert got.source == "faq"


async def test_empty_model_output_falls_back() -> None:
    settings = settings_for()
    rec = Recorder(lambda r: httpx.Response(200, json=response_body("   ")))
    got = await answer("nothing matches this", [], FAQS, settings, client=rec.client(settings))
    assert got.source == "fallback" and got.text == fallback_text(settings)


async def test_answer_creates_and_closes_its_own_client() -> None:
    settings = Settings(openai_base_url="http://127.0.0.1:9/v1", openai_timeout_seconds=2,
                        openai_api_key=SecretStr("sk-test-key"))
    got = await answer("opening hours", [], FAQS, settings)
    assert got.source == "faq"


def test_fallback_answer_with_no_faqs() -> None:
    settings = Settings()
    assert fallback_answer("anything", [], settings) == Answer(
        fallback_text(settings), "fallback"
    )


def test_the_default_fallback_promises_a_person_only_with_handover() -> None:
    # Nobody is told without handover: the default says so little.
    plain = fallback_answer("anything", [], Settings()).text
    assert "person" not in plain and "team" not in plain
    spanish = fallback_answer("lo que sea", [], Settings(language="es")).text
    assert "persona" not in spanish and spanish.startswith("¡Gracias")
    # With handover the user learns how to reach a person, with a phrase that hands over.
    handing = Settings(handover_enabled=True)
    text = fallback_answer("anything", [], handing).text
    assert "person" in text and '"talk to a person"' in text
    assert asks_for_person(text, handing)
    own = Settings(handover_enabled=True, language="es",
                   handover_phrases={"es": ["quiero un agente"]})
    assert '"quiero un agente"' in fallback_answer("x", [], own).text
    # An explicit FALLBACK_MESSAGE is sent as written either way.
    assert fallback_answer("x", [], Settings(fallback_message="Hi.")).text == "Hi."


def test_instructions_promise_a_person_only_with_handover() -> None:
    plain = build_instructions(Settings(), FAQS)
    assert "person" not in plain.replace("do not say that a person will follow up", "")
    assert "nobody is notified" in plain
    handing = build_instructions(Settings(handover_enabled=True), FAQS)
    assert "hand_over_to_person" in handing and "a person from the team" in handing


# -- the token bucket (real Redis) ----------------------------------------------------------


@pytest.fixture
async def redis_client(redis_url: str) -> Any:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.integration
async def test_token_bucket_limits_rate_across_clients(redis_client: Any, redis_url: str) -> None:
    import redis.asyncio as aioredis

    key = bucket_key(f"rl-{time.monotonic_ns()}")
    other = aioredis.from_url(redis_url)
    try:
        a = TokenBucket(redis_client, key, rate=10, capacity=2)
        b = TokenBucket(other, key, rate=10, capacity=2)  # another worker process, same agent
        started = time.monotonic()
        waits = await asyncio.gather(*(bucket.acquire() for bucket in [a, b] * 4))
        elapsed = time.monotonic() - started
    finally:
        await other.aclose()
    # 8 tokens, 2 of them from the initial burst, the rest at 10/s: about 0.6 s.
    assert sorted(waits)[:2] == [0.0, 0.0]
    assert 0.5 <= elapsed < 1.5
    assert max(waits) == pytest.approx(0.6, abs=0.1)


@pytest.mark.integration
async def test_token_bucket_gives_up_beyond_max_wait(redis_client: Any) -> None:
    bucket = TokenBucket(redis_client, bucket_key(f"slow-{time.monotonic_ns()}"), rate=0.5)
    assert await bucket.acquire(max_wait=0) == 0
    with pytest.raises(RateLimitTimeout) as info:
        await bucket.acquire(max_wait=0.5)
    assert info.value.retry_after == pytest.approx(2.0, abs=0.1)
    # Nothing was reserved by the refusal: the next caller waits no longer.
    assert await bucket.reserve(max_wait=5) == pytest.approx(2.0, abs=0.1)


@pytest.mark.integration
async def test_penalty_pauses_every_client_of_the_bucket(redis_client: Any) -> None:
    key = bucket_key(f"pen-{time.monotonic_ns()}")
    bucket = TokenBucket(redis_client, key, rate=10, capacity=5)
    assert await bucket.reserve() == 0  # a full bucket
    assert await bucket.penalize(2.0) == pytest.approx(2.1, abs=0.05)
    # Everyone now waits out the pause: the next token is ~2 s away.
    assert await bucket.reserve() == pytest.approx(2.1, abs=0.05)
    with pytest.raises(RateLimitTimeout):
        await bucket.reserve(max_wait=1.0)
    # A shorter penalty never shortens a longer one.
    assert await bucket.penalize(0.5) == pytest.approx(2.2, abs=0.05)


@pytest.mark.integration
async def test_user_bucket_is_per_user(redis_client: Any) -> None:
    settings = Settings(
        phone_number_id=str(time.monotonic_ns()), user_rate_limit_per_minute=6,
        user_rate_limit_burst=2,
    )
    ana, bob = user_bucket(settings, redis_client, 1), user_bucket(settings, redis_client, 2)
    assert (ana.rate, ana.capacity) == (0.1, 2.0)
    assert [await ana.reserve(max_wait=60) for _ in range(2)] == [0, 0]
    assert await ana.reserve(max_wait=60) == pytest.approx(10.0, abs=0.1)  # a slot reserved
    assert await bob.reserve(max_wait=0) == 0  # Bob is not held up by Ana


@pytest.mark.integration
async def test_openai_bucket_uses_settings(redis_client: Any) -> None:
    settings = Settings(phone_number_id="123", openai_rate_limit_per_second=3)
    bucket = openai_bucket(settings, redis_client)
    assert bucket.key == "released:ratelimit:openai:123"
    assert (bucket.rate, bucket.capacity) == (3.0, 3.0)
    with pytest.raises(ValueError):
        TokenBucket(redis_client, "k", rate=0)
