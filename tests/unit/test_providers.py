"""The providers' contracts shared by the bot and the operator: what Meta's and OpenAI's error
codes mean, ``Retry-After``, recipient addressing and the model calendar."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime

import pytest

from released.providers import meta, openai


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, 130429, meta.ErrorKind.RATE_LIMIT),
        (400, 131056, meta.ErrorKind.RATE_LIMIT),  # Meta answers some rate limits with 400
        (400, 80007, meta.ErrorKind.RATE_LIMIT),
        (500, 1, meta.ErrorKind.TEMPORARY),
        (503, 2, meta.ErrorKind.TEMPORARY),
        (502, None, meta.ErrorKind.TEMPORARY),
        (None, None, meta.ErrorKind.TEMPORARY),  # no answer at all
        (429, None, meta.ErrorKind.RATE_LIMIT),
        (401, 190, meta.ErrorKind.TOKEN),
        (401, None, meta.ErrorKind.TOKEN),
        (403, 10, meta.ErrorKind.PERMISSION),
        (400, 200, meta.ErrorKind.PERMISSION),
        (400, 294, meta.ErrorKind.PERMISSION),
        (403, None, meta.ErrorKind.PERMISSION),
        (400, 368, meta.ErrorKind.POLICY),
        (400, 131031, meta.ErrorKind.ACCOUNT),
        (400, 131047, meta.ErrorKind.REENGAGEMENT),
        (500, 131047, meta.ErrorKind.REENGAGEMENT),  # the code wins over the status
        (400, 131026, meta.ErrorKind.RECIPIENT),
        (400, 132001, meta.ErrorKind.TEMPLATE),
        (400, 100, meta.ErrorKind.INVALID),
        (404, None, meta.ErrorKind.INVALID),
        (400, 2200, meta.ErrorKind.WEBHOOK_VERIFICATION),
        (400, 999999, meta.ErrorKind.INVALID),  # unknown code: the status decides
    ],
)
def test_meta_classify(status: int | None, code: int | None, kind: meta.ErrorKind) -> None:
    assert meta.classify(status, code) is kind


def test_meta_verdicts() -> None:
    token = meta.parse_error(401, {"error": {"code": 190, "message": "expired"}})
    assert token.account_problem and not token.retryable
    for code in (10, 200, 368):
        assert meta.parse_error(400, {"error": {"code": code}}).account_problem
    window = meta.parse_error(400, {"error": {"code": 131047}})
    assert not window.account_problem and not window.retryable
    assert meta.parse_error(429, {"error": {"code": 130429}}).retryable


def test_meta_parse_error_reads_every_field_and_keeps_text_whole() -> None:
    long_title = "t" * 1000
    body = {
        "error": {
            "message": "ignored when error_user_title is there",
            "error_user_title": long_title,
            "code": "131047",
            "error_subcode": 2494078,
            "error_data": {"messaging_product": "whatsapp", "details": "24 hours passed"},
            "fbtrace_id": "AbC",
        }
    }
    info = meta.parse_error(400, body, {"Retry-After": "30"})
    assert (info.code, info.subcode, info.fbtrace_id) == (131047, 2494078, "AbC")
    assert info.title == long_title  # the caller redacts first, then clips
    assert info.details == "24 hours passed"
    assert info.retry_after == 30.0
    assert info.summary("send").startswith("Graph API send: HTTP 400, code 131047: ttt")
    for junk in (None, "oops", [1], {"error": "x"}, {"error": {"code": True}}):
        parsed = meta.parse_error(500, junk)
        assert parsed.code is None and parsed.kind is meta.ErrorKind.TEMPORARY


def test_retry_after_seconds_dates_and_nonsense() -> None:
    assert meta.retry_after({"retry-after": "12"}) == 12.0
    assert meta.retry_after({"retry-after": "99999999"}, cap=60) == 60
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    got = meta.retry_after({"retry-after": soon})
    assert got is not None and 85 <= got <= 91
    assert meta.retry_after({"retry-after": "soon"}) is None
    assert meta.retry_after({"retry-after": "nan"}) is None
    assert meta.retry_after({}) is None and meta.retry_after(None) is None
    assert openai.retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert openai.retry_after({"retry-after": "9"}) == 9.0


def test_recipient_addressing() -> None:
    assert meta.address_fields("34600000001") == {"to": "34600000001"}
    assert meta.address_fields("+34600000001") == {"to": "+34600000001"}
    assert meta.address_fields("US.13491208655302741918") == {
        "recipient": "US.13491208655302741918"
    }
    assert meta.address_fields("US.ENT.abc") == {"recipient": "US.ENT.abc"}
    with pytest.raises(ValueError):
        meta.address_fields("")
    assert meta.DEFAULT_GRAPH_URL.endswith("/v25.0")


@pytest.mark.parametrize(
    ("status", "code", "kind", "retryable"),
    [
        (429, "rate_limit_exceeded", openai.ErrorKind.RATE_LIMIT, True),
        (429, "insufficient_quota", openai.ErrorKind.QUOTA, False),
        (401, "invalid_api_key", openai.ErrorKind.AUTH, False),
        (403, None, openai.ErrorKind.PERMISSION, False),
        (404, "model_not_found", openai.ErrorKind.NOT_FOUND, False),
        (400, None, openai.ErrorKind.INVALID, False),
        (408, None, openai.ErrorKind.TEMPORARY, True),
        (409, None, openai.ErrorKind.TEMPORARY, True),
        (500, None, openai.ErrorKind.TEMPORARY, True),
        (None, None, openai.ErrorKind.TEMPORARY, True),
    ],
)
def test_openai_classify(
    status: int | None, code: str | None, kind: openai.ErrorKind, retryable: bool
) -> None:
    info = openai.parse_error(status, {"error": {"code": code, "message": "m"}})
    assert info.kind is kind and info.retryable is retryable


def test_openai_from_exception() -> None:
    import httpx
    import openai as sdk

    request = httpx.Request("POST", "http://x/v1/responses")
    response = httpx.Response(429, headers={"retry-after": "3"}, request=request)
    exc = sdk.RateLimitError(
        "slow", response=response, body={"message": "slow", "code": "insufficient_quota"}
    )
    info = openai.from_exception(exc)
    assert (info.status, info.kind, info.retry_after) == (429, openai.ErrorKind.QUOTA, 3.0)
    assert openai.from_exception(sdk.APITimeoutError(request=request)).retryable
    assert openai.from_exception(sdk.APIConnectionError(request=request)).retryable
    assert openai.from_exception(ValueError("x")).kind is openai.ErrorKind.UNKNOWN
    assert "HTTP 429 (insufficient_quota)" in info.summary()


def test_model_calendar() -> None:
    assert openai.DEFAULT_MODEL == "gpt-6-luna"
    assert openai.shutdown_date(openai.DEFAULT_MODEL) is None
    assert openai.shutdown_date("gpt-4.1-mini") == date(2027, 1, 14)
    assert openai.shutdown_date("gpt-4.1-mini-2025-04-14") == date(2027, 1, 14)
    assert openai.shutdown_date("gpt-4.1") == date(2027, 1, 14)
    assert openai.shutdown_date("gpt-5-nano") == date(2026, 12, 11)
    assert openai.shutdown_date("gpt-5.4-nano") == date(2027, 4, 1)
    assert openai.shutdown_date("gpt-5.4-mini") is None
    assert openai.supports_reasoning("gpt-6-luna") and openai.supports_reasoning("o4-mini")
    assert not openai.supports_reasoning("gpt-4.1-mini")
    assert not openai.supports_reasoning("gpt-4o")
    assert openai.REASONING_EFFORTS[0] == "none" and openai.REASONING_EFFORTS[-1] == "max"
