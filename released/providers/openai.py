"""The OpenAI API: the default model, model shutdowns, and what each error means.

One policy for the bot and the operator. OpenAI answers errors as ``{"error": {"message",
"type", "param", "code"}}`` with an HTTP status; the status decides, refined by ``code``
(``insufficient_quota`` is a 429 that no backoff fixes). The SDK raises
``openai.APIStatusError`` (with ``status_code``, ``code``, ``response``),
``openai.APITimeoutError`` and ``openai.APIConnectionError``; :func:`from_exception` turns any
of them into an :class:`OpenAIErrorInfo` (the operator's calls). The bot sends its one request
without the SDK (``bot.llm.responses``) and parses the answer with :func:`parse_error`.

Typical use::

    try:
        await client.responses.create(...)
    except openai.OpenAIError as exc:
        info = from_exception(exc)
        if info.retryable: ...   # back off, honouring info.retry_after

Messages taken from OpenAI's answers are kept whole: the caller redacts its secrets first and
clips afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any, Literal

from released.providers.meta import retry_after as _retry_after_header

#: The default model: low cost ($0.10 / $0.50 per 1M input / output tokens) and no announced
#: shutdown; OpenAI names it as the replacement of the gpt-4.1 and gpt-4o families.
DEFAULT_MODEL = "gpt-6-luna"

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
#: ``reasoning.effort`` values, cheapest first (``medium`` is the API's default).
REASONING_EFFORTS: tuple[ReasoningEffort, ...] = (
    "none", "minimal", "low", "medium", "high", "xhigh", "max",
)
Verbosity = Literal["low", "medium", "high"]
#: ``text.verbosity`` values.
VERBOSITIES: tuple[Verbosity, ...] = ("low", "medium", "high")

#: ``max_output_tokens`` below this is refused; reasoning tokens count against it.
MIN_MAX_OUTPUT_TOKENS = 16

#: Announced shutdowns (the model and its dated snapshots stop answering on that day).
MODEL_SHUTDOWNS: dict[str, date] = {
    "gpt-5": date(2026, 12, 11),
    "gpt-5-mini": date(2026, 12, 11),
    "gpt-5-nano": date(2026, 12, 11),
    "gpt-4o": date(2027, 1, 14),
    "gpt-4o-mini": date(2027, 1, 14),
    "gpt-4.1": date(2027, 1, 14),
    "gpt-4.1-mini": date(2027, 1, 14),
    "gpt-5.4-nano": date(2027, 4, 1),
}


def shutdown_date(model: str) -> date | None:
    """The announced shutdown of ``model`` (or of the family of a dated snapshot such as
    ``gpt-4.1-mini-2025-04-14``); ``None`` when none is announced."""
    if model in MODEL_SHUTDOWNS:
        return MODEL_SHUTDOWNS[model]
    # A snapshot is the family name followed by a date: the longest family prefix wins.
    for family in sorted(MODEL_SHUTDOWNS, key=len, reverse=True):
        rest = model[len(family):]
        if model.startswith(family) and rest[:1] == "-" and rest[1:5].isdigit():
            return MODEL_SHUTDOWNS[family]
    return None


#: Model families that do not reason and accept neither ``reasoning`` nor ``text.verbosity``
#: other than the default (the API refuses the request with 400).
_NON_REASONING_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4-", "gpt-3.5", "chatgpt-4o")


def supports_reasoning(model: str) -> bool:
    """Whether ``model`` takes ``reasoning.effort`` and ``text.verbosity`` (gpt-5 and later,
    the o-series; not gpt-4o or gpt-4.1)."""
    name = model.lower().rsplit("/", 1)[-1]
    return not name.startswith(_NON_REASONING_PREFIXES) and name != "gpt-4"


class ErrorKind(StrEnum):
    """What an OpenAI API error means for the caller."""

    RATE_LIMIT = "rate_limit"  # 429: slow down and retry
    QUOTA = "quota"  # 429 insufficient_quota: out of credit, no backoff helps
    AUTH = "auth"  # 401: the API key is wrong or revoked
    PERMISSION = "permission"  # 403: the key may not use this model or resource
    NOT_FOUND = "not_found"  # 404: no such model, store or file
    INVALID = "invalid"  # 400/422: the request is wrong (a bug, or a bad setting)
    TEMPORARY = "temporary"  # timeouts, refused connections, 408/409/5xx
    UNKNOWN = "unknown"


RETRYABLE_KINDS = frozenset({ErrorKind.RATE_LIMIT, ErrorKind.TEMPORARY})
#: ``error.code`` of a 429 that means the account is out of credit.
INSUFFICIENT_QUOTA = "insufficient_quota"


def classify(status: int | None, code: str | None = None) -> ErrorKind:
    """The meaning of an OpenAI error from its HTTP ``status`` (``None``: no answer came) and
    its ``error.code``."""
    if status is None or status >= 500 or status in (408, 409):
        return ErrorKind.TEMPORARY
    if status == 429:
        return ErrorKind.QUOTA if code == INSUFFICIENT_QUOTA else ErrorKind.RATE_LIMIT
    if status == 401:
        return ErrorKind.AUTH
    if status == 403:
        return ErrorKind.PERMISSION
    if status == 404:
        return ErrorKind.NOT_FOUND
    if 400 <= status < 500:
        return ErrorKind.INVALID
    return ErrorKind.UNKNOWN


def retry_after(headers: Mapping[str, str] | None, *, cap: float = 3600.0) -> float | None:
    """Seconds the server asked to wait: ``retry-after-ms`` (OpenAI's, more precise) or
    ``retry-after`` (seconds or an HTTP date), at most ``cap``; ``None`` when absent."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            seconds = float(value) / 1000.0
        except ValueError:
            seconds = -1.0
        if seconds == seconds and seconds >= 0:  # not NaN, not negative
            return min(seconds, cap)
    return _retry_after_header(headers, cap=cap)


@dataclass(frozen=True, slots=True)
class OpenAIErrorInfo:
    """An OpenAI error, parsed: HTTP ``status`` (``None``: no answer), ``code`` and ``type``
    from the body, OpenAI's ``message``, the :class:`ErrorKind` and ``retry_after`` seconds."""

    status: int | None
    kind: ErrorKind
    code: str | None = None
    type: str | None = None
    message: str | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later (429 other than quota, 5xx, timeouts)."""
        return self.kind in RETRYABLE_KINDS

    def summary(self) -> str:
        """``OpenAI API returned HTTP 429 (rate_limit_exceeded)``: status and code, no text."""
        if self.status is None:
            return "OpenAI API did not answer" + (f" ({self.code})" if self.code else "")
        return f"OpenAI API returned HTTP {self.status}" + (f" ({self.code})" if self.code else "")


def parse_error(
    status: int | None, body: Any = None, headers: Mapping[str, str] | None = None
) -> OpenAIErrorInfo:
    """Parse an OpenAI error answer (``body`` is the decoded JSON, if any)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    code = error.get("code")
    etype = error.get("type")
    message = error.get("message")
    code_s = str(code) if code not in (None, "") else None
    return OpenAIErrorInfo(
        status=status,
        kind=classify(status, code_s),
        code=code_s,
        type=str(etype) if etype else None,
        message=str(message) if message else None,
        retry_after=retry_after(headers),
    )


def from_exception(exc: BaseException) -> OpenAIErrorInfo:
    """The :class:`OpenAIErrorInfo` of an exception raised by the ``openai`` SDK (or by
    ``httpx`` underneath it). Anything else is :attr:`ErrorKind.UNKNOWN`."""
    import openai  # the SDK is a dependency of every user of this module; imported on use

    if isinstance(exc, openai.APITimeoutError):
        return OpenAIErrorInfo(status=None, kind=ErrorKind.TEMPORARY, code="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return OpenAIErrorInfo(status=None, kind=ErrorKind.TEMPORARY, code="connection_error")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = getattr(exc, "body", None)
        code = getattr(exc, "code", None)
        info = parse_error(status, {"error": body} if isinstance(body, Mapping) else None,
                           exc.response.headers if exc.response is not None else None)
        if info.code is None and code:
            info = OpenAIErrorInfo(
                status=status, kind=classify(status, str(code)), code=str(code),
                type=info.type, message=info.message, retry_after=info.retry_after,
            )
        return info
    return OpenAIErrorInfo(status=None, kind=ErrorKind.UNKNOWN, code=type(exc).__name__)

