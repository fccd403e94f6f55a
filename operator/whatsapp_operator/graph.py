"""The operator's calls to Meta's Graph API: one request function, Meta's error policy applied.

:func:`request` sends one Graph API call with the access token in the ``Authorization`` header
only, an explicit timeout (:data:`DEFAULT_TIMEOUT`) and explicit retries
(:mod:`whatsapp_operator.retrying`). What an error means is decided by
:mod:`released.providers.meta` (the bot decides with the same module), and :func:`domain_error`
turns that verdict into the operator's :class:`~whatsapp_operator.errors.TemporaryError` or
:class:`~whatsapp_operator.errors.PermanentError`, with a condition reason:

============================ =============================== ==================================
Meta's verdict (codes)       error                           reason
============================ =============================== ==================================
rate limit (4, 80007, 130429 temporary, retried at once      ``MetaRateLimited``
...; HTTP 429)
Meta failed (1, 2, 5xx,      temporary, retried at once      ``MetaUnavailable``
no answer)
token (190, 102; HTTP 401)   permanent                       ``MetaTokenRejected``
permission (10, 200-299;     permanent                       ``MetaPermissionDenied``
HTTP 403)
policy block (368)           temporary (lasts hours)         ``MetaPolicyBlocked``
account (131031, 131042...)  permanent                       ``MetaAccountRestricted``
webhook verification (2200)  temporary (web tier not ready?) ``WebhookVerificationFailed``
anything else (100, ...)     permanent                       ``MetaRequestInvalid``
============================ =============================== ==================================

Each error carries Meta's ``code``, ``subcode`` and verdict (``kind``). Its message names the
action, the HTTP status and the codes, and Meta's own title and details with every secret of
the call redacted; never the access token or a verify token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx2 as httpx

from released.providers import meta as policy

from . import http_clients
from .errors import PermanentError, ReleasedError, TemporaryError, redact
from .retrying import DEFAULT_POLICY, RetryPolicy, call_with_retries

SERVICE = "meta"
#: Connect within 5 s, and every other phase within 15 s.
DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
#: How long a policy block is waited out before the next try (Meta: "lasts hours").
POLICY_BLOCK_DELAY = 900.0

#: What a person does about a refused token (words, not a token).
TOKEN_ACTION = (
    "create a new access token (a system user's, with whatsapp_business_messaging and "  # noqa: S105
    "whatsapp_business_management) and put it in accessToken of the Secret named by "
    "spec.secrets.meta"
)
PERMISSION_ACTION = (
    "give the token's system user whatsapp_business_messaging and "
    "whatsapp_business_management on this WhatsApp Business Account, and check that the phone "
    "number and the account are shared with the app"
)

_REASONS: dict[policy.ErrorKind, str] = {
    policy.ErrorKind.RATE_LIMIT: "MetaRateLimited",
    policy.ErrorKind.TEMPORARY: "MetaUnavailable",
    policy.ErrorKind.TOKEN: "MetaTokenRejected",
    policy.ErrorKind.PERMISSION: "MetaPermissionDenied",
    policy.ErrorKind.POLICY: "MetaPolicyBlocked",
    policy.ErrorKind.ACCOUNT: "MetaAccountRestricted",
    policy.ErrorKind.WEBHOOK_VERIFICATION: "WebhookVerificationFailed",
}


def reason_of(kind: policy.ErrorKind) -> str:
    """The condition reason of a Graph API error of ``kind``."""
    return _REASONS.get(kind, "MetaRequestInvalid")


def domain_error(
    info: policy.GraphErrorInfo, action: str, secrets: Iterable[str | None] = ()
) -> ReleasedError:
    """The operator's error for a Graph API error (``info`` from ``released.providers.meta``)."""
    where = "no answer" if info.status is None else f"HTTP {info.status}"
    if info.code is not None:
        where += f", code {info.code}"
    if info.subcode is not None:
        where += f", subcode {info.subcode}"
    text = ": ".join(t for t in (info.title, info.details) if t)
    text = redact(text, secrets)[:300]
    message = f"Meta refused to {action} ({where})" + (f": {text}" if text else "")
    common: dict[str, Any] = {
        "reason": reason_of(info.kind),
        "service": SERVICE,
        "kind": info.kind.value,
        "code": info.code,
        "subcode": info.subcode,
    }
    kind = info.kind
    if kind in (policy.ErrorKind.RATE_LIMIT, policy.ErrorKind.TEMPORARY):
        if info.status is None:
            message = f"no answer from Meta's Graph API while trying to {action}"
        default = 60.0 if kind is policy.ErrorKind.RATE_LIMIT else 30.0
        delay = max(1.0, min(info.retry_after, 3600.0)) if info.retry_after else default
        return TemporaryError(
            message, delay=delay, transient=True, retry_after=info.retry_after, **common
        )
    if kind is policy.ErrorKind.WEBHOOK_VERIFICATION:
        return TemporaryError(
            message + " — Meta could not verify the callback URL; is the web tier reachable "
            "at it and serving the current verify token?",
            delay=60.0,
            **common,
        )
    if kind is policy.ErrorKind.POLICY:
        return TemporaryError(
            message + " — Meta blocked the account for a policy violation (usually for hours); "
            "see Account quality in WhatsApp Manager",
            delay=POLICY_BLOCK_DELAY,
            **common,
        )
    if kind is policy.ErrorKind.TOKEN:
        return PermanentError(
            f"Meta rejected the access token while trying to {action} ({where}); "
            + TOKEN_ACTION,
            **common,
        )
    if kind is policy.ErrorKind.PERMISSION:
        return PermanentError(f"{message} — {PERMISSION_ACTION}", **common)
    return PermanentError(message, **common)


def _no_answer(action: str, exc: httpx.HTTPError) -> TemporaryError:
    if isinstance(exc, httpx.TimeoutException):
        message = f"Meta did not answer in time while trying to {action}"
    else:
        message = f"cannot reach Meta's Graph API to {action} ({type(exc).__name__})"
    return TemporaryError(
        message,
        reason="MetaUnavailable",
        service=SERVICE,
        delay=30.0,
        transient=True,
        kind=policy.ErrorKind.TEMPORARY.value,
    )


async def _once(
    method: str,
    url: str,
    headers: Mapping[str, str],
    action: str,
    secrets: list[str],
    client: httpx.AsyncClient | None,
    limits: httpx.Timeout,
    json: Mapping[str, Any] | None,
    params: Mapping[str, str] | None,
) -> dict[str, Any]:
    try:
        response = await (client or http_clients.graph()).request(
            method, url, headers=dict(headers), json=json, params=params, timeout=limits
        )
    except httpx.HTTPError as exc:
        raise _no_answer(action, exc) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400 or (
        isinstance(body, dict) and isinstance(body.get("error"), dict)
    ):
        info = policy.parse_error(response.status_code, body, response.headers)
        raise domain_error(info, action, secrets) from None
    if not isinstance(body, dict):
        raise TemporaryError(
            f"Meta answered {action} with a body that is not a JSON object",
            reason="MetaUnavailable",
            service=SERVICE,
        )
    return body


async def request(
    method: str,
    url: str,
    access_token: str,
    action: str,
    *,
    secrets: Iterable[str] = (),
    client: httpx.AsyncClient | None = None,
    request_timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = DEFAULT_POLICY,
    json: Mapping[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One Graph API call (retried under ``retry``); its JSON object, or a domain error.

    ``action`` completes "Meta refused to ..." in messages; ``secrets`` (besides the token)
    are redacted from any text Meta sends back.
    """
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    hidden = [access_token, *secrets]
    limits = (
        request_timeout
        if isinstance(request_timeout, httpx.Timeout)
        else httpx.Timeout(request_timeout)
    )
    return await call_with_retries(
        lambda: _once(method, url, headers, action, hidden, client, limits, json, params),
        retry,
    )
