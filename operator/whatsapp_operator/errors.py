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
    ``service`` names the outside system (``openai``, ``meta``, ``postgres``).
    """

    def __init__(self, message: str, *, reason: str = "Error", service: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.service = service

    def __str__(self) -> str:
        return self.message


class TemporaryError(ReleasedError):
    """Retry later: rate limits, 5xx answers, timeouts, refused connections.

    ``delay`` is the suggested wait in seconds (from ``Retry-After`` when the service sent one).
    """

    def __init__(
        self, message: str, *, reason: str = "Unavailable", service: str = "", delay: float = 30.0
    ) -> None:
        super().__init__(message, reason=reason, service=service)
        self.delay = delay


class PermanentError(ReleasedError):
    """Retrying will not help until a person changes something (a key, a manifest, a grant)."""

    def __init__(self, message: str, *, reason: str = "Failed", service: str = "") -> None:
        super().__init__(message, reason=reason, service=service)


class NotFoundError(PermanentError):
    """The outside object does not exist (callers that tolerate 404 catch this one)."""

    def __init__(self, message: str, *, reason: str = "NotFound", service: str = "") -> None:
        super().__init__(message, reason=reason, service=service)
