"""Domain errors of the operator's outside-Kubernetes work (OpenAI, Meta, PostgreSQL).

The modules ``knowledge``, ``meta_webhook``, ``database`` and ``rotation`` raise these instead of
kopf's exceptions, so they stay independent of kopf; the handlers translate them:
:class:`TemporaryError` to ``kopf.TemporaryError(delay=...)`` and :class:`PermanentError` to
``kopf.PermanentError`` (and a ``Ready=False`` condition whose reason is :attr:`reason`).

Messages are safe to show in a status condition, an Event or a log line: they never contain an
API key, an access token, a password or a verify token. Code that builds a message from text that
came from outside (an error body from an API) passes it through :func:`redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Things that look like credentials in free text: OpenAI keys (``sk-...``), Meta tokens
#: (``EAA...``), bearer headers and ``user:password@`` in URLs.
_SECRET_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\bsk-[A-Za-z0-9*_\-]{4,}"),
    re.compile(r"\bEAA[A-Za-z0-9]{10,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"),
    re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+(?=@)"),
)

REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with every given secret and anything shaped like a credential replaced."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, REDACTED)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


class ReleasedError(Exception):
    """Base of the operator's domain errors.

    ``reason`` is a CamelCase word for a condition's ``reason`` (``OpenAIUnavailable``);
    ``service`` names the outside system (``openai``, ``meta``, ``postgres``). For an error
    the provider answered, ``kind`` is the provider's verdict (``released.providers``'
    ``ErrorKind`` value: ``token``, ``permission``, ``policy``, ``not_found``, ...) and
    ``code`` / ``subcode`` its error code, so callers decide on them and not on the words.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "Error",
        service: str = "",
        kind: str | None = None,
        code: int | str | None = None,
        subcode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.service = service
        self.kind = kind
        self.code = code
        self.subcode = subcode

    def __str__(self) -> str:
        return self.message


class TemporaryError(ReleasedError):
    """Retry later: rate limits, 5xx answers, timeouts, refused connections.

    ``delay`` is the suggested wait in seconds before the next pass (from ``Retry-After`` when
    the service sent one). ``transient`` says the same request may succeed within seconds
    (no answer, 5xx, a rate limit): :mod:`whatsapp_operator.retrying` then retries it at once,
    waiting at least ``retry_after`` (the server's ``Retry-After``, when it sent one).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "Unavailable",
        service: str = "",
        delay: float = 30.0,
        transient: bool = False,
        retry_after: float | None = None,
        kind: str | None = None,
        code: int | str | None = None,
        subcode: int | None = None,
    ) -> None:
        super().__init__(
            message, reason=reason, service=service, kind=kind, code=code, subcode=subcode
        )
        self.delay = delay
        self.transient = transient
        self.retry_after = retry_after


class PermanentError(ReleasedError):
    """Retrying will not help until a person changes something (a key, a manifest, a grant)."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "Failed",
        service: str = "",
        kind: str | None = None,
        code: int | str | None = None,
        subcode: int | None = None,
    ) -> None:
        super().__init__(
            message, reason=reason, service=service, kind=kind, code=code, subcode=subcode
        )


class NotFoundError(PermanentError):
    """The outside object does not exist (callers that tolerate 404 catch this one)."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "NotFound",
        service: str = "",
        kind: str | None = "not_found",
        code: int | str | None = None,
        subcode: int | None = None,
    ) -> None:
        super().__init__(
            message, reason=reason, service=service, kind=kind, code=code, subcode=subcode
        )
