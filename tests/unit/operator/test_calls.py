"""The operator's calls to Meta and OpenAI, without a network: the retry policy
(``whatsapp_operator.retrying``) and how each provider's verdict becomes an operator error
(``graph.domain_error``, ``openai_api.domain_error``, both deciding with ``released.providers``).
"""

from __future__ import annotations

import httpx2
import openai
import pytest
from whatsapp_operator import graph
from whatsapp_operator.errors import NotFoundError, PermanentError, TemporaryError
from whatsapp_operator.openai_api import domain_error as openai_error
from whatsapp_operator.retrying import RetryPolicy, call_with_retries

from released.providers import meta

FAST = RetryPolicy(attempts=3, initial=0.001, max_backoff=0.002, max_inline_wait=0.05)


class Flaky:
    """Fails with ``errors`` in turn, then answers ``"ok"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def transient(retry_after: float | None = None) -> TemporaryError:
    return TemporaryError("503", transient=True, retry_after=retry_after)


async def test_a_transient_failure_is_retried_until_it_passes() -> None:
    call = Flaky(transient(), transient())
    assert await call_with_retries(call, FAST) == "ok"
    assert call.calls == 3


async def test_the_last_error_goes_up_after_the_attempts() -> None:
    call = Flaky(transient(), transient(), transient(), transient())
    with pytest.raises(TemporaryError):
        await call_with_retries(call, FAST)
    assert call.calls == 3


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("bad token"),
        TemporaryError("verification failed"),  # not transient: the web tier is not ready
        transient(retry_after=120),  # the server asks for minutes: the next pass waits
    ],
)
async def test_what_a_retry_cannot_fix_now_is_raised_at_once(error: Exception) -> None:
    call = Flaky(error)
    with pytest.raises(type(error)):
        await call_with_retries(call, FAST)
    assert call.calls == 1


async def test_a_short_retry_after_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("asyncio.sleep", sleep)
    call = Flaky(transient(retry_after=0.04))
    assert await call_with_retries(call, FAST) == "ok"
    assert slept and slept[0] >= 0.04


@pytest.mark.parametrize(
    ("status", "code", "subcode", "error", "reason", "transient"),
    [
        (429, 130429, None, TemporaryError, "MetaRateLimited", True),
        (400, 4, None, TemporaryError, "MetaRateLimited", True),
        (500, 1, None, TemporaryError, "MetaUnavailable", True),
        (401, 190, 463, PermanentError, "MetaTokenRejected", None),
        (403, 10, None, PermanentError, "MetaPermissionDenied", None),
        (403, 200, None, PermanentError, "MetaPermissionDenied", None),
        (400, 368, None, TemporaryError, "MetaPolicyBlocked", False),
        (400, 131031, None, PermanentError, "MetaAccountRestricted", None),
        (400, 2200, None, TemporaryError, "WebhookVerificationFailed", False),
        (400, 100, 33, PermanentError, "MetaRequestInvalid", None),
    ],
)
def test_graph_errors_follow_metas_policy(
    status: int,
    code: int,
    subcode: int | None,
    error: type[Exception],
    reason: str,
    transient: bool | None,
) -> None:
    body = {"error": {"message": "Oops EAAsecrettoken1234567", "code": code}}
    if subcode is not None:
        body["error"]["error_subcode"] = subcode
    info = meta.parse_error(status, body, {})
    mapped = graph.domain_error(info, "read the phone number", ["EAAsecrettoken1234567"])
    assert type(mapped) is error
    assert mapped.reason == reason and mapped.code == code and mapped.subcode == subcode
    assert mapped.kind == info.kind.value
    assert "EAAsecrettoken1234567" not in mapped.message
    assert f"code {code}" in mapped.message
    if transient is not None:
        assert isinstance(mapped, TemporaryError) and mapped.transient is transient


def test_a_graph_retry_after_sets_the_delay() -> None:
    info = meta.parse_error(429, {"error": {"code": 130429}}, {"Retry-After": "42"})
    mapped = graph.domain_error(info, "send")
    assert isinstance(mapped, TemporaryError)
    assert (mapped.delay, mapped.retry_after) == (42.0, 42.0)


def _status_error(
    status: int, code: str | None, headers: dict[str, str] | None = None
) -> Exception:
    request = httpx2.Request("GET", "https://api.openai.com/v1/models/x")
    response = httpx2.Response(
        status, request=request, headers=headers, json={"error": {"message": "m", "code": code}}
    )
    return openai.APIStatusError("m", response=response, body={"message": "m", "code": code})


@pytest.mark.parametrize(
    ("exc", "error", "reason", "transient"),
    [
        (_status_error(500, None), TemporaryError, "OpenAIUnavailable", True),
        (_status_error(429, "rate_limit_exceeded"), TemporaryError, "OpenAIRateLimited", True),
        (_status_error(429, "insufficient_quota"), TemporaryError, "OpenAIQuotaExceeded", False),
        (_status_error(401, "invalid_api_key"), PermanentError, "OpenAIAuthFailed", None),
        (_status_error(403, None), PermanentError, "OpenAIPermissionDenied", None),
        (_status_error(404, "model_not_found"), NotFoundError, "OpenAINotFound", None),
        (_status_error(400, "invalid_value"), PermanentError, "OpenAIRequestRejected", None),
        (
            openai.APIConnectionError(request=httpx2.Request("GET", "https://x")),
            TemporaryError,
            "OpenAIUnavailable",
            True,
        ),
    ],
)
def test_openai_errors_follow_openais_policy(
    exc: Exception, error: type[Exception], reason: str, transient: bool | None
) -> None:
    mapped = openai_error(exc, "look up the model")
    assert type(mapped) is error and mapped.reason == reason
    if transient is not None:
        assert isinstance(mapped, TemporaryError) and mapped.transient is transient


def test_openais_retry_after_ms_is_honoured() -> None:
    mapped = openai_error(_status_error(429, None, {"retry-after-ms": "1500"}), "x")
    assert isinstance(mapped, TemporaryError) and mapped.retry_after == 1.5
